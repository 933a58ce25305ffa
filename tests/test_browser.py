"""The dashboard page in headless Chromium, against a real meksd subprocess.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and Playwright for Python (the
``test`` extra; Playwright's own browser download is not used). Without them these
tests skip, saying why, unless ``MEKSD_REQUIRE_BROWSER=1`` (set by ``.ci/run``),
which turns the skip into a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_FEED = ROOT / "examples" / "demo-feed.jsonl"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOP_N = 20  # rows the page shows
T = TypeVar("T")


def _chromium() -> str | None:
    for candidate in (os.environ.get("MEKSD_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    if _chromium() is None:
        return "no chromium binary (apt-get install -y chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    why = _missing()
    if why is not None:
        if os.environ.get("MEKSD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser tests required but: {why}")
        pytest.skip(f"browser tests skipped: {why}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Daemon:
    """``meksd run`` as a subprocess on fixed loopback ports (so it can restart on them)."""

    def __init__(self, tmp_path: Path, rooms: str) -> None:
        self.ws_port, self.http_port = free_port(), free_port()
        self.config = tmp_path / "meksd.toml"
        self.config.write_text(
            f'[server]\nws_listen = "127.0.0.1:{self.ws_port}"\n'
            f'http_listen = "127.0.0.1:{self.http_port}"\nshutdown_grace_s = 2.0\n'
            + rooms.replace("{http_port}", str(self.http_port))
        )
        self.log = tmp_path / "meksd.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.starts += 1
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "meksd", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while b'"event":"ready"' not in self.log.read_bytes()[offset:]:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "meksd did not get ready"
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=15) == 0, self.log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return orjson.loads(response.read())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    rooms = f"""
[[rooms]]
id = "replay"
[[rooms.sources]]
kind = "replay"
path = "{DEMO_FEED}"
speed = 0

