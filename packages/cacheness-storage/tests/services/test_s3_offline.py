"""The S3 backend's configuration, which needs no S3 endpoint (nor, to import, boto3)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from cacheness.storage import BlobStore, CacheConfigError, CacheKeyError
from cacheness.storage.backends._s3 import S3BlobBackend

# The s3 extra is optional: these build real (offline) clients, so they need boto3.
# The storage_only session runs without it; the first test covers that case.
needs_boto3 = pytest.mark.skipif(
    importlib.util.find_spec("boto3") is None, reason="boto3 is not installed (the s3 extra)"
)


def test_imports_and_registers_without_boto3_and_says_how_to_install_it() -> None:
    code = """
import sys
sys.modules["boto3"] = None  # as if it were not installed
from cacheness.storage import BlobStore, CacheConfigError, get_plugin_manager
assert "s3" in get_plugin_manager().blob_backends()
try:
    BlobStore(backend="memory", blob_backend="s3://bucket/prefix")
except CacheConfigError as exc:
    print(exc)
else:
    raise SystemExit("no error")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'cacheness-storage[s3]'" in proc.stdout


@needs_boto3
def test_url_and_options_are_parsed_without_network() -> None:
    # An endpoint nobody serves: construction must not touch it.
    b = S3BlobBackend.from_url(
        "s3://my-bucket/team/artifacts/?region=eu-west-1&max_concurrency=2",
        endpoint_url="http://127.0.0.1:9",
        max_concurrency=3,
    )
    with b:
        assert (b.bucket, b.prefix, b.region) == ("my-bucket", "team/artifacts", "eu-west-1")
        assert b.max_concurrency == 3  # keyword options win over the query string
        assert b.object_key("0abc") == "team/artifacts/0abc"
    root = S3BlobBackend.from_url("s3://my-bucket")
    with root:
        assert root.object_key("0abc") == "0abc"


@needs_boto3
@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("s3://", {}, "not an S3 URL"),
        ("s3://b/p", {"endpoint": "http://x"}, "endpoint_url"),
        ("s3://b/p", {"multipart_chunksize": 1024}, "5 MiB"),
        ("s3://b/p", {"addressing_style": "sideways"}, "addressing_style"),
        ("s3://b/p", {"region": "eu-west-1", "region_name": "us-east-1"}, "two regions"),
    ],
)
def test_bad_configuration_is_a_config_error(
    url: str, options: dict[str, object], match: str
) -> None:
    with pytest.raises(CacheConfigError, match=match):
        S3BlobBackend.from_url(url, **options)


@needs_boto3
def test_bad_option_through_the_store_changes_nothing(tmp_path: object) -> None:
    with pytest.raises(CacheConfigError, match="valid: endpoint_url"):
        BlobStore(backend="memory", blob_backend="s3://b/p", blob_backend_options={"endpoint": "x"})


@needs_boto3
@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "A", "x\x00"])
def test_unsafe_blob_names_are_refused(bad: str) -> None:
    with S3BlobBackend("b", "p") as b, pytest.raises(CacheKeyError):
        b.put(bad, b"x")
