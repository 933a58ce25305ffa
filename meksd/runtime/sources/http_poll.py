"""The ``http-poll`` source: a cursor-based HTTP feed, polled with httpx.

Each poll is ``GET <url>?cursor=<cursor>`` (no ``cursor`` parameter before the feed
has named one). A good answer is ``200`` with a JSON object::

    {"events": [<envelope>, ...], "cursor": "<next cursor>", "poll_ms": 500}

- ``events`` (required, an array): each element becomes one ``RawRecord`` (re-encoded
  with orjson), in order; the normalizer judges them one by one, as it does a
  WebSocket message.
- ``cursor`` (string or integer, optional): sent with the next poll. Absent or
  ``null``: the previous cursor is kept. It is taken only once every event of the
  page has been handed to the room, so a poll cut short (cancelled on failback,
  room shutdown) is fetched again next time; the room's ``msgId`` memory drops what
  it already has.
- ``poll_ms`` (integer >= 0, optional): wait this long before the next poll, kept
  within ``[min_poll_ms, max_poll_ms]``; absent: ``poll_ms`` of the config.

Anything else is a failed poll, with a reason that says what and where
(``bad response: expected array @ $.events, got str``), as are HTTP errors, a
connection that cannot be made or breaks, a body over ``max_response_bytes``, and a
request that does not complete within ``timeout_s`` (connect, send, wait and read
the whole body: one deadline, so a server trickling bytes cannot hold a poll open).
After a failed poll the source waits with exponential backoff and full jitter (as
the websocket source does); a ``Retry-After`` header (seconds or an HTTP date, on
any error status, typically 429 and 503) is honoured as a lower bound, up to
``retry_after_max_s``. A good response resets the backoff.

One ``httpx.AsyncClient`` per run keeps the connection alive between polls (one
connection: polls are sequential). ``https://`` uses the system trust store, like
the websocket source. The cursor survives restarts of ``run`` (failover back and
forth), so a poll source that takes over again resumes where it left off.
"""

from __future__ import annotations

import email.utils
import random
import ssl
import time
from typing import Any

import attrs
import httpx
import orjson
import trio
from loguru import logger

from meksd import __version__
from meksd.config import HttpPollSourceConfig
from meksd.runtime.sources.base import (
    Jitter,
    Pacing,
    RecordSink,
    SourceMeter,
    SourceStatistics,
    full_jitter_delay,
)

__all__ = ["MAX_CURSOR_LENGTH", "HttpPollSource", "Page", "parse_page", "parse_retry_after"]

MAX_CURSOR_LENGTH = 1024
"""A longer cursor is a bad response (it goes into every request's URL)."""


@attrs.frozen
class Page:
    """One good poll response."""

    events: tuple[bytes, ...]
    """Each element of ``events``, re-encoded: one raw record each."""
    cursor: str | None
    """The cursor for the next poll; None: keep the current one."""
    poll_ms: int | None
    """The feed's requested interval before the next poll, if it gave one."""


