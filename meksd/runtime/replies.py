"""A room's reply sender: posts operator replies upstream, one at a time, in order.

::

    actor step ──(Reply, accepted_at)──▶ bounded channel ──▶ ReplySender.run
        ▲                                                       │ POST, retries
        └──────────────── ReplySettled (room inbox) ◀───────────┘

The actor hands each accepted reply over with ``send_nowait`` (never blocks; a full
channel fails the reply as ``queue_full``). The sender is its own task, so a stuck
upstream delays only the room's later replies, never its events or another room.
It decides nothing about the state: its verdict goes back through the room's inbox
and the actor applies it (:func:`meksd.core.replies.settle_reply`).

Each POST carries ``Idempotency-Key: <reply_id>``, so a retry after a lost answer
cannot post twice on an upstream that honours the key. Retried: timeouts,
connection errors, 429 (after ``Retry-After`` when given) and 5xx, with full-jitter
backoff, until ``reply_deadline_s`` after the reply was accepted; any other status
outside 2xx fails at once (``rejected_<status>``).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import httpx
import orjson
import trio
from loguru import logger

from meksd.config import SendConfig
from meksd.core.replies import ReplySettled
from meksd.model.state import Reply

__all__ = ["ReplySender", "retry_after_s"]

Queued = tuple[Reply, float]
"""A reply and when the room accepted it (``trio.current_time()``)."""


class _Body(httpx.AsyncByteStream):
    """A request body that is not an async generator.

    httpx's own (``ByteStream.__aiter__``) is one; an attempt cancelled while the body
    is being written leaves it suspended, and its collection warns (``ResourceWarning``).
    """

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds; fractions accepted)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < 86_400 else None


class ReplySender:
    """Posts the replies of one room to its ``[rooms.send]`` endpoint."""

    def __init__(
        self,
        room_id: str,
        config: SendConfig,
        queue: trio.MemoryReceiveChannel[Queued],
        settle: Callable[[ReplySettled], Awaitable[None]],
        *,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.room_id = room_id
        self.config = config
        self.queue = queue
        self.settle = settle
        """Sends a verdict to the room's inbox."""
        self.rng = rng
        self._log = logger.bind(room=room_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Post queued replies until cancelled (pending ones are then settled by the room)."""
        headers = {"user-agent": "meksd"}
        if self.config.token:
            headers["authorization"] = f"Bearer {self.config.token}"
        timeout = httpx.Timeout(self.config.attempt_timeout_s)
        async with httpx.AsyncClient(headers=headers, timeout=timeout) as client:
            task_status.started()
            async for reply, accepted_at in self.queue:
                try:
                    outcome = await self.post(client, reply, accepted_at)
                except Exception as exc:  # a bug: report the reply failed, keep going
                    self._log.opt(exception=exc).error("reply sender failed", event="reply_error")
                    outcome = ReplySettled(reply.reply_id, False, "internal", 0, accepted_at)
                await self.settle(outcome)

    async def post(
        self, client: httpx.AsyncClient, reply: Reply, accepted_at: float
    ) -> ReplySettled:
        """POST ``reply`` until the upstream takes it, refuses it, or the deadline passes."""
        cfg = self.config
        deadline = accepted_at + cfg.reply_deadline_s
        body = orjson.dumps({"room": self.room_id, "reply_id": reply.reply_id, "text": reply.text})
        headers = {"idempotency-key": reply.reply_id, "content-type": "application/json"}
        bound = cfg.backoff_initial_s
        attempts = 0

        def verdict(ok: bool, error: str | None = None) -> ReplySettled:
            return ReplySettled(reply.reply_id, ok, error, attempts, accepted_at)

        while True:
            now = trio.current_time()
            if now >= deadline:
                return verdict(False, "deadline")
            attempts += 1
            response: httpx.Response | None = None
            with trio.move_on_at(min(now + cfg.attempt_timeout_s, deadline)):
                try:
                    request = client.build_request("POST", cfg.url, content=body, headers=headers)
                    request.stream = _Body(body)  # fresh per attempt
                    response = await client.send(request)
                except httpx.HTTPError:
                    response = None
            wait: float | None = None
            if response is not None:
                status = response.status_code
                if 200 <= status < 300:
                    return verdict(True)
                if status != 429 and status < 500:
                    return verdict(False, f"rejected_{status}")
                wait = retry_after_s(response.headers.get("retry-after"))
            if wait is None:
                wait = self.rng(0.0, bound)
            bound = min(bound * 2, cfg.backoff_max_s)
            if trio.current_time() + wait >= deadline:
                return verdict(False, "deadline")
            await trio.sleep(wait)
