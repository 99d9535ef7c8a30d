"""Guards on the GCS test server itself.

Every GCS correctness test in this suite is worth something only while fake-gcs-server refuses a write
whose precondition does not hold. These tests talk to it with the official client alone (no shardclaim
code), so they fail if a server upgrade stops enforcing what our writes rely on.
"""

from __future__ import annotations

import pytest
from google.api_core.exceptions import PreconditionFailed

pytestmark = pytest.mark.gcs


def test_server_refuses_a_stale_generation_on_multipart_upload(gcs_bucket: str) -> None:
    from shardclaim.store.gcs import default_client

    bucket = default_client().bucket(gcs_bucket)
    blob = bucket.blob("guard")
    blob.upload_from_string(b"v1", if_generation_match=0, retry=None)
    g1 = blob.generation
    blob.upload_from_string(b"v2", if_generation_match=g1, retry=None)
    g2 = blob.generation
    assert g2 != g1
    with pytest.raises(PreconditionFailed):
        bucket.blob("guard").upload_from_string(b"stale", if_generation_match=g1, retry=None)
    assert bucket.blob("guard").download_as_bytes(retry=None) == b"v2"


def test_server_refuses_create_if_absent_on_an_existing_object(gcs_bucket: str) -> None:
    from shardclaim.store.gcs import default_client

    bucket = default_client().bucket(gcs_bucket)
    bucket.blob("guard").upload_from_string(b"first", if_generation_match=0, retry=None)
    with pytest.raises(PreconditionFailed):
        bucket.blob("guard").upload_from_string(b"second", if_generation_match=0, retry=None)
    assert bucket.blob("guard").download_as_bytes(retry=None) == b"first"


def test_server_refuses_a_generation_on_a_missing_object(gcs_bucket: str) -> None:
    from shardclaim.store.gcs import default_client

    bucket = default_client().bucket(gcs_bucket)
    with pytest.raises(PreconditionFailed):
        bucket.blob("never").upload_from_string(b"x", if_generation_match=42, retry=None)
