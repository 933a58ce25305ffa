"""The systemd units in systemd/: required directives, and systemd-analyze's verdict."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = SYSTEMD_DIR / "meksd.service"
SOCKETS = [SYSTEMD_DIR / "meksd-ws.socket", SYSTEMD_DIR / "meksd-http.socket"]

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Parse a unit file into section -> [(key, value), ...], keeping repeated keys.

    configparser cannot do this: systemd keys repeat and accumulate
    (``SystemCallFilter=`` twice), and a trailing backslash continues a line.
    """
    unit: Unit = {}
    section: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        assert section is not None, f"directive outside a section: {line!r}"
        section.append((key.strip(), value.strip()))
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= appears {len(found)} times"
    return found[0]


@pytest.fixture(scope="module")
def service() -> Unit:
    return parse_unit(SERVICE.read_text())


def test_parser_keeps_repeats_and_continuations() -> None:
    """The unit parser keeps repeated keys in order and joins backslash continuations."""
    unit = parse_unit("# c\n[Service]\nA=1\nA=2 \\\n  3\n; c\n[Install]\nB=x=y\n")
    assert unit == {"Service": [("A", "1"), ("A", "2 3")], "Install": [("B", "x=y")]}


REQUIRED_SERVICE = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": "/usr/bin/meksd run --config /etc/meksd/meksd.toml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "2",
    "TimeoutStopSec": "15",
    "DynamicUser": "yes",
    "StateDirectory": "meksd",
    "ConfigurationDirectory": "meksd",
    "LimitNOFILE": "65536",
}

REQUIRED_HARDENING = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "DevicePolicy": "closed",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "UMask": "0077",
}


@pytest.mark.parametrize(("key", "expected"), sorted(REQUIRED_SERVICE.items()))
def test_service_lifecycle_directive(service: Unit, key: str, expected: str) -> None:
    """meksd.service sets each lifecycle directive the daemon is written against."""
    assert value(service, "Service", key) == expected


@pytest.mark.parametrize(("key", "expected"), sorted(REQUIRED_HARDENING.items()))
def test_service_hardening_directive(service: Unit, key: str, expected: str) -> None:
    """meksd.service sets each sandboxing directive exactly once, to the strict value."""
    assert value(service, "Service", key) == expected


def test_service_syscall_filter(service: Unit) -> None:
    """The syscall filter allows @system-service minus @privileged and @resources."""
    assert values(service, "Service", "SystemCallFilter") == [
        "@system-service",
        "~@privileged @resources",
    ]


def test_service_allows_remote_feeds(service: Unit) -> None:
    """No IP allow list and no private network: room feeds may be anywhere."""
    for key in ("IPAddressDeny", "IPAddressAllow", "PrivateNetwork"):
        assert values(service, "Service", key) == []


def test_service_is_installed_and_waits_for_network(service: Unit) -> None:
    """The service starts in multi-user.target, after the network is online."""
    assert value(service, "Install", "WantedBy") == "multi-user.target"
    assert value(service, "Unit", "After") == "network-online.target"
    assert value(service, "Unit", "Wants") == "network-online.target"


@pytest.mark.parametrize(
    ("path", "name", "port"), [(SOCKETS[0], "ws", "8765"), (SOCKETS[1], "http", "8766")]
)
def test_socket_units_name_their_descriptor(path: Path, name: str, port: str) -> None:
    """Each socket unit activates meksd.service and names its one listener for LISTEN_FDNAMES."""
    unit = parse_unit(path.read_text())
    assert value(unit, "Socket", "ListenStream") == port
    assert value(unit, "Socket", "FileDescriptorName") == name
    assert value(unit, "Socket", "Service") == "meksd.service"


def _runnable_copy(tmp_path: Path) -> Path:
    """Copy the units to tmp_path with ExecStart pointing at a binary that exists."""
    true = shutil.which("true")
    assert true is not None
    text = SERVICE.read_text()
    text, count = re.subn(r"(?m)^ExecStart=/usr/bin/meksd ", f"ExecStart={true} ", text)
    assert count == 1
    (tmp_path / SERVICE.name).write_text(text)
    for path in SOCKETS:
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / SERVICE.name


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify loads the service and both socket units without a complaint."""
    tool = _systemd_analyze()
    service = _runnable_copy(tmp_path)
    units = [str(service)] + [str(tmp_path / p.name) for p in SOCKETS]
    result = subprocess.run(
        [tool, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys or bad values: any output is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_security_is_ok(tmp_path: Path) -> None:
    """systemd-analyze security rates the service's exposure at 2.0 or below ("OK")."""
    tool = _systemd_analyze()
    service = _runnable_copy(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=20", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    score = re.search(r"Overall exposure level for meksd\.service: ([\d.]+)", result.stdout)
    assert score is not None, result.stdout + result.stderr
    assert float(score.group(1)) <= 2.0
    assert result.returncode == 0, result.stderr
