"""Fixtures for tests against the real services: a fresh bucket on the loopback S3 endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def s3_client(s3_env: str) -> Iterator[Any]:
    """A plain boto3 client on the test endpoint, to look at the bucket behind the store's back."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A new, empty bucket for one test."""
    name = f"cn-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def object_names(s3_client: Any) -> Callable[[str, str], list[str]]:
    """``object_names(bucket, prefix)``: every object name under ``prefix`` (paginated), sorted."""

    def names(bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            out.extend(item["Key"] for item in page.get("Contents", ()))
        return sorted(out)

    return names
