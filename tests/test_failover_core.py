"""The failover rules (meksd.core.failover), as pure functions of observations and time."""

from __future__ import annotations

import pytest

from meksd.core.failover import (
    MAX_HOLDDOWN_S,
    RECORD_RESOLUTION_S,
    Policy,
    Restart,
    Selection,
    Switch,
    on_failure,
    on_finished,
    on_record,
    on_tick,
    stall_deadline,
    start,
)

POLICY = Policy(stall_s=20.0, failover_after=2)


def three() -> Selection:
    return start((True, True, True), 0.0)


def test_start_needs_a_source_and_runs_only_the_first() -> None:
    """The first source starts active; nothing else runs; no sources is an error."""
    sel = three()
    assert (sel.active, sel.running) == (0, frozenset({0}))
    with pytest.raises(ValueError):
        start((), 0.0)


def test_failures_in_a_row_fail_over_and_a_record_resets_the_count() -> None:
    """`failover_after` failures without a record between them switch to the next source."""
    sel, actions = on_failure(three(), 0, 1.0, POLICY, "live")
    assert (sel.active, actions) == (0, [])
    sel, _ = on_record(sel, 0, 2.0, POLICY)
    sel, actions = on_failure(sel, 0, 3.0, POLICY, "live")
    assert (sel.active, actions) == (0, [])  # the record in between reset the count
    sel, actions = on_failure(sel, 0, 4.0, POLICY, "live")
    assert actions == [Switch(0, 1, "failover", "2 failures in a row")]
    assert sel.active == 1 and sel.running == frozenset({0, 1})


def test_failures_of_other_sources_and_of_an_ended_stream_do_not_count() -> None:
    """A probe's failures, and any failure once the stream ended, change nothing."""
    sel = three()
    for _ in range(5):
        sel, actions = on_failure(sel, 0, 1.0, POLICY, "ended")
        assert actions == []
        sel, actions = on_failure(sel, 1, 1.0, POLICY, "live")
        assert actions == []
    assert (sel.active, sel.failures) == (0, 0)


def test_a_probe_that_delivers_is_taken_back_and_later_sources_stop() -> None:
    """A record from a preferred source makes it active again (failback)."""
    sel = three()
    for t in (1.0, 2.0, 3.0, 4.0):
        sel, _ = on_failure(sel, sel.active, t, POLICY, "live")
    assert sel.active == 2 and sel.running == frozenset({0, 1, 2})
    sel, actions = on_record(sel, 1, 100.0, POLICY)
    assert actions == [Switch(2, 1, "failback", "delivering again")]
    assert sel.active == 1 and sel.running == frozenset({0, 1})
    sel, actions = on_record(sel, 2, 101.0, POLICY)  # a late record of the stopped one
    assert (sel.active, actions) == (1, [])


def test_stall_fails_over_and_restarts_the_silent_source() -> None:
    """No record for stall_s while live: fail over, and reconnect the stalled source."""
    sel, _ = on_record(three(), 0, 5.0, POLICY)
    assert stall_deadline(sel, POLICY, "live") == 25.0
    sel, actions = on_tick(sel, 24.9, POLICY, "live")
    assert actions == []
    sel, actions = on_tick(sel, 25.0, POLICY, "live")
    assert actions == [
        Switch(0, 1, "failover", "stalled: no record for 20s"),
        Restart(0, "stalled: no record for 20s"),
    ]
    assert stall_deadline(sel, POLICY, "live") == 45.0  # the new source's own clock


def test_the_last_source_stalling_is_restarted_in_place() -> None:
    """With nowhere to fail over, a stalled source is reconnected and its clock restarts."""
    sel = start((True,), 0.0)
    sel, actions = on_tick(sel, 20.0, POLICY, "live")
    assert actions == [Restart(0, "stalled: no record for 20s")]
    assert sel.active == 0 and stall_deadline(sel, POLICY, "live") == 40.0


@pytest.mark.parametrize("live", ["paused", "ended"])
def test_no_stall_unless_live(live: str) -> None:
    """A paused or ended room's silence is not a stall."""
    sel = three()
    assert stall_deadline(sel, POLICY, live) is None  # type: ignore[arg-type]
    assert on_tick(sel, 1000.0, POLICY, live) == (sel, [])  # type: ignore[arg-type]


