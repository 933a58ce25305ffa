"""sd_notify, watchdog and socket activation against real sockets (meksd.runtime.notify)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from loguru import logger

from meksd.runtime.notify import (
    Notifier,
    NotifyError,
    listen_fds,
    listen_fds_with_names,
    run_watchdog,
    watchdog_interval,
)

# --- helpers -------------------------------------------------------------------


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 100:  # sockaddr_un.sun_path is 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    return path


@pytest.fixture
def receiver(socket_path: Path) -> Iterator[trio.socket.SocketType]:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(socket_path))
    with trio.socket.from_stdlib_socket(sock) as trio_sock:
        yield trio_sock


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[str, trio.socket.SocketType]]:
    """A datagram socket in the abstract namespace, and its $NOTIFY_SOCKET spelling."""
    name = f"meksd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    with trio.socket.from_stdlib_socket(sock) as trio_sock:
        yield "@" + name, trio_sock


async def receive(sock: trio.socket.SocketType) -> str:
    return (await sock.recv(4096)).decode()


@asynccontextmanager
async def collecting(
    sock: trio.socket.SocketType,
) -> AsyncIterator[list[tuple[float, str]]]:
    """Receive datagrams in the background as (trio time, text) while the body runs.

    The kernel queues only a few datagrams per unix socket
    (net.unix.max_dgram_qlen), so a long test must drain as it goes.
    """
    received: list[tuple[float, str]] = []

    async def drain() -> None:
        while True:
            text = await receive(sock)
            received.append((trio.current_time(), text))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        yield received
        # Let datagrams already sent be delivered before stopping.
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


@pytest.fixture
def log_records() -> Iterator[list[str]]:
    """Messages meksd logs through loguru during the test."""
    messages: list[str] = []
    handler_id = logger.add(lambda m: messages.append(m.record["message"]), level="DEBUG")
    yield messages
    logger.remove(handler_id)


# --- Notifier ------------------------------------------------------------------


async def test_ready_arrives_exactly(socket_path: Path, receiver: trio.socket.SocketType) -> None:
    """READY=1 arrives at a path $NOTIFY_SOCKET as exactly that datagram."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    assert notifier.enabled
    with trio.fail_after(5):
        assert notifier.ready() is True
        assert await receive(receiver) == "READY=1"


async def test_each_message_arrives_exactly(
    socket_path: Path, receiver: trio.socket.SocketType
) -> None:
    """STATUS=, WATCHDOG=1, STOPPING=1 and ready-with-status arrive byte for byte."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    with trio.fail_after(5):
        notifier.status("serving 3 rooms, 41 dashboards")
        assert await receive(receiver) == "STATUS=serving 3 rooms, 41 dashboards"
        notifier.watchdog()
        assert await receive(receiver) == "WATCHDOG=1"
        notifier.stopping()
        assert await receive(receiver) == "STOPPING=1"
        notifier.ready("listening on :8765")
        assert await receive(receiver) == "READY=1\nSTATUS=listening on :8765"


async def test_abstract_namespace_address(
    abstract_receiver: tuple[str, trio.socket.SocketType],
) -> None:
    """An @name $NOTIFY_SOCKET reaches the abstract socket \\0name."""
    address, sock = abstract_receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    with trio.fail_after(5):
        notifier.ready()
        assert await receive(sock) == "READY=1"


async def test_reloading_carries_monotonic_usec(
    socket_path: Path, receiver: trio.socket.SocketType
) -> None:
    """reloading() sends RELOADING=1 and the current CLOCK_MONOTONIC time in µs."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    with trio.fail_after(5):
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        first, second = (await receive(receiver)).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


async def test_send_keeps_field_order(socket_path: Path, receiver: trio.socket.SocketType) -> None:
    """send(**fields) writes KEY=VALUE lines in argument order, ints as decimals."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    with trio.fail_after(5):
        notifier.send(STATUS="up", MAINPID=42, READY=1)
        assert await receive(receiver) == "STATUS=up\nMAINPID=42\nREADY=1"


async def test_stopping_is_sent_inside_a_cancelled_scope(
    socket_path: Path, receiver: trio.socket.SocketType
) -> None:
    """Sending does not checkpoint, so STOPPING=1 goes out even while being cancelled."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()
            notifier.stopping()
            await trio.lowlevel.checkpoint()  # where an awaiting send would have died
        assert scope.cancelled_caught
        assert await receive(receiver) == "STOPPING=1"


