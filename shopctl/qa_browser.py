"""A browser as `shopctl checkout`'s guest-merge shopper needs one: the web shop's pages
through the gateway with cookies kept (the session, the CSRF nonce, the `shop_guest` cart),
forms read from the HTML and sent back with their hidden fields (the CSRF token among them)
as a browser sends them. Guest carts are reachable only this way: the public API has no
route to them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import unescape
from html.parser import HTMLParser
from typing import Any, Self

import aiohttp

GUEST_COOKIE = "shop_guest"


@dataclass
class WebForm:
    action: str
    fields: dict[str, str] = field(default_factory=dict)


class _Forms(HTMLParser):
    """The forms of a page, with the values their inputs start with."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[WebForm] = []
        self._form: WebForm | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self._form = WebForm(values.get("action", ""))
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and values.get("name"):
            if values.get("type") in ("checkbox", "radio") and "checked" not in values:
                return
            self._form.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


@dataclass(frozen=True)
class WebPage:
    """A page as it arrived, after redirects: status, where it ended up, its HTML."""

    status: int | None
    path: str
    html: str
    request_id: str
    error: str = ""

    def form(self, action: str) -> WebForm | None:
        parser = _Forms()
        parser.feed(self.html)
        return next((form for form in parser.forms if form.action == action), None)

    @property
    def text(self) -> str:
        """Its words without tags, spaces squeezed (for looking for a sentence)."""
        parser = _Text()
        parser.feed(self.html)
        return " ".join(unescape(" ".join(parser.words)).split())

    def describe(self, method: str, asked: str) -> str:
        if self.status is None:
            return f"{method} {asked} -> no answer: {self.error}"
        return f"{method} {asked} -> {self.status} at {self.path}"


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.words: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.words.append(data)


class Browser:
    """One browser (its own cookies) at one gateway; `async with Browser(...) as browser`.
    Every request names itself with `request_id()` and reports its time to `timed`."""

    def __init__(
        self,
        base_url: str,
        request_id: Callable[[], str],
        timed: Callable[[str, float], None],
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._request_id = request_id
        self._timed = timed
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        # unsafe=True: keep cookies from an IP address (the local shop is 127.0.0.1).
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    def cookie(self, name: str) -> str | None:
        assert self._session is not None
        return next((c.value for c in self._session.cookie_jar if c.key == name), None)

    async def get(self, step: str, path: str) -> WebPage:
        return await self._request(step, "GET", path)

    async def submit(self, step: str, form: WebForm, **values: Any) -> WebPage:
        """Send ``form`` as a browser would: its fields as the page gave them (the CSRF
        token included), ``values`` typed over them."""
        data = {**form.fields, **{name: str(value) for name, value in values.items()}}
        return await self._request(step, "POST", form.action, data=data)

    async def _request(self, step: str, method: str, path: str, **kwargs: Any) -> WebPage:
        assert self._session is not None, "use Browser in `async with`"
        request_id = self._request_id()
        headers = {"Accept": "text/html", "X-Request-ID": request_id}
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, self.base_url + path, headers=headers, **kwargs
            ) as response:
                html = await response.text()
                page = WebPage(response.status, response.url.path_qs, html, request_id)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            page = WebPage(None, path, "", request_id, str(error) or type(error).__name__)
        self._timed(step, time.perf_counter() - started)
        return page