def test_sources_that_cannot_stall_are_not_watched() -> None:
    """A replay or simulator source (watch False) never stalls."""
    sel = start((False, True), 0.0)
    assert stall_deadline(sel, POLICY, "live") is None
    assert on_tick(sel, 1000.0, POLICY, "live")[1] == []


def test_a_finished_source_hands_over_and_never_runs_again() -> None:
    """The active source playing out fails over; finished sources are not running."""
    sel = start((False, True), 0.0)
    sel, actions = on_finished(sel, 0, 3.0, POLICY)
    assert actions == [Switch(0, 1, "failover", "feed played out")]
    assert sel.running == frozenset({1})
    sel, actions = on_record(sel, 0, 4.0, POLICY)
    assert (sel.active, actions) == (1, [])


def test_a_finished_last_source_stays_active_without_stalling() -> None:
    """A played-out last source is not restarted for silence."""
    sel = start((False,), 0.0)
    sel, actions = on_finished(sel, 0, 3.0, POLICY)
    assert actions == [] and sel.running == frozenset()
    assert stall_deadline(sel, POLICY, "live") is None


def test_a_flapping_source_is_held_down_with_growing_holddowns() -> None:
    """Short tenures in a row hold a source down: stall_s, then doubling, capped."""
    sel = start((True, True), 0.0)
    holds = []
    now = 0.0
    for _ in range(9):
        sel, _ = on_record(sel, 0, now, POLICY)  # taken back (or first) and delivering
        assert sel.active == 0
        now += 20.0
        sel, actions = on_tick(sel, now, POLICY, "live")  # stalls again at once
        assert sel.active == 1
        holds.append(sel.held_until[0] - now)
        # While held down, its records do not take it back.
        if holds[-1] > 0:
            held, actions = on_record(sel, 0, now + holds[-1] / 2, POLICY)
            assert (held.active, actions) == (1, [])
        now += holds[-1]
    assert holds[:5] == [0.0, 20.0, 40.0, 80.0, 160.0]
    assert max(holds) == MAX_HOLDDOWN_S


def test_a_long_tenure_forgives_earlier_flaps() -> None:
    """A source active for FLAP_FACTOR * stall_s or more starts again from no flaps."""
    sel = start((True, True), 0.0)
    sel, _ = on_tick(sel, 20.0, POLICY, "live")
    sel, _ = on_record(sel, 0, 21.0, POLICY)
    sel, _ = on_record(sel, 0, 200.0, POLICY)
    sel, _ = on_tick(sel, 220.0, POLICY, "live")
    assert sel.flaps[0] == 0 and sel.held_until[0] == 220.0


def test_records_move_the_stall_clock_at_most_every_resolution() -> None:
    """A record closer than RECORD_RESOLUTION_S (or 1 % of stall_s, if less) to the last
    one remembered keeps the selection as it is (the same object: no new value per
    record); a later one moves the clock, and so does any record after a failure."""
    sel, _ = on_record(three(), 0, 10.0, POLICY)
    assert sel.last_record == 10.0
    same, actions = on_record(sel, 0, 10.0 + RECORD_RESOLUTION_S / 2, POLICY)
    assert (same, actions) == (sel, []) and same is sel
    later, _ = on_record(sel, 0, 10.0 + RECORD_RESOLUTION_S, POLICY)
    assert later.last_record == 10.0 + RECORD_RESOLUTION_S
    failed, _ = on_failure(later, 0, 11.0, POLICY, "live")
    after, _ = on_record(failed, 0, 11.0 + RECORD_RESOLUTION_S / 10, POLICY)
    assert (after.failures, after.last_record) == (0, 11.0 + RECORD_RESOLUTION_S / 10)
    # A short stall_s shrinks the resolution with it: at most 1 % of it early.
    quick = Policy(stall_s=1.0, failover_after=2)
    moved, _ = on_record(sel, 0, 10.02, quick)
    assert moved.last_record == 10.02
    kept, _ = on_record(sel, 0, 10.005, quick)
    assert kept is sel
    # Never a stall seen early by more than the resolution.
    assert stall_deadline(kept, quick, "live") == pytest.approx(10.0 + 1.0)