[[rooms]]
id = "quiet"
[[rooms.sources]]
kind = "simulator"
rate = 0.0
burst_s = 0.0
battles = false
"""
    running = Daemon(tmp_path, rooms)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def eventually(probe: Callable[[], T | None], *, timeout: float = 15, what: str = "") -> T:
    """Poll ``probe`` until it returns something other than None (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def page_rows(page: Any) -> list[tuple[str, int]]:
    rows: list[list[Any]] = page.eval_on_selector_all(
        "#leaderboard li", "els => els.map(e => [e.dataset.userId, +e.dataset.diamonds])"
    )
    return [(uid, diamonds) for uid, diamonds in rows]


def server_rows(daemon: Daemon, room: str) -> list[tuple[str, int]]:
    snapshot = daemon.get(f"/api/rooms/{room}")
    return [(r["user_id"], r["diamonds"]) for r in snapshot["state"]["leaderboard"]][:TOP_N]


def badge(page: Any) -> dict[str, str]:
    found: dict[str, str] = page.eval_on_selector("#badge", "e => ({...e.dataset})")
    return found


def open_page(browser: Any, daemon: Daemon, room: str, query: str = "") -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    page.goto(f"{daemon.url}/{query}#room={room}")
    page.wait_for_selector("#badge[data-state=live]", timeout=10_000)
    return page


def test_page_shows_the_servers_leaderboard_and_counters(browser: Any, daemon: Daemon) -> None:
    """Loaded from meksd, the page shows the same leaderboard and totals as /api/rooms/{id}."""
    page = open_page(browser, daemon, "replay")
    try:
        assert page.eval_on_selector_all("#room option", "os => os.map(o => o.value)") == [
            "quiet",
            "replay",
        ]

        def same() -> bool | None:
            expected = server_rows(daemon, "replay")
            return True if expected and page_rows(page) == expected else None

        eventually(same, what="the page's leaderboard to equal the server's")
        totals = daemon.get("/api/rooms/replay")["state"]["totals"]
        shown = page.inner_text("#c-diamonds").replace(",", "").replace("\u202f", "")
        assert int(shown) == totals["diamonds"]
        state = badge(page)
        assert state["state"] == "live" and state["epoch"] == daemon.get("/api/rooms")[1]["epoch"]
        page.select_option("#room", "quiet")
        page.wait_for_selector("#badge[data-state=live]", timeout=10_000)
        assert page_rows(page) == [], "the other room's board, not the old one"
        assert page.errors == []
    finally:
        page.close()


def test_page_survives_a_daemon_restart_by_reconnecting_and_resyncing(
    browser: Any, daemon: Daemon
) -> None:
    """meksd stops and starts again: the page shows reconnecting, then is live on the server's state."""
    page = open_page(browser, daemon, "replay")
    try:
        eventually(lambda: True if page_rows(page) == server_rows(daemon, "replay") else None)
        daemon.stop()
        page.wait_for_selector("#badge[data-state=reconnecting]", timeout=10_000)
        daemon.start()
        page.wait_for_selector("#badge[data-state=live][data-reconnects='1']", timeout=20_000)

        def resynced() -> bool | None:
            snapshot = daemon.get("/api/rooms/replay")
            state = badge(page)
            if (state["epoch"], int(state["seq"])) != (snapshot["epoch"], snapshot["seq"]):
                return None
            return True if page_rows(page) == server_rows(daemon, "replay") else None

        eventually(resynced, what="the page to resync with the restarted daemon")
        assert page.errors == []
    finally:
        page.close()


def test_an_operator_pin_and_hide_show_on_a_second_page(browser: Any, daemon: Daemon) -> None:
    """Pinning and hiding on one page shows on another page of the room, as the server has it."""
    first = open_page(browser, daemon, "replay")
    second = open_page(browser, daemon, "replay")
    try:
        msg_id = first.eval_on_selector("#chat li:last-child", "e => e.dataset.msgId")
        line = f'#chat li[data-msg-id="{msg_id}"]'
        first.click(f'{line} button[data-action="chat.pin"]')
        second.wait_for_selector(f'#pinned li[data-msg-id="{msg_id}"][data-pinned=true]')
        first.click(f'{line} button[data-action="chat.hide"]')
        second.wait_for_selector(f"{line}[data-pinned=true][data-hidden=true]")
        server = daemon.get("/api/rooms/replay")["state"]["chat"]
        assert [(c["pinned"], c["hidden"]) for c in server if c["msg_id"] == msg_id] == [
            (True, True)
        ]
        first.click(f'#pinned li[data-msg-id="{msg_id}"] button[data-action="chat.unpin"]')
        second.wait_for_selector(f"{line}[data-pinned=false][data-hidden=true]")
        assert second.locator("#pinned li").count() == 0

        # Session reset from the first page: both pages resync to the new, empty session.
        epoch = badge(second)["epoch"]
        first.once("dialog", lambda dialog: dialog.accept())
        first.click("#reset")
        # A function, not an expression: Playwright evaluates a string expression with
        # eval() when it has to poll, which the page's CSP (script-src 'self') forbids.
        second.wait_for_function(
            "old => document.getElementById('badge').dataset.epoch !== old", arg=epoch
        )
        assert page_rows(second) == [] and second.locator("#chat li").count() == 0
        assert daemon.get("/api/rooms/replay/previous")["epoch"] == epoch
        assert first.errors == [] and second.errors == []
    finally:
        first.close()
        second.close()


def test_a_streak_shows_live_in_one_entry_and_counts_once(browser: Any, tmp_path: Path) -> None:
    """Streak progress updates one gift-feed entry live; its end shows what it counted, once."""
    user = {"userId": "u1", "uniqueId": "rosa", "nickname": "Rosa"}
    gift = {**user, "giftId": 5655, "giftName": "Rose", "giftType": 1, "diamondCount": 1}
    lines = [
        {"ts": 400 * k, "event": "gift",
         "data": {**gift, "msgId": f"s{k}", "groupId": "g", "repeatCount": k,
                  "repeatEnd": k == 4}}
        for k in (1, 2, 3, 4)
    ]  # fmt: skip
    lines.append({"ts": 2400, "event": "chat", "data": {**user, "msgId": "c", "comment": "x"}})
    feed = tmp_path / "streak.jsonl"
    feed.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    daemon = Daemon(
        tmp_path,
        f'[[rooms]]\nid = "s"\n[[rooms.sources]]\nkind = "replay"\npath = "{feed}"\nloop = true\n',
    )
    daemon.start()
    page = None
    try:
        page = open_page(browser, daemon, "s")
        seen: set[str] = set()
        watch_until = time.monotonic() + 6.0  # two and a half passes of the feed
        while time.monotonic() < watch_until:
            entries = page.eval_on_selector_all(
                '#gifts li[data-key="u1:5655"]',
                "els => els.map(e => [e.dataset.streak, e.querySelector('.dia').textContent])",
            )
            progress = [e for e in entries if e[0] == "progress"]
            assert len(progress) <= 1, "one entry per streak in progress"
            seen.update(streak for streak, _ in entries)
            for streak, dia in entries:
                if streak == "end":
                    assert dia.startswith("+4 "), "counted once, at the end: 4 x 1 diamond"
            time.sleep(0.03)
        assert {"progress", "end"} <= seen

        def same() -> bool | None:
            return True if page_rows(page) == server_rows(daemon, "s") else None

        eventually(same, what="the page's leaderboard to equal the server's")
        assert page.errors == []
    finally:
        if page is not None:
            page.close()
        daemon.stop()


def test_with_tokens_only_operators_are_offered_the_actions(browser: Any, tmp_path: Path) -> None:
    """A viewer's page has no operator buttons; an operator's page has them, and its pin reaches the viewer."""
    tokens = {"wall": ("viewer-secret", "viewer"), "ops": ("operator-secret", "operator")}
    auth = '[auth]\nallowed_origins = ["http://127.0.0.1:{http_port}"]\n' + "".join(
        f'[[auth.tokens]]\nname = "{name}"\nrole = "{role}"\n'
        f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        for name, (token, role) in tokens.items()
    )
    room = f'[[rooms]]\nid = "replay"\n[[rooms.sources]]\nkind = "replay"\npath = "{DEMO_FEED}"\n'
    daemon = Daemon(tmp_path, auth + room + "speed = 0\n")
    daemon.start()
    pages: list[Any] = []
    try:
        viewer = open_page(browser, daemon, "replay", "?token=viewer-secret")
        pages.append(viewer)
        operator = open_page(browser, daemon, "replay", "?token=operator-secret")
        pages.append(operator)
        assert viewer.get_attribute("body", "data-role") == "viewer"
        assert operator.get_attribute("body", "data-role") == "operator"
        assert not viewer.is_visible("#reset") and operator.is_visible("#reset")
        msg_id = operator.eval_on_selector("#chat li:last-child", "e => e.dataset.msgId")
        pin = f'#chat li[data-msg-id="{msg_id}"] button[data-action="chat.pin"]'
        assert not viewer.is_visible(pin)
        operator.click(pin)
        viewer.wait_for_selector(f'#pinned li[data-msg-id="{msg_id}"][data-pinned=true]')
        assert viewer.errors == [] and operator.errors == []
    finally:
        for page in pages:
            page.close()
        daemon.stop()
