"""The nemesis schedule is a pure function of its seed, and covers every fault kind."""

from __future__ import annotations

from tests.chaos.nemesis import KINDS, make_schedule


def test_same_seed_same_schedule_and_other_seed_differs() -> None:
    """A run replays from its seed: the schedule (times, kinds, holds, parameters) is equal
    for equal seeds and differs for another seed."""
    assert make_schedule(3, 300) == make_schedule(3, 300)
    assert make_schedule(3, 300) != make_schedule(4, 300)


def test_every_kind_is_scheduled_early_and_faults_stay_inside_the_duration() -> None:
    """The first faults are one of each kind (so even a short run uses them all), every
    fault starts before the duration ends, and a 30-minute soak has over 200 faults."""
    schedule = make_schedule(11, 180)
    assert {f.kind for f in schedule[: len(KINDS)]} == set(KINDS)
    assert all(0 < f.at < 180 for f in schedule)
    assert len(make_schedule(11, 1800)) > 200
