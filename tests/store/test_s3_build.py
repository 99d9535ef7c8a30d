"""The builder's promises on an object store, on the S3 test server: the helpers and checks of the GCS
versions in tests/test_build_output.py, with an ``s3://`` output. Replacing a dataset never loses the
old one, a dataset is resharded from its own chunks, and of racing builds one wins and the dataset is
whole (the build marker is an S3 create-if-absent)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from shardclaim import InputError, create_sharded_dataset
from tests.test_build_output import (
    check_race,
    failing_input,
    gcs_dataset,
    gcs_snapshot,
    race,
    read_back,
    seed_layout,
)

pytestmark = pytest.mark.s3


def test_on_s3_a_failed_overwrite_leaves_the_old_dataset_as_it_was(tmp_path: Path, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/ds"
    gcs_dataset(tmp_path, url)
    before = gcs_snapshot(url)
    src, kwargs = failing_input(tmp_path, "malformed line")
    with pytest.raises(InputError):
        create_sharded_dataset(src, url, num_shards=2, overwrite=True, **kwargs)
    assert gcs_snapshot(url) == before


def test_on_s3_resharding_a_dataset_from_its_own_chunks_keeps_every_record(
    tmp_path: Path, s3_bucket: str
) -> None:
    url = f"s3://{s3_bucket}/ds"
    lines = gcs_dataset(tmp_path, url, num_shards=4)
    master = create_sharded_dataset(f"{url}/shard_*/chunk_*.jsonl", url, num_shards=2, overwrite=True)
    assert master["total_tasks"] == len(lines)
    assert Counter(read_back(url)) == Counter(lines)
    assert seed_layout(list(gcs_snapshot(url)), 2)  # no staging objects, no marker, no old shards


def test_on_s3_racing_overwrites_one_wins_and_the_dataset_is_whole(tmp_path: Path, s3_bucket: str) -> None:
    url = f"s3://{s3_bucket}/ds"
    gcs_dataset(tmp_path, url)
    check_race(race(tmp_path, url, 0, 3, "--overwrite"), url, overwrite=True)
    assert seed_layout(list(gcs_snapshot(url)), 3)
