"""Compact id ranges: how every set of shards is printed (``0-12,14,16-99``)."""

from __future__ import annotations

import pytest

from shardclaim.idranges import compact, parse


def test_runs_become_ranges_and_singles_stay_single() -> None:
    assert compact([*range(13), 14, *range(16, 100)]) == "0-12,14,16-99"
    assert compact([5, 3, 4, 4, 9]) == "3-5,9"
    assert compact([]) == ""
    assert compact([7]) == "7"


def test_ranges_read_back_to_the_same_ids() -> None:
    ids = [0, 1, 2, 5, 7, 8, 9, 10, 42]
    assert parse(compact(ids)) == ids


def test_a_limit_cuts_whole_ranges_and_counts_what_it_left_out() -> None:
    ids = list(range(0, 2000, 2))  # 1,000 single ids
    text = compact(ids, limit=30)
    shown = text.split(",... ")[0]
    assert len(shown) <= 30
    assert text.endswith(f"(+{1000 - len(parse(shown))} more)")
    assert compact(ids, limit=10_000) == compact(ids)


@pytest.mark.parametrize("bad", ["a", "3-1", "-2", "1-x"])
def test_malformed_ranges_are_refused_naming_the_part(bad: str) -> None:
    with pytest.raises(ValueError, match="not an id or a range"):
        parse(bad)
