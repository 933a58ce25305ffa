"""Talking to systemd: readiness, watchdog and socket activation.

This is the service side of three small systemd protocols, written against the
standard library so that every failure is visible (the third-party ``sd_notify``
wrappers swallow send errors, which is exactly the failure a watchdog exists to
surface):

* **sd_notify** (``$NOTIFY_SOCKET``): `Notifier` sends ``KEY=VALUE`` lines in one
  ``AF_UNIX``/``SOCK_DGRAM`` datagram. A name starting with ``/`` is a path; one
  starting with ``@`` is in the abstract namespace (the ``@`` becomes a NUL byte).
* **watchdog** (``$WATCHDOG_USEC``, ``$WATCHDOG_PID``): `watchdog_interval` reads
  the timeout; `run_watchdog` pings at an interval only while a health check
  passes, so a wedged daemon is killed and restarted by systemd.
* **socket activation** (``$LISTEN_PID``, ``$LISTEN_FDS``, ``$LISTEN_FDNAMES``):
  `listen_fds` and `listen_fds_with_names` adopt the listening sockets systemd
  passed as file descriptors 3, 4, ....

Outside systemd (no ``$NOTIFY_SOCKET``) the `Notifier` is disabled and every send
is a no-op, so the daemon's code calls it unconditionally.

Errors are raised as `NotifyError`, never swallowed; the caller decides whether a
failed notification is worth more than a log line. `run_watchdog` is such a
caller: it logs a failed ping and carries on, because a ping that never arrives
is precisely what systemd's watchdog acts on.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Final

import trio
from loguru import logger

__all__ = [
    "LISTEN_FDS_START",
    "Notifier",
    "NotifyError",
    "listen_fds",
    "listen_fds_with_names",
    "run_watchdog",
    "watchdog_interval",
]

LISTEN_FDS_START: Final = 3
"""The first file descriptor systemd passes on socket activation (``SD_LISTEN_FDS_START``)."""

_FIELD_NAME = re.compile(r"[A-Z0-9_]+")


class NotifyError(Exception):
    """Talking to systemd failed, or systemd's environment for us is malformed.

    Raised by `Notifier` when a notification cannot be sent (the underlying
    `OSError` is the ``__cause__``), by `Notifier.from_env` for a
    ``$NOTIFY_SOCKET`` that is neither a path nor an abstract name, and by
    `watchdog_interval` / `listen_fds` for malformed variables or descriptors.
    """


def _notify_address(value: str) -> bytes:
    """Turn a ``$NOTIFY_SOCKET`` value into an ``AF_UNIX`` address.

    ``/run/systemd/notify`` is a path; ``@name`` is the abstract name
    ``\\0name``. Anything else (a relative path, ``vsock:...`` from systemd >= 254
    for VMs) is not supported here and raises `NotifyError`.
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    raise NotifyError(f"unsupported NOTIFY_SOCKET address {value!r}: expected /path or @abstract")


