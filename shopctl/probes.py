"""Asking services how they are: GET /health and /ready, with short timeouts, in parallel."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from shopctl import processes
from shopctl.processes import ManagedProcess
from shopctl.state import RunningService

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class Answer:
    """One HTTP answer; `status` is None when nothing answered (then `error` says why)."""

    status: int | None
    body: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


def get(url: str, timeout: float = PROBE_TIMEOUT) -> Answer:
    """GET `url` and decode its JSON body; never raises for a network or HTTP failure."""
    # No proxies: the shop runs on this machine, and a proxy from the shell would be wrong.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with opener.open(request, timeout=timeout) as response:
            return Answer(response.status, _json(response.read()))
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, _json(error.read()))
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return Answer(None, error=str(reason))


def backends_not_ready(body: Any) -> list[str]:
    """The backends a gateway's /ready body reports configured but not ready. The gateway
    itself stays ready when a backend is down (it serves what does not need it), so this
    is where the aggregate state is read."""
    data = body.get("data") if isinstance(body, dict) else None
    backends = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(backends, dict):
        return []
    return sorted(
        str(name)
        for name, report in backends.items()
        if not (isinstance(report, dict) and report.get("configured") is False)
        and not (isinstance(report, dict) and report.get("ready") is True)
    )


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    url: str
    pid: int
    alive: bool
    exit_code: int | None
    uptime: float | None
    health: Answer
    ready: Answer
    # Anything the state alone does not say: "restarted outside shopctl", a reload.
    note: str = ""

    @property
    def is_ready(self) -> bool:
        return self.alive and self.ready.ok

    def label(self) -> str:
        """starting / ready / not ready / exited, as the tables show it."""
        if not self.alive:
            return "exited" if self.exit_code is None else f"exited ({self.exit_code})"
        if self.ready.ok:
            return "ready"
        if self.health.status is None:
            return "starting"
        return "not ready"


def check_service(service: RunningService, timeout: float = PROBE_TIMEOUT) -> ServiceHealth:
    """How `service` is doing. When the process shopctl started is gone but a process of
    the same service answers on its port (restarted by hand), that one is shown."""
    recorded = service.process
    process, note = recorded, ""
    if not recorded.alive() and (stand_in := stand_in_for(service, timeout)) is not None:
        process, note = stand_in, f"restarted outside shopctl (it started PID {recorded.pid})"
    alive = process.alive()
    unprobed = Answer(None, error="process not running")
    return ServiceHealth(
        name=service.name,
        url=service.url,
        pid=process.pid,
        alive=alive,
        exit_code=recorded.exit_code() if process is recorded else None,
        uptime=process.uptime(),
        health=get(f"{service.url}/health", timeout) if alive else unprobed,
        ready=get(f"{service.url}/ready", timeout) if alive else unprobed,
        note=note,
    )


def stand_in_for(service: RunningService, timeout: float = PROBE_TIMEOUT) -> ManagedProcess | None:
    """The process that now serves `service`'s port in place of the one shopctl started
    (which is gone), found by the PID its /health names and confirmed by the kernel to run
    the same service module there (processes.service_on_port); None if there is none."""
    module = processes.module_of(service.process.command)
    if module is None:
        return None
    answer = get(f"{service.url}/health", timeout)
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    pid = data.get("pid") if isinstance(data, dict) else None
    if not answer.ok or type(pid) is not int:
        return None
    return processes.service_on_port(
        pid, service.port, module, started_after=service.process.create_time
    )


def check_services(
    services: Iterable[RunningService], timeout: float = PROBE_TIMEOUT
) -> list[ServiceHealth]:
    """Every service's health, probed at once (so one slow service costs one timeout)."""
    services = list(services)
    if not services:
        return []
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        return list(pool.map(lambda service: check_service(service, timeout), services))


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
