"""Take docs/screenshot.png: the dashboard page during a simulator burst.

    .venv/bin/python docs/make-screenshot.py [OUT.png]

Needs what the browser tests need: Debian's chromium and Playwright for Python
(the ``test`` extra); emoji show as boxes unless a color emoji font is installed
(Debian: fonts-noto-color-emoji). Starts ``meksd run`` on free loopback ports with
a seeded simulator whose bursts take seconds 6-10 of every 10 and whose battle is
on, opens the page, pins one chat message and hides another, and shoots during
the second burst.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def flag(page: Page, action: str, index: int) -> None:
    """Click ``action`` on the chat line at ``index`` (from the end)."""
    ids = page.eval_on_selector_all("#chat li", "els => els.map(e => e.dataset.msgId)")
    page.click(f'#chat li[data-msg-id="{ids[index]}"] button[data-action="{action}"]')


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot.png"
    ws_port, http_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "meksd.toml"
        config.write_text(
            f'[server]\nws_listen = "127.0.0.1:{ws_port}"\nhttp_listen = "127.0.0.1:{http_port}"\n'
            '[[rooms]]\nid = "alice"\nchat_history = 200\n'
            '[[rooms.sources]]\nkind = "simulator"\nseed = 11\n'
            "rate = 12.0\nburst_rate = 300.0\nburst_every_s = 10.0\nburst_s = 4.0\n"
            "battle_every_s = 40.0\nbattle_s = 36.0\n"
            '[[rooms]]\nid = "bob"\n[[rooms.sources]]\nkind = "simulator"\nseed = 12\n'
        )
        env = {"XDG_STATE_HOME": tmp, "PATH": "/usr/bin:/bin"}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "meksd", "run", "--config", str(config)],
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            time.sleep(1.0)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 860})
                page.goto(f"http://127.0.0.1:{http_port}/#room=alice")
                page.wait_for_selector("#badge[data-state=live]", timeout=10_000)
                time.sleep(8.0)
                flag(page, "chat.pin", -6)  # stays pinned after it scrolls away
                time.sleep(9.0)  # into the second burst: seconds 16-20 after start
                flag(page, "chat.hide", -4)
                page.mouse.move(0, 0)  # the chat follows new messages again
                time.sleep(0.4)
                # Shoot between two leaderboard moves rather than in the middle of one.
                page.wait_for_function("document.getAnimations().length === 0", timeout=3000)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=15)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
