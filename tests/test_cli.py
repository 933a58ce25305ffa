"""The command line, run as a real subprocess: exit codes, messages, the replay table."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter, defaultdict
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import trio

import meksd

ROOT = Path(__file__).parent.parent
DEMO_FEED = ROOT / "examples" / "demo-feed.jsonl"


def meksd_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meksd", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    """`meksd --version` prints the package version and exits 0."""
    result = meksd_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"meksd {meksd.__version__}"


def test_bad_config_exits_78_with_path_messages(tmp_path: Path) -> None:
    """An invalid config exits 78 (EX_CONFIG), one prefixed line per problem on stderr."""
    conf = tmp_path / "bad.toml"
    conf.write_text(
        '[server]\ntick_ms = "16"\ntick_mss = 1\n[[rooms]]\nid = "r"\n'
        '[[rooms.sources]]\nkind = "simulator"\nbattles = "false"\n'
    )
    for command in (["run", "--config", str(conf)], ["check-config", str(conf)]):
        result = meksd_cli(*command)
        assert result.returncode == 78
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            "meksd: config error: expected int @ $.server.tick_ms",
            "meksd: config error: unknown key 'tick_mss' @ $.server",
            "meksd: config error: expected bool @ $.rooms[0].sources[0].battles",
        ]


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    """A config file that cannot be read is a config error too."""
    result = meksd_cli("run", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 78
    assert "meksd: config error: cannot read" in result.stderr


def test_toml_syntax_error_exits_78(tmp_path: Path) -> None:
    """Invalid TOML exits 78 with the line number in the message."""
    conf = tmp_path / "broken.toml"
    conf.write_text("[server\n")
    result = meksd_cli("check-config", str(conf))
    assert result.returncode == 78
    assert "invalid TOML" in result.stderr
    assert "line 1" in result.stderr


def test_check_config_ok() -> None:
    """check-config on a valid file prints OK and exits 0."""
    result = meksd_cli("check-config", "examples/meksd.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK")
    assert "2 room(s)" in result.stdout


def test_usage_errors_exit_64() -> None:
    """A wrong command line exits 64 (EX_USAGE) with a message, not argparse's 2."""
    for args in ([], ["frobnicate"], ["run", "--bogus"], ["replay"], ["replay", "x", "--top", "z"]):
        result = meksd_cli(*args)
        assert result.returncode == 64, (args, result.stderr)
        assert "meksd: error:" in result.stderr


def test_replay_missing_file_exits_66(tmp_path: Path) -> None:
    """A replay file that cannot be read exits 66 (EX_NOINPUT)."""
    result = meksd_cli("replay", str(tmp_path / "none.jsonl"))
    assert result.returncode == 66
    assert "cannot read" in result.stderr


