"""Every exception meksd raises on purpose, in one tree.

```
MeksdError                  base of everything below; never raised itself
├── ConfigError             the configuration is unreadable or invalid
├── UsageError              the command line is wrong
├── InputError              an input file named on the command line cannot be read
├── DataError               an input file was read but does not hold what it must
└── StoreError              the state store cannot be used for what was asked
    └── StoreBusyError      another meksd process holds the store
```

Bad *feed* input is not an exception: the normalizer returns ``Rejected`` values and
sources log and retry (see ``docs/architecture.md``). Only the command line
(``meksd.cli``) maps these exceptions to exit codes.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DataError",
    "InputError",
    "MeksdError",
    "StoreBusyError",
    "StoreError",
    "UsageError",
]


class MeksdError(Exception):
    """Base class of every error meksd raises on purpose."""


class ConfigError(MeksdError):
    """The configuration is unreadable, not TOML, or does not validate.

    ``messages`` holds one human-readable line per problem, each naming where it is
    with a ``$``-rooted path: ``expected int @ $.rooms[0].streak_timeout_s``. All
    problems found are reported at once, not just the first.
    """

    messages: list[str]
    """One line per problem, in document order where possible."""
    source: str
    """Where the configuration came from: a file path, ``<string>`` or ``<default>``."""

    def __init__(self, messages: Iterable[str], *, source: str = "<string>") -> None:
        self.messages = list(messages)
        self.source = source
        super().__init__(self.messages, source)

    def __str__(self) -> str:
        return f"{self.source}: " + "; ".join(self.messages)


class UsageError(MeksdError):
    """The command line is wrong: unknown option, missing argument, bad value."""


class InputError(MeksdError):
    """An input file named on the command line (e.g. a replay feed) cannot be read."""


class DataError(MeksdError):
    """An input file named on the command line was read but is not valid (e.g. a
    state file for ``meksd state import`` that does not decode)."""


class StoreError(MeksdError):
    """The state store cannot do what was asked: it cannot be opened, is damaged, or
    holds no state for the room named."""


class StoreBusyError(StoreError):
    """Another meksd process holds the store's lock (stop it first)."""
