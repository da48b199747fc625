"""Which address a request came from when proxies stand in between: the one place that reads
X-Forwarded-For, for the gateway (which sets it) and the user service (which limits logins
by it).

X-Forwarded-For is a list each proxy appends its peer to, so only its right end is worth
anything: a client can write whatever it likes on the left. Each reader therefore trusts the
entries its own, configured proxies appended and no further:

- the gateway counts ``TRUSTED_PROXY_HOPS`` proxies in front of it (0: clients connect to it
  directly, and whatever they send is ignored) and sends the one address it found, in a
  header it sets itself;
- a backend takes the header only from peers inside ``TRUSTED_PROXIES`` (the gateway), and
  otherwise uses the TCP peer.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A peer that is no IP address (a unix socket) still needs a key of its own.
UNKNOWN = "unknown"


# The gateway parses its peer's address on every request, and peers are few (the ingress,
# the load balancer): remembered, since the answer only depends on the text.
@functools.lru_cache(maxsize=4096)
def parse_address(value: str) -> IpAddress | None:
    """An address as proxies write it: bare, or with a port ("1.2.3.4:80", "[::1]:80")."""
    value = value.strip()
    if value.startswith("[") and "]" in value:
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_networks(value: str) -> list[IpNetwork]:
    """A comma-separated list of CIDRs (an address alone is its own /32 or /128); "none" is
    the empty list. Raises ValueError naming the first bad entry."""
    if value.strip().lower() == "none":
        return []
    networks = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR network ({exc})") from None
    return networks


def _forwarded_chain(request: web.Request) -> list[str]:
    # Several X-Forwarded-For lines count as one list, in order (RFC 9110 field combining).
    return [
        entry.strip()
        for line in request.headers.getall("X-Forwarded-For", [])
        for entry in line.split(",")
        if entry.strip()
    ]


def _peer(request: web.Request) -> IpAddress | None:
    return parse_address(request.remote or "")


def client_behind_hops(request: web.Request, hops: int) -> str:
    """The client's address for a server with ``hops`` trusted proxies in front of it: the
    entry the outermost of them appended. With fewer entries than hops the request did not
    come through them all, and the peer is all we know (never a client-written entry)."""
    peer = _peer(request)
    fallback = str(peer) if peer is not None else UNKNOWN
    if hops <= 0:
        return fallback
    chain = _forwarded_chain(request)
    if len(chain) < hops:
        return fallback
    found = parse_address(chain[-hops])
    return str(found) if found is not None else fallback


def client_from_trusted(request: web.Request, trusted: Sequence[IpNetwork]) -> str:
    """The client's address for a server that believes X-Forwarded-For only from ``trusted``
    peers: walk the list from the right while the hop that wrote an entry is trusted."""
    current = _peer(request)
    if current is None:
        return UNKNOWN
    for entry in reversed(_forwarded_chain(request)):
        if not _within(current, trusted):
            break
        earlier = parse_address(entry)
        if earlier is None:
            break
        current = earlier
    return str(current)


def _within(address: IpAddress, networks: Iterable[IpNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in networks)


def limit_key(address: str) -> str:
    """The key a per-client limit counts under: an IPv4 address itself, an IPv6 address its
    /64 (one subscriber usually holds a whole /64, and would otherwise get 2^64 fresh
    addresses to guess from)."""
    parsed = parse_address(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)
