"""Compare-and-swap under real contention: separate processes on a local directory and on the GCS test
server, released together by a barrier each round."""

from __future__ import annotations

from shardclaim._selftest import race_counter, race_create

PROCESSES = 16


def test_exactly_one_of_16_processes_creates_each_object(shared_url: str) -> None:
    rounds = 50
    result = race_create(shared_url, processes=PROCESSES, rounds=rounds)
    assert result.winners_per_round == [1] * rounds
    assert result.losses == (PROCESSES - 1) * rounds


def test_read_modify_write_by_16_processes_loses_no_update(shared_url: str) -> None:
    result = race_counter(shared_url, processes=PROCESSES, increments=10)
    assert result.reported_successes == PROCESSES * 10
    assert result.final_value == result.reported_successes
    # The processes really overlapped: some writes were refused as stale and done again.
    assert result.conflicts > 0
