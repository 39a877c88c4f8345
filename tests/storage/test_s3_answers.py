"""put_if_absent against the answers real S3 servers give to a conditional PUT, over HTTP.

moto answers as AWS does for an existing key (412 with Condition: If-None-Match). MinIO's 412 lacks the
Condition field and AWS can answer 409 ConditionalRequestConflict while another conditional write to the
key is in flight; tests/storage/s3.py's AnswerProxy gives those answers in front of moto, so s3fs and
botocore parse the very bytes those servers send.
"""
from __future__ import annotations

import uuid

import pytest

from layerloop.storage.fsutil import put_if_absent

from .s3 import BUCKET, AnswerProxy


def _fs(url: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=url, skip_instance_cache=True)


def _key() -> str:
    return f"{BUCKET}/answers/{uuid.uuid4().hex}"


def test_moto_existing_key_means_false(s3_server):
    fs, key = _fs(s3_server.url), _key()
    assert put_if_absent(fs, key, b"first") and not put_if_absent(fs, key, b"second")
    assert fs.cat_file(key) == b"first"


def test_minio_412_without_condition_means_exists(s3_server):
    with AnswerProxy(s3_server.url, "minio") as proxy:
        fs, key = _fs(proxy.url), _key()
        assert put_if_absent(fs, key, b"first")
        with pytest.raises(OSError) as raw:  # what s3fs itself makes of MinIO's answer: no FileExistsError
            with fs.open(key, "xb") as f:
                f.write(b"x")
        assert not isinstance(raw.value, FileExistsError)
        assert not put_if_absent(fs, key, b"second")
        assert fs.cat_file(key) == b"first"


def test_aws_409_conflict_is_retried(s3_server):
    with AnswerProxy(s3_server.url, "aws409", conflicts=2) as proxy:
        fs, key = _fs(proxy.url), _key()
        assert put_if_absent(fs, key, b"first") and proxy.served_409 == 2
        assert not put_if_absent(fs, key, b"second") and fs.cat_file(key) == b"first"


def test_a_conflict_that_never_settles_is_raised(s3_server):
    with AnswerProxy(s3_server.url, "aws409", conflicts=100) as proxy:
        with pytest.raises(OSError, match="ConditionalRequestConflict"):
            put_if_absent(_fs(proxy.url), _key(), b"x")