async def test_status_newlines_become_spaces(
    socket_path: Path, receiver: trio.socket.SocketType
) -> None:
    """A multi-line status is flattened to one line rather than smuggling in a field."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    with trio.fail_after(5):
        notifier.status("line one\nREADY=1")
        assert await receive(receiver) == "STATUS=line one READY=1"


def test_send_rejects_newline_and_bad_keys() -> None:
    """send() refuses values with newlines, lower-case keys and empty messages."""
    notifier = Notifier(b"/unused")
    with pytest.raises(ValueError, match="newline"):
        notifier.send(STATUS="a\nREADY=1")
    with pytest.raises(ValueError, match="field name"):
        notifier.send(ready=1)
    with pytest.raises(ValueError, match="at least one"):
        notifier.send()


def test_disabled_without_notify_socket() -> None:
    """Without $NOTIFY_SOCKET (or with it empty) the notifier is disabled and sends nothing."""
    for environ in ({}, {"NOTIFY_SOCKET": ""}):
        notifier = Notifier.from_env(environ)
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
        assert notifier.reloading() is False
        assert notifier.status("x") is False


def test_missing_socket_path_raises(tmp_path: Path) -> None:
    """A $NOTIFY_SOCKET path with nothing bound there raises NotifyError from the OSError."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(tmp_path / "absent.sock")})
    with pytest.raises(NotifyError, match="sd_notify to") as info:
        notifier.ready()
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_unsupported_address_raises() -> None:
    """A relative path, a bare @ or a vsock: address is refused when building the notifier."""
    for value in ("run/notify", "@", "vsock:2:1234"):
        with pytest.raises(NotifyError, match="unsupported NOTIFY_SOCKET"):
            Notifier.from_env({"NOTIFY_SOCKET": value})


def test_full_queue_raises_instead_of_blocking(socket_path: Path) -> None:
    """When the receiver's queue is full, a send fails at once with NotifyError (EAGAIN)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(os.fspath(socket_path))
        notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
        with pytest.raises(NotifyError) as info:
            for _ in range(10_000):
                notifier.watchdog()
        assert isinstance(info.value.__cause__, BlockingIOError)


# --- watchdog_interval ---------------------------------------------------------


def test_watchdog_interval_parses_usec() -> None:
    """WATCHDOG_USEC becomes seconds; unset means no watchdog."""
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "1500"}) == 0.0015


def test_watchdog_interval_honours_watchdog_pid() -> None:
    """WATCHDOG_PID equal to our PID keeps the watchdog; another PID means it is not ours."""
    mine = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(mine) == 30.0
    other = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(other) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "abc"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": " 5"},
        {"WATCHDOG_USEC": "5", "WATCHDOG_PID": "x"},
        {"WATCHDOG_USEC": "5", "WATCHDOG_PID": "0"},
    ],
)
def test_watchdog_interval_rejects_malformed(environ: dict[str, str]) -> None:
    """A malformed WATCHDOG_USEC or WATCHDOG_PID raises NotifyError rather than disabling."""
    with pytest.raises(NotifyError):
        watchdog_interval(environ)


# --- run_watchdog --------------------------------------------------------------


async def test_watchdog_pings_every_interval_while_check_passes(
    autojump_clock: trio.testing.MockClock,
    socket_path: Path,
    receiver: trio.socket.SocketType,
) -> None:
    """A passing check gives WATCHDOG=1 at once and then once per interval."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    checks = 0

    async def check() -> bool:
        nonlocal checks
        checks += 1
        await trio.sleep(0.5)  # a round trip through the actors takes time
        return True

    with trio.fail_after(100):
        start = trio.current_time()
        async with collecting(receiver) as received, trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, check, 15.0)
            await trio.sleep(61)
            nursery.cancel_scope.cancel()
    assert [text for _, text in received] == ["WATCHDOG=1"] * 5
    assert [round(t - start, 3) for t, _ in received] == [0.5, 15.5, 30.5, 45.5, 60.5]
    assert checks == 5


async def test_watchdog_skips_while_check_fails(
    autojump_clock: trio.testing.MockClock,
    socket_path: Path,
    receiver: trio.socket.SocketType,
    log_records: list[str],
) -> None:
    """No WATCHDOG=1 while the check returns False; pings resume once it passes again."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    healthy = True

    async def check() -> bool:
        await trio.lowlevel.checkpoint()
        return healthy

    with trio.fail_after(100):
        start = trio.current_time()
        async with collecting(receiver) as received, trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, check, 10.0)
            await trio.sleep(15)  # pings at 0 and 10
            healthy = False
            await trio.sleep(30)  # checks at 20, 30, 40 fail
            healthy = True
            await trio.sleep(10)  # ping at 50
            nursery.cancel_scope.cancel()
    assert [round(t - start) for t, _ in received] == [0, 10, 50]
    assert log_records.count("watchdog: health check failed; not pinging") == 3


async def test_watchdog_skips_while_check_hangs(
    autojump_clock: trio.testing.MockClock,
    socket_path: Path,
    receiver: trio.socket.SocketType,
    log_records: list[str],
) -> None:
    """A check that hangs is cut off by the check timeout, no ping is sent, and the loop goes on."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(socket_path)})
    stuck = False
    checks = 0

    async def check() -> bool:
        nonlocal checks
        checks += 1
        if stuck:
            await trio.sleep_forever()
        return True

    with trio.fail_after(100):
        start = trio.current_time()
        async with collecting(receiver) as received, trio.open_nursery() as nursery:
            await nursery.start(partial(run_watchdog, check_timeout=2.0), notifier, check, 10.0)
            await trio.sleep(5)  # ping at 0
            stuck = True
            await trio.sleep(30)  # checks at 10, 20, 30 hang and time out at +2
            stuck = False
            await trio.sleep(10)  # ping at 40
            nursery.cancel_scope.cancel()
    assert [round(t - start) for t, _ in received] == [0, 40]
    assert checks == 5
    assert log_records.count("watchdog: health check timed out after 2.0s; not pinging") == 3