class Notifier:
    """Sends sd_notify messages to the service manager.

    Build it with `from_env`. When ``$NOTIFY_SOCKET`` is unset (run by hand, in
    tests, in a container without systemd) the notifier is *disabled*: `enabled`
    is False and every send does nothing and returns False.

    Sending is **synchronous and non-blocking**: every method is a plain function
    that never checkpoints. A datagram to a local ``AF_UNIX`` socket is either
    queued by the kernel at once or refused at once (``EAGAIN`` when systemd's
    queue is full), so there is nothing to wait for, and an ``await`` would only
    add a way to lose the message: ``STOPPING=1`` is sent while the app is being
    cancelled, where `trio.socket` would raise `trio.Cancelled` instead of
    sending. Each message goes out on a fresh non-blocking socket that is closed
    straight after, as libsystemd's ``sd_notify`` does, so a `Notifier` holds no
    file descriptor and needs no closing.

    Every send raises `NotifyError` when the message cannot be delivered.
    """

    def __init__(self, address: bytes | None) -> None:
        """Notify the ``AF_UNIX`` datagram socket at *address*; None disables.

        *address* is a filesystem path in bytes or an abstract name starting
        with a NUL byte. Prefer `from_env`.
        """
        self._address = address

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Make the notifier systemd asked for through ``$NOTIFY_SOCKET``.

        An unset or empty ``$NOTIFY_SOCKET`` gives a disabled notifier. The
        variable is left in place: meksd starts no child processes that could
        mistake it for their own.

        Raises:
            NotifyError: ``$NOTIFY_SOCKET`` is set but is neither an absolute
                path nor an ``@abstract`` name.
        """
        value = environ.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        return cls(_notify_address(value))

    @property
    def enabled(self) -> bool:
        """True when messages go to a service manager; False when they are dropped."""
        return self._address is not None

    def __repr__(self) -> str:
        return f"Notifier(address={self._address!r})"

    def send(self, **fields: str | int) -> bool:
        """Send one notification made of ``KEY=VALUE`` lines, in the given order.

        ``notifier.send(STATUS="3 rooms", READY=1)`` sends ``STATUS=3 rooms\\nREADY=1``.
        Keys are upper-case sd_notify variable names; values are one line each.

        Returns:
            True when the datagram was handed to the kernel, False when the
            notifier is disabled.

        Raises:
            ValueError: no fields, a key that is not ``[A-Z0-9_]+``, or a value
                containing a newline (it would smuggle in another field).
            NotifyError: the datagram could not be sent (no such socket,
                permission denied, systemd's queue full, ...).
        """
        if not fields:
            raise ValueError("an sd_notify message needs at least one field")
        lines = []
        for key, raw in fields.items():
            if not _FIELD_NAME.fullmatch(key):
                raise ValueError(f"invalid sd_notify field name {key!r}")
            value = str(raw)
            if "\n" in value:
                raise ValueError(f"sd_notify field {key} contains a newline")
            lines.append(f"{key}={value}")
        return self._send_datagram("\n".join(lines).encode())

    def _send_datagram(self, message: bytes) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            raise NotifyError(
                f"sd_notify to {self._address!r} failed: {exc.strerror or exc}"
            ) from exc
        return True

    def ready(self, status: str | None = None) -> bool:
        """Send ``READY=1`` (and ``STATUS=`` when given): startup or a reload is done.

        Send it once every listener is up, and again after each reload.
        Same return value and errors as `send`.
        """
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=_one_line(status))

    def reloading(self) -> bool:
        """Send ``RELOADING=1`` with ``MONOTONIC_USEC=``: a reload has started.

        Send it on SIGHUP before re-reading the configuration, then `ready` when
        the new configuration is in force. ``MONOTONIC_USEC`` is the current
        ``CLOCK_MONOTONIC`` time in microseconds; systemd >= 253 requires it
        with ``RELOADING=1`` for ``Type=notify-reload`` to tell this reload from
        an earlier one, and older versions ignore it. Same return value and
        errors as `send`.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING=1, MONOTONIC_USEC=now_usec)

    def stopping(self) -> bool:
        """Send ``STOPPING=1``: shutdown has begun (on SIGTERM).

        Safe to call inside a cancelled scope: it does not checkpoint.
        Same return value and errors as `send`.
        """
        return self.send(STOPPING=1)

    def watchdog(self) -> bool:
        """Send ``WATCHDOG=1``: the daemon is alive and well. See `run_watchdog`.

        Same return value and errors as `send`.
        """
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """Send ``STATUS=text``, shown by ``systemctl status``.

        A status is one line: newlines in *text* become spaces. Same return
        value and errors as `send`.
        """
        return self.send(STATUS=_one_line(text))


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds, or None.

    This is ``$WATCHDOG_USEC`` (the unit's ``WatchdogSec=``) converted to
    seconds: the time after which systemd kills the service if no
    ``WATCHDOG=1`` arrived. Ping at **half** of it, as ``sd_watchdog_enabled(3)``
    advises::

        timeout = watchdog_interval()
        if timeout is not None:
            await nursery.start(run_watchdog, notifier, check, timeout / 2)

    Returns None when ``$WATCHDOG_USEC`` is unset, or when ``$WATCHDOG_PID`` is
    set to another process's PID (the variables were inherited, not meant for
    us).

    Raises:
        NotifyError: ``$WATCHDOG_USEC`` is not a positive integer, or
            ``$WATCHDOG_PID`` is not a PID.
    """
    usec_text = environ.get("WATCHDOG_USEC")
    if usec_text is None:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text is not None and _parse_pid("WATCHDOG_PID", pid_text) != os.getpid():
        return None
    usec = _parse_uint("WATCHDOG_USEC", usec_text)
    if usec == 0:
        raise NotifyError("invalid WATCHDOG_USEC '0': the watchdog timeout must be positive")
    return usec / 1_000_000


async def run_watchdog(
    notifier: Notifier,
    check: Callable[[], Awaitable[bool]],
    interval: float,
    *,
    check_timeout: float | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send ``WATCHDOG=1`` every *interval* seconds, but only while *check* passes.

    Every *interval* (half the `watchdog_interval`), ``await check()`` runs; the
    ping is sent only when it returns True within *check_timeout* seconds
    (default: *interval*). When the check returns False or does not finish in
    time, that ping is skipped and a warning is logged; after enough skipped
    pings systemd declares the service hung, kills it (``SIGABRT``) and
    ``Restart=on-failure`` starts it again. Pings resume as soon as the check
    passes again. Ticks are on a fixed schedule, so a slow check does not make
    the pings drift.

    A ping that cannot be sent (`NotifyError`) is logged and the loop goes on:
    systemd's watchdog is the judge of a ping that never arrives. An exception
    raised by *check* itself is a bug and propagates.

    Runs until cancelled. Start it with ``await nursery.start(run_watchdog, ...)``;
    it reports started before the first check.

    Raises:
        ValueError: *interval* or *check_timeout* is not positive.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    timeout = interval if check_timeout is None else check_timeout
    if not timeout > 0:
        raise ValueError(f"watchdog check timeout must be positive, got {timeout!r}")
    task_status.started()
    deadline = trio.current_time()
    while True:
        healthy = False
        with trio.move_on_after(timeout) as scope:
            healthy = await check()
        if scope.cancelled_caught:
            logger.warning("watchdog: health check timed out after {}s; not pinging", timeout)
        elif not healthy:
            logger.warning("watchdog: health check failed; not pinging")
        else:
            try:
                notifier.watchdog()
            except NotifyError as exc:
                logger.warning("watchdog: ping not sent: {}", exc)
        # A fixed schedule, so that the time the check takes does not add up;
        # after an overrun it restarts from now instead of catching up in a burst.
        deadline = max(deadline + interval, trio.current_time())
        await trio.sleep_until(deadline)


def listen_fds(
    environ: MutableMapping[str, str] = os.environ, *, unset: bool = True
) -> list[socket.socket]:
    """The sockets systemd passed by socket activation, in order (fd 3, 4, ...).

    Like ``sd_listen_fds(3)``: returns an empty list unless ``$LISTEN_PID`` is
    this process and ``$LISTEN_FDS`` counts one or more descriptors. Each
    descriptor becomes a `socket.socket` (family and type read from the
    descriptor) that now owns it and is marked close-on-exec. Turn one into a
    trio listener with ``trio.SocketListener(trio.socket.from_stdlib_socket(s))``.

    With *unset* (the default, like ``sd_listen_fds(1)``) ``$LISTEN_PID``,
    ``$LISTEN_FDS`` and ``$LISTEN_FDNAMES`` are removed from *environ* in every
    case, so the descriptors are adopted once and no child inherits them.

    Raises:
        NotifyError: a variable is malformed, or a passed descriptor is not an
            open socket. No descriptor is adopted then.
    """
    return [sock for _, sock in _adopt_listen_fds(environ, unset=unset)]


def listen_fds_with_names(
    environ: MutableMapping[str, str] = os.environ, *, unset: bool = True
) -> dict[str, list[socket.socket]]:
    """Like `listen_fds`, grouped by the names in ``$LISTEN_FDNAMES``.

    A socket unit's ``FileDescriptorName=`` names every socket of that unit, so
    one name may hold several sockets (``ListenStream=`` twice); they are listed
    in descriptor order. Without ``$LISTEN_FDNAMES`` every socket is named
    ``"unknown"``, as ``sd_listen_fds_with_names(3)`` does.

    Raises:
        NotifyError: as `listen_fds`, or ``$LISTEN_FDNAMES`` does not name
            exactly ``$LISTEN_FDS`` descriptors.
    """
    named: dict[str, list[socket.socket]] = {}
    for name, sock in _adopt_listen_fds(environ, unset=unset):
        named.setdefault(name, []).append(sock)
    return named


def _adopt_listen_fds(
    environ: MutableMapping[str, str], *, unset: bool
) -> list[tuple[str, socket.socket]]:
    try:
        fds, names = _passed_fds(environ)
    finally:
        if unset:
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                environ.pop(key, None)
    # Check every descriptor before adopting any, so that an error leaves no
    # half-built socket objects behind to close the others.
    for fd in fds:
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            raise NotifyError(f"passed file descriptor {fd} is not open: {exc.strerror}") from exc
        if not stat.S_ISSOCK(mode):
            raise NotifyError(f"passed file descriptor {fd} is not a socket")
    adopted = []
    for fd, name in zip(fds, names, strict=True):
        os.set_inheritable(fd, False)
        adopted.append((name, socket.socket(fileno=fd)))
    return adopted


def _passed_fds(environ: Mapping[str, str]) -> tuple[list[int], list[str]]:
    pid_text = environ.get("LISTEN_PID")
    if pid_text is None or _parse_pid("LISTEN_PID", pid_text) != os.getpid():
        return [], []
    count = _parse_uint("LISTEN_FDS", environ.get("LISTEN_FDS", "0"))
    fds = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        return fds, ["unknown"] * count
    names = names_text.split(":") if count else []
    if len(names) != count:
        raise NotifyError(
            f"LISTEN_FDNAMES {names_text!r} names {len(names)} descriptors, LISTEN_FDS is {count}"
        )
    return fds, names


def _parse_uint(name: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise NotifyError(f"invalid {name} {text!r}: expected a non-negative integer")
    return int(text)


def _parse_pid(name: str, text: str) -> int:
    pid = _parse_uint(name, text)
    if pid == 0:
        raise NotifyError(f"invalid {name} '0': not a process id")
    return pid
