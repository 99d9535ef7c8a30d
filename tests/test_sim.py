"""The deterministic simulation of the lease protocol: it passes on the real code, replays exactly, and
catches each planted bug within a stated number of schedules."""

from __future__ import annotations

import pytest

from shardclaim.testing.sim import MUTATIONS, Violation, main, run_schedule, run_schedules

#: Schedules in the suite: about a minute on these 2 cores (bench/sim_speed.py measures the rate).
SUITE_SCHEDULES = 3000
#: Each planted bug must be reported within this many schedules. Most are within the first 10; a split
#: that takes reserved chunks needs a holder that reserved and an idle stealer at once (first at 73).
CATCH_WITHIN = {"split-takes-reserved": 150}


def test_three_thousand_seeded_schedules_with_faults_keep_every_invariant() -> None:
    violation = run_schedules(SUITE_SCHEDULES, seed=0)
    assert violation is None, violation.report() if violation else ""


def test_a_schedule_replays_exactly_from_its_seed() -> None:
    assert run_schedule(42) == run_schedule(42)
    assert run_schedule(42) != run_schedule(43)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_planted_bug_is_caught(mutation: str) -> None:
    budget = CATCH_WITHIN.get(mutation, 20)
    violation = run_schedules(budget, seed=0, mutation=mutation)
    assert isinstance(violation, Violation), f"{mutation} was not caught in {budget} schedules"
    assert violation.trace  # a readable trace comes with it


def test_a_violation_prints_its_seed_its_trace_and_how_to_replay(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--schedules", "5", "--mutation", "release-spends-attempt"]) == 1
    out, err = capsys.readouterr()
    assert "VIOLATION (seed 0): attempts:" in out
    assert "release" in out
    assert "--schedules 1 --seed 0 --trace" in err


def test_the_command_reports_schedules_per_second(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--schedules", "3", "--seed", "7"]) == 0
    assert "3 schedules, no violation" in capsys.readouterr().out
