"""The pure core stays pure: model/ and core/ import only what they may."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import meksd

PACKAGE = Path(meksd.__file__).parent
ALLOWED_THIRD_PARTY = {"attrs", "cattrs", "immutables", "orjson"}
"""orjson: a pure codec (no I/O, no clock), there for speed; core keeps the stdlib's
reading and writing as the fallback for what orjson refuses (docs/architecture.md)."""
ALLOWED_OWN = ("meksd.model", "meksd.core")
FORBIDDEN_STDLIB = {"logging", "time", "asyncio", "threading", "socket", "subprocess"}
"""Standard modules that mean I/O, logging or a clock: the shell's business."""
PURE_MODULES = sorted(
    path for layer in ("model", "core") for path in (PACKAGE / layer).rglob("*.py")
)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names), with its line number."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def allowed(name: str) -> bool:
    top = name.split(".")[0]
    if top in FORBIDDEN_STDLIB:
        return False
    if top == "__future__" or top in sys.stdlib_module_names:
        return True
    if top in ALLOWED_THIRD_PARTY:
        return True
    return any(name == own or name.startswith(own + ".") for own in ALLOWED_OWN)


def test_there_are_modules_to_check() -> None:
    """The layering check finds the model and core modules it guards."""
    names = {path.name for path in PURE_MODULES}
    assert {"events.py", "state.py", "normalize.py", "reduce.py"} <= names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_pure_layers_import_only_stdlib_and_pure_libraries(path: Path) -> None:
    """A model/core module imports only pure stdlib, attrs, cattrs, immutables, orjson,
    model, core."""
    bad = [f"line {line}: {name}" for line, name in imported_modules(path) if not allowed(name)]
    assert not bad, f"{path.relative_to(PACKAGE)} imports outside its layer: {bad}"


def test_the_check_catches_forbidden_imports() -> None:
    """The checker flags trio, loguru, logging, clocks and the runtime layer."""
    for name in ("trio", "msgpack", "loguru", "meksd.runtime.hub", "httpx", "logging", "time"):
        assert not allowed(name)
    for name in ("json", "collections.abc", "attrs", "immutables", "meksd.model.state"):
        assert allowed(name)