def reference_counts(path: Path, streak_timeout_ms: float = 15_000) -> dict[str, Any]:
    """What the demo feed should count, computed here from the raw lines (not by meksd)."""
    seen: set[str] = set()
    diamonds: Counter[str] = Counter()
    names: dict[str, str] = {}
    totals: Counter[str] = Counter()
    streaks: dict[tuple[str, str, str], list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    ended: set[tuple[str, str, str]] = set()
    last_ts = 0.0
    for line in path.read_bytes().splitlines():
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        envelopes = doc if isinstance(doc, list) else [doc]
        if isinstance(doc, dict):
            last_ts = doc.get("ts", last_ts)
        for env in envelopes:
            data, kind = env["data"], env["event"]
            msg_id = str(data.get("msgId")) if "msgId" in data else None
            if kind == "gift" and not isinstance(data["repeatCount"], int):
                continue  # rejected: wrong type
            if msg_id is not None:
                if msg_id in seen:
                    totals["duplicates"] += 1
                    continue
                seen.add(msg_id)
            if kind == "chat":
                totals["comments"] += 1
            elif kind == "like":
                totals["likes"] += data["likeCount"]
            elif kind == "member":
                totals["joins"] += 1
            elif kind in ("follow", "share"):
                totals[f"{kind}s"] += 1
            elif kind == "gift":
                user = str(data["userId"])
                names[user] = data["nickname"]
                if data["giftType"] != 1:
                    diamonds[user] += data["diamondCount"] * data["repeatCount"]
                    totals["gifts"] += data["repeatCount"]
                    continue
                key = (user, str(data["giftId"]), str(data["groupId"]))
                streaks[key].append((last_ts, data))
                if data["repeatEnd"]:
                    ended.add(key)
    pending = 0
    for key, events in streaks.items():
        last_at, data = events[-1]
        if key in ended or last_ts - last_at > streak_timeout_ms:
            diamonds[key[0]] += data["diamondCount"] * data["repeatCount"]
            totals["gifts"] += data["repeatCount"]
        else:
            pending += 1
    totals["diamonds"] = sum(diamonds.values())
    return {"diamonds": diamonds, "names": names, "totals": totals, "pending": pending}


def test_replay_demo_feed_table_matches_feed() -> None:
    """`meksd replay` prints a leaderboard and totals that match the feed's gifts."""
    expected = reference_counts(DEMO_FEED)
    result = meksd_cli("replay", "examples/demo-feed.jsonl", "--top", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    top_user, top_diamonds = expected["diamonds"].most_common(1)[0]
    first_row = out.splitlines()[3]
    assert first_row.split()[:2] == ["1", f"{top_diamonds:,}"]
    assert expected["names"][top_user] in first_row
    assert f"totals: diamonds {expected['totals']['diamonds']:,} |" in out
    assert "not_json" in out
    assert "wrong_type" in out
    assert "envelope" in out
    assert "pending streaks" in out
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == len(+expected["diamonds"])


def test_replay_json_matches_feed() -> None:
    """`meksd replay --json` gives the snapshot state and rejection counts of the feed."""
    expected = reference_counts(DEMO_FEED)
    result = meksd_cli("replay", str(DEMO_FEED), "--json", "--room", "demo")
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["room"] == "demo"
    assert report["rejections"] == {"not_json": 1, "wrong_type": 1}
    assert report["unknown"] == {"envelope": 1}
    assert report["duplicates"] == expected["totals"]["duplicates"]
    assert len(report["pending_streaks"]) == expected["pending"]
    assert report["streaks_timed_out"] >= 1
    state = report["state"]
    board = {row["user_id"]: row["diamonds"] for row in state["leaderboard"]}
    assert board == dict(+expected["diamonds"])
    totals = state["totals"]
    for key in ("diamonds", "gifts", "likes", "comments", "joins", "follows", "shares"):
        assert totals[key] == expected["totals"][key], key
    assert state["battle"]["status"] == "ended"


def test_replay_streak_timeout_option(tmp_path: Path) -> None:
    """--streak-timeout decides whether an unfinished streak counts or stays pending."""
    feed = tmp_path / "feed.jsonl"
    gift = {"userId": "u1", "uniqueId": "u", "nickname": "U", "giftId": 5655,
            "giftName": "Rose", "giftType": 1, "groupId": "g", "diamondCount": 1}  # fmt: skip
    lines = [
        {"ts": 0, "event": "gift", "data": {**gift, "msgId": "1", "repeatCount": 5,
                                            "repeatEnd": False}},
        {"ts": 10_000, "event": "chat", "data": {"msgId": "2", "userId": "u2", "comment": "x"}},
    ]  # fmt: skip
    feed.write_bytes(b"\n".join(orjson.dumps(line) for line in lines))
    short = orjson.loads(meksd_cli("replay", str(feed), "--json", "--streak-timeout", "5").stdout)
    long = orjson.loads(meksd_cli("replay", str(feed), "--json").stdout)
    assert short["state"]["totals"]["diamonds"] == 5
    assert short["pending_streaks"] == []
    assert long["state"]["totals"]["diamonds"] == 0
    assert [p["repeat_count"] for p in long["pending_streaks"]] == [5]


async def test_run_serves_until_sigterm_then_exits_0(tmp_path: Path) -> None:
    """`meksd run` logs JSON lines, reports ready, and exits 0 on SIGTERM."""
    conf = tmp_path / "meksd.toml"
    conf.write_text(
        '[server]\nws_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
        '[[rooms]]\nid = "demo"\n[[rooms.sources]]\nkind = "simulator"\nseed = 1\n'
    )
    command = [sys.executable, "-m", "meksd", "run", "--config", str(conf)]
    stderr = b""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial(trio.run_process, command, stderr=subprocess.PIPE, check=False)
            )
            assert process.stderr is not None
            while b'"event":"ready"' not in stderr:
                chunk = await process.stderr.receive_some()
                assert chunk, stderr.decode()
                stderr += chunk
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                stderr += chunk
    assert process.returncode == 0, stderr.decode()
    records = [orjson.loads(line) for line in stderr.splitlines()]
    assert all({"ts", "level", "msg"} <= record.keys() for record in records)
    assert any(record.get("source") == "simulator:0" for record in records)
