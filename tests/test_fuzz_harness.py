"""The atheris harness in fuzz/ still runs: its seeds replay cleanly without atheris."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import PROPERTY

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("normalize_fuzz", FUZZ / "normalize_fuzz.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS = harness()


def test_seed_corpus_replays() -> None:
    """Every seed in fuzz/corpus goes through the harness's check (there are seeds)."""
    assert HARNESS.replay([str(FUZZ / "corpus")]) >= 10


@PROPERTY
@given(st.binary(max_size=300))
def test_harness_input_never_fails(data: bytes) -> None:
    """Random inputs, in the harness's layout, never trip its check."""
    HARNESS.one_input(data)