async def test_watchdog_survives_a_failed_ping(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, log_records: list[str]
) -> None:
    """A ping that cannot be sent is logged and the loop keeps checking."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": os.fspath(tmp_path / "absent.sock")})
    checks = 0

    async def check() -> bool:
        nonlocal checks
        checks += 1
        await trio.lowlevel.checkpoint()
        return True

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_watchdog, notifier, check, 10.0)
            await trio.sleep(25)
            nursery.cancel_scope.cancel()
    assert checks == 3
    assert len([m for m in log_records if m.startswith("watchdog: ping not sent")]) == 3


async def test_watchdog_rejects_non_positive_interval() -> None:
    """An interval of zero is a configuration error, not a busy loop."""

    async def check() -> bool:
        return True

    with trio.fail_after(5), pytest.raises(ValueError, match="interval"):
        await run_watchdog(Notifier(None), check, 0)


# --- socket activation ---------------------------------------------------------


def test_listen_fds_ignores_other_pid_and_unsets() -> None:
    """LISTEN_PID of another process yields nothing, and the variables are removed anyway."""
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "ws:http"}
    assert listen_fds(environ) == []
    assert environ == {}


def test_listen_fds_without_variables() -> None:
    """No LISTEN_PID means no socket activation; unset=False leaves other variables alone."""
    environ = {"LISTEN_FDS": "2"}
    assert listen_fds(environ, unset=False) == []
    assert environ == {"LISTEN_FDS": "2"}
    assert listen_fds_with_names({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}) == {}


@pytest.mark.parametrize(
    "extra",
    [
        {"LISTEN_FDS": "two"},
        {"LISTEN_FDS": "-1"},
        {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "ws"},
        {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "ws:http"},
    ],
)
def test_listen_fds_rejects_malformed(extra: dict[str, str]) -> None:
    """A bad LISTEN_FDS, or LISTEN_FDNAMES that does not match it, raises and still unsets."""
    environ = {"LISTEN_PID": str(os.getpid()), **extra}
    with pytest.raises(NotifyError):
        listen_fds_with_names(environ)
    assert environ == {}


def test_listen_fds_rejects_bad_pid() -> None:
    """A LISTEN_PID that is not a number raises NotifyError."""
    with pytest.raises(NotifyError, match="LISTEN_PID"):
        listen_fds({"LISTEN_PID": "self", "LISTEN_FDS": "1"})


# The child plays both parts of socket activation: as "systemd" it moves the
# inherited descriptors to 3, 4, ... and sets LISTEN_PID to its own PID, then
# execs the service (exec keeps the PID), which adopts them with listen_fds.
_ACTIVATE = textwrap.dedent(
    """
    import os, sys
    fds = [int(fd) for fd in sys.argv[1].split(",")]
    for target, fd in enumerate(fds, start=3):
        os.dup2(fd, target)  # dup2 targets are inheritable
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = str(len(fds))
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]])
    """
)

_SERVICE = textwrap.dedent(
    """
    import os, socket
    from meksd.runtime.notify import listen_fds_with_names, NotifyError
    try:
        named = listen_fds_with_names()
    except NotifyError as exc:
        print("error", exc, flush=True)
        raise SystemExit(0)
    left = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    print("left", left, flush=True)
    for name, socks in named.items():
        for s in socks:
            print(name, s.fileno(), s.family.name, s.type.name, s.get_inheritable(), flush=True)
    conn, _ = named["ws"][0].accept()
    with conn:
        conn.sendall(b"hello from fd %d" % named["ws"][0].fileno())
    """
)


def _activate(fds: list[int], names: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return subprocess.Popen(
        [sys.executable, "-c", _ACTIVATE, ",".join(map(str, fds)), _SERVICE],
        pass_fds=fds,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_listen_fds_adopts_real_sockets_in_a_child() -> None:
    """Sockets passed as fd 3 and 4 come back named, typed, close-on-exec and working."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ws,
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as http,
    ):
        ws.bind(("127.0.0.1", 0))
        ws.listen()
        http.bind(("::1", 0))
        http.listen()
        child = _activate([ws.fileno(), http.fileno()], "ws:http")
        try:
            assert child.stdout is not None
            lines = [child.stdout.readline().strip() for _ in range(3)]
            assert lines == [
                "left []",
                "ws 3 AF_INET SOCK_STREAM False",
                "http 4 AF_INET6 SOCK_STREAM False",
            ]
            with socket.create_connection(ws.getsockname(), timeout=10) as conn:
                assert conn.recv(100) == b"hello from fd 3"
            assert child.wait(timeout=10) == 0
        finally:
            child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


def test_listen_fds_refuses_a_non_socket_in_a_child() -> None:
    """A passed descriptor that is not a socket raises NotifyError naming it."""
    read_end, write_end = os.pipe()
    try:
        child = _activate([read_end], None)
        out, _ = child.communicate(timeout=10)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert out.strip() == "error passed file descriptor 3 is not a socket"
