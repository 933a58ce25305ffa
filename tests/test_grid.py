"""The shared instants of housekeeping timers (meksd.runtime.grid)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.runtime.grid import next_on_grid


def test_the_next_instant_is_strictly_later_and_a_multiple_of_the_step() -> None:
    assert next_on_grid(0.0, 0.25) == 0.25
    assert next_on_grid(0.1, 0.25) == 0.25
    assert next_on_grid(0.25, 0.25) == 0.5, "on an instant: the next one, never now"
    assert next_on_grid(-0.1, 0.25) == 0.0
    assert next_on_grid(12.3, 1.0) == 13.0


def test_steps_that_divide_each_other_share_their_instants_exactly() -> None:
    """The store's flush (0.25 s), the failover checks (0.25 s), the log summaries
    (1 s) and the status line (10 s) expire at the same float, in one turn of trio."""
    for after in (3.99, 1234.7501, 98765.0):
        whole = next_on_grid(after, 1.0)
        quarter = after
        while (quarter := next_on_grid(quarter, 0.25)) < whole:
            pass
        assert quarter == whole
    assert next_on_grid(99.0, 10.0) == 100.0 == next_on_grid(99.9, 0.25)


@given(
    after=st.floats(min_value=-1e6, max_value=1e7, allow_nan=False),
    step=st.sampled_from([0.001, 0.016, 0.1, 0.25, 1.0, 2.5, 10.0]),
)
def test_never_now_never_more_than_a_step_away(after: float, step: float) -> None:
    instant = next_on_grid(after, step)
    assert after < instant <= after + step * (1 + 1e-9) + 1e-9
    assert math.isclose(instant / step, round(instant / step), rel_tol=1e-12, abs_tol=1e-9)


@pytest.mark.parametrize("step", [0.0, -1.0, math.nan])
def test_a_step_must_be_positive(step: float) -> None:
    with pytest.raises(ValueError, match="step must be > 0"):
        next_on_grid(1.0, step)