@attrs.frozen
class _Failed:
    reason: str
    retry_after: float | None = None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "int", float: "float", str: "str", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def parse_page(body: bytes) -> Page | str:
    """A poll response body as a :class:`Page`, or what is wrong with it (a string
    naming the place, e.g. ``expected array @ $.events, got str``). Never raises."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"not JSON ({exc})"
    if not isinstance(doc, dict):
        return f"expected object @ $, got {_json_type(doc)}"
    events = doc.get("events")
    if events is None:
        return "missing events @ $.events"
    if not isinstance(events, list):
        return f"expected array @ $.events, got {_json_type(events)}"
    cursor = doc.get("cursor")
    if cursor is not None:
        if isinstance(cursor, bool) or not isinstance(cursor, str | int):
            return f"expected string or int @ $.cursor, got {_json_type(cursor)}"
        cursor = str(cursor)
        if not cursor or len(cursor) > MAX_CURSOR_LENGTH:
            return f"cursor must be 1..{MAX_CURSOR_LENGTH} characters @ $.cursor"
    poll_ms = doc.get("poll_ms")
    if poll_ms is not None and (
        isinstance(poll_ms, bool) or not isinstance(poll_ms, int) or poll_ms < 0
    ):
        shown = poll_ms if isinstance(poll_ms, int) else _json_type(poll_ms)
        return f"expected int >= 0 @ $.poll_ms, got {shown}"
    return Page(tuple(orjson.dumps(event) for event in events), cursor, poll_ms)


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date,
    ``now_wall`` being unix time); None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_wall)


class _TooLarge(Exception):
    pass


class HttpPollSource:
    """Polls a cursor-based HTTP feed; retries forever with backoff."""

    def __init__(
        self,
        config: HttpPollSourceConfig,
        *,
        name: str = "http-poll",
        room_id: str = "",
        rng: Jitter | None = None,
        pacing: Pacing | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``rng`` draws the backoff jitter (injectable for tests); ``pacing``
        stretches waits once the room's stream ended; ``ssl_context`` is used for
        ``https://`` (default: the system's trust store)."""
        self._config = config
        self._url = httpx.URL(config.url)
        self._meter = SourceMeter(name)
        self._rng: Jitter = rng if rng is not None else random.Random()
        self._pacing = pacing if pacing is not None else Pacing()
        self._ssl_context = ssl_context
        self._log = logger.bind(room=room_id, source=name)
        self.cursor: str | None = None
        """The cursor the next poll sends (None before the feed named one)."""

    @property
    def name(self) -> str:
        return self._meter.name

    def statistics(self) -> SourceStatistics:
        """The source's counters now. Synchronous; never checkpoints."""
        return self._meter.snapshot()

    async def run(
        self,
        send: RecordSink,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll and push every event into ``send`` until cancelled. Only the
        channel's own errors (the room closed it) escape."""
        task_status.started()
        cfg = self._config
        meter = self._meter
        meter.state = "connecting"
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout_s),
            verify=self._ssl_context or ssl.create_default_context(),
            headers={"user-agent": f"meksd/{__version__}", "accept": "application/json"},
            follow_redirects=True,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,
        )
        try:
            attempt = 0
            while True:
                if meter.state != "connected":
                    meter.state = "connecting"
                outcome = await self._poll(client)
                if isinstance(outcome, Page):
                    if meter.state != "connected":
                        meter.connects += 1
                        meter.state = "connected"
                        self._log.bind(event="source_connected").info("polling {url}", url=cfg.url)
                    attempt = 0
                    for payload in outcome.events:
                        await meter.push(send, payload)
                    if outcome.cursor is not None:
                        self.cursor = outcome.cursor
                    wanted = cfg.poll_ms if outcome.poll_ms is None else outcome.poll_ms
                    delay = min(max(wanted, cfg.min_poll_ms), cfg.max_poll_ms) / 1000
                else:
                    meter.fail(outcome.reason)
                    meter.state = "backoff"
                    delay = full_jitter_delay(
                        attempt, cfg.backoff_initial_s, cfg.backoff_max_s, self._rng
                    )
                    attempt += 1
                    if outcome.retry_after is not None:
                        delay = max(delay, min(outcome.retry_after, cfg.retry_after_max_s))
                    self._log.bind(event="source_backoff").warning(
                        "feed {url} unavailable ({reason}); retrying in {delay:.2f}s",
                        url=cfg.url,
                        reason=outcome.reason,
                        delay=delay,
                    )
                await trio.sleep(self._pacing.delay(delay, self._rng))
        finally:
            with trio.move_on_after(1.0) as cleanup:
                cleanup.shield = True
                await client.aclose()

    async def _poll(self, client: httpx.AsyncClient) -> Page | _Failed:
        """One request, bounded by ``timeout_s`` as a whole; never raises for what the
        network or the feed does."""
        cfg = self._config
        url = self._url
        if self.cursor is not None:
            url = url.copy_merge_params({"cursor": self.cursor})
        try:
            with trio.fail_after(cfg.timeout_s):
                async with client.stream("GET", url) as response:
                    status = response.status_code
                    if status != 200:
                        retry_after = parse_retry_after(
                            response.headers.get("retry-after"), time.time()
                        )
                        return _Failed(f"HTTP {status}", retry_after)
                    body = await self._read(response)
        except trio.TooSlowError:
            return _Failed(f"no response within {cfg.timeout_s:g}s")
        except _TooLarge:
            return _Failed(f"response larger than {cfg.max_response_bytes} bytes")
        except httpx.HTTPError as exc:
            return _Failed(_describe(exc))
        page = parse_page(body)
        if isinstance(page, str):
            return _Failed(f"bad response: {page}")
        return page

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self._config.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"cannot connect: {detail}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out: {detail}"
    if isinstance(exc, httpx.TooManyRedirects):
        return f"too many redirects: {detail}"
    return f"connection broken: {detail}"
