"""Strict primitive structure hooks for cattrs, shared by config and persisted state.

cattrs converts rather than validates by default (``"false"`` becomes ``True``,
``1.9`` becomes ``1``). These hooks accept only the JSON/TOML type asked for — an int
where an int is wanted (never a bool), an int or finite float for a float — and raise
:class:`Invalid`, whose message ``transform_error``-style formatters turn into
``expected int @ $.path``.
"""

from __future__ import annotations

import math

from cattrs import Converter


class Invalid(ValueError):
    """A value of the wrong type or shape; the message says what was expected."""


def strict_int(obj: object, _: type) -> int:
    if type(obj) is not int:
        raise Invalid("expected int")
    return obj


def strict_float(obj: object, _: type) -> float:
    if type(obj) is int:
        return float(obj)
    if type(obj) is not float:
        raise Invalid("expected float")
    if not math.isfinite(obj):
        raise Invalid("expected a finite float")
    return obj


def strict_bool(obj: object, _: type) -> bool:
    if type(obj) is not bool:
        raise Invalid("expected bool")
    return obj


def strict_str(obj: object, _: type) -> str:
    if type(obj) is not str:
        raise Invalid("expected string")
    return obj


def register_strict_primitives(conv: Converter) -> None:
    """Make ``conv`` refuse anything but the exact primitive type asked for."""
    conv.register_structure_hook(int, strict_int)
    conv.register_structure_hook(float, strict_float)
    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook(str, strict_str)
