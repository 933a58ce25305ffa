"""Suite-wide fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test (and every daemon it starts) gets its own default store directory.

    meksd stores room states under ``$STATE_DIRECTORY`` or ``$XDG_STATE_HOME`` by
    default; without this, tests would share (and lock) the user's real store.
    """
    state = tmp_path_factory.mktemp("state")
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state
