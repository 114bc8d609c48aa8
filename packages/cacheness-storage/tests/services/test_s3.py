"""The S3 blob backend against a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness.storage import (
    BlobStore,
    CacheBackendError,
    CacheConfigError,
    CacheError,
    CacheIntegrityError,
    _store,
)
from cacheness.storage.abc import BlobBackend
from cacheness.storage.backends._s3 import S3BlobBackend
from cacheness.storage.testing import BlobBackendTests

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _values_in_blobs(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Most tests here count or damage objects in the bucket: keep every value there.
    The round trip keeps the default, so a small value is shown to stay off the bucket."""
    if request.node.name != "test_round_trips_bytes_array_and_dict":
        monkeypatch.setattr(_store, "INLINE_MAX", 0)


MACHINE = Path(__file__).with_name("_machine.py")
PREFIX = "team/artifacts"
Names = Callable[..., list[str]]


def _options(endpoint: str, **more: Any) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        **more,
    }


@pytest.fixture
def store(tmp_path: Path, bucket: str, s3_env: str) -> Iterator[BlobStore]:
    with BlobStore(
        tmp_path,
        blob_backend=f"s3://{bucket}/{PREFIX}",
        blob_backend_options=_options(s3_env),
    ) as s:
        yield s


def _object_of(store: BlobStore, key: str) -> str:
    meta = store.get_metadata(key)
    assert meta is not None
    return f"{PREFIX}/{meta['content_hash'].split(':', 1)[1]}"


# ------------------------------------------------------------------ conformance


class TestS3Conformance(BlobBackendTests):
    """The public blob-backend contract, on S3."""

    @pytest.fixture
    def backend(self, tmp_path: Path, bucket: str, s3_env: str) -> Iterator[BlobBackend]:
        self._url = f"s3://{bucket}/conformance"
        self._endpoint = s3_env
        b = self.make_backend(tmp_path)
        try:
            yield b
        finally:
            b.close()

    def make_backend(self, tmp_path: Path) -> BlobBackend:
        return S3BlobBackend.from_url(self._url, **_options(self._endpoint))


# ------------------------------------------------------------------ the store on S3


def test_round_trips_bytes_array_and_dict(
    store: BlobStore, bucket: str, object_names: Names
) -> None:
    rng = np.random.default_rng(7)
    array = np.asfortranarray(rng.standard_normal((1000, 700)))  # ~5.6 MB: the streaming read path
    record = {"model": "resnet", "epochs": 12, "scores": [0.5, 0.75], "nested": {"a": None}}
    raw = rng.bytes(64 * 1024)  # incompressible and above the inline limit: an object
    keys = {
        "raw": store.put(raw, key="raw"),
        "array": store.put(array, key="array"),
        "dict": store.put(record, key="dict"),
    }
    assert store.get("raw") == raw
    got = store.get("array")
    assert isinstance(got, np.ndarray)
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.flags.f_contiguous
    np.testing.assert_array_equal(got, array)
    assert store.get("dict") == record
    # One object per large entry, named by its content hash, under the prefix; the small
    # dict lives inline in the metadata row and costs no request to the bucket.
    assert object_names(bucket, "") == sorted(_object_of(store, k) for k in ("raw", "array"))
    assert set(keys) == {"raw", "array", "dict"}


def test_large_put_goes_up_as_multipart(
    tmp_path: Path, bucket: str, s3_env: str, s3_client: Any
) -> None:
    data = os.urandom(12 * 1024 * 1024)
    opts = _options(s3_env, multipart_threshold=5 << 20, multipart_chunksize=5 << 20)
    with BlobStore(
        tmp_path, blob_backend=f"s3://{bucket}/mp", blob_backend_options=opts, compression="none"
    ) as s:
        s.put(data, key="big")
        meta = s.get_metadata("big")
        assert meta is not None
        head = s3_client.head_object(Bucket=bucket, Key="mp/" + meta["content_hash"].split(":")[1])
        assert head["ETag"].strip('"').endswith("-3")  # three parts
        assert head["ContentLength"] == len(data)
        assert s.get("big") == data


def test_identical_content_is_one_object(
    store: BlobStore, bucket: str, object_names: Names
) -> None:
    payload = {"weights": list(range(5000))}
    store.put(payload, key="run-1")
    store.put(payload, key="run-2")
    store.put({"other": True}, key="run-3")
    assert len(object_names(bucket, PREFIX + "/")) == 2
    assert _object_of(store, "run-1") == _object_of(store, "run-2")

    assert store.delete("run-1") is True
    assert store.get("run-2") == payload  # the shared object survives
    assert len(object_names(bucket, PREFIX + "/")) == 2
    assert store.delete("run-2") is True
    assert object_names(bucket, PREFIX + "/") == [_object_of(store, "run-3")]


def test_gc_frees_unreferenced_objects_only(
    store: BlobStore, bucket: str, s3_client: Any, object_names: Names
) -> None:
    store.put(b"kept" * 100, key="kept")
    orphan = f"{PREFIX}/{'ab' * 16}"
    s3_client.put_object(Bucket=bucket, Key=orphan, Body=b"x" * 1234)
    # Not ours: a deeper prefix (another store) and a name no blob can have.
    others = [f"{PREFIX}/nested/{'cd' * 16}", f"{PREFIX}/README.txt"]
    for name in others:
        s3_client.put_object(Bucket=bucket, Key=name, Body=b"?")

    report = store.verify()
    assert report.orphaned == ["ab" * 16]
    assert store.gc() == 1234
    assert object_names(bucket, "") == sorted([_object_of(store, "kept"), *others])
    assert store.get("kept") == b"kept" * 100
    assert store.verify().ok


def test_verify_finds_objects_deleted_or_overwritten_behind_the_store(
    store: BlobStore, bucket: str, s3_client: Any
) -> None:
    store.put(b"a" * 5000, key="deleted")
    store.put(b"b" * 5000, key="overwritten")
    store.put(b"c" * 5000, key="fine")
    s3_client.delete_object(Bucket=bucket, Key=_object_of(store, "deleted"))
    s3_client.put_object(Bucket=bucket, Key=_object_of(store, "overwritten"), Body=b"evil")

    report = store.verify()
    assert (report.checked, report.missing, report.corrupt) == (3, ["deleted"], ["overwritten"])
    assert not report.ok
    with pytest.raises(CacheIntegrityError):
        store.get("deleted")
    with pytest.raises(CacheIntegrityError):
        store.get("overwritten")
    assert store.get("fine") == b"c" * 5000

    repaired = store.verify(repair=True)
    assert sorted(repaired.repaired) == ["deleted", "overwritten"]
    assert store.list() == ["fine"]
    assert store.verify().ok


def test_put_file_and_open_stream_200mb_in_bounded_memory(
    tmp_path: Path, bucket: str, s3_env: str
) -> None:
    size = 200 * 1024 * 1024
    path = tmp_path / "big.bin"
    block = os.urandom(8 * 1024 * 1024)
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "wb") as f:
        for i in range(size // len(block)):
            chunk = i.to_bytes(8, "little") + block[8:]
            f.write(chunk)
            h.update(chunk)
    spec = {
        "mode": "stream",
        "root": str(tmp_path / "machine"),
        "backend": "sqlite",
        "blob_backend": f"s3://{bucket}/stream",
        "blob_backend_options": _options(s3_env),
        "path": str(path),
        "out": str(tmp_path / "out.pickle"),
    }
    (tmp_path / "spec.pickle").write_bytes(pickle.dumps(spec))
    proc = subprocess.run(
        [sys.executable, str(MACHINE), str(tmp_path / "spec.pickle")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = pickle.loads((tmp_path / "out.pickle").read_bytes())
    assert result["read_bytes"] == size
    assert result["read_hash"] == h.hexdigest()
    assert result["put_growth"] < 100 * 1024 * 1024, result
    assert result["read_growth"] < 100 * 1024 * 1024, result


def test_standard_aws_environment_alone_configures_it(
    bucket: str, s3_env: str, object_names: Names
) -> None:
    with BlobStore(backend="memory", blob_backend=f"s3://{bucket}/env-only") as s:
        s.put(b"from env", key="k")
        assert s.get("k") == b"from env"
    assert len(object_names(bucket, "env-only/")) == 1


# ------------------------------------------------------------------ typed errors


def test_missing_bucket_says_to_create_it(tmp_path: Path, s3_env: str) -> None:
    s = BlobStore(
        tmp_path, blob_backend="s3://no-such-bucket-here/x", blob_backend_options=_options(s3_env)
    )
    with s, pytest.raises(CacheConfigError) as info:
        s.put({"a": 1}, key="k")
    err = info.value
    assert "no-such-bucket-here" in str(err) and "does not exist" in str(err)
    assert "create it" in str(err)
    assert type(err.__cause__).__module__.startswith("botocore")
    with BlobStore(tmp_path, blob_backend="memory") as again:
        assert again.list() == []  # nothing was committed


def test_missing_bucket_on_direct_backend_calls(s3_env: str) -> None:
    with S3BlobBackend.from_url("s3://no-such-bucket-either/p", **_options(s3_env)) as b:
        for call in (lambda: b.get("k"), lambda: b.exists("k"), lambda: list(b.iter_keys())):
            with pytest.raises(CacheConfigError, match="does not exist"):
                call()


def test_missing_bucket_found_on_request_when_bucket_check_is_off(s3_env: str) -> None:
    opts = _options(s3_env, check_bucket=False)
    with S3BlobBackend.from_url("s3://no-such-bucket-three/p", **opts) as b:
        with pytest.raises(CacheConfigError, match="does not exist"):
            b.put("k", b"x")
        with pytest.raises(CacheConfigError, match="does not exist"):
            b.get("k")


def test_no_credentials_is_a_config_error(
    tmp_path: Path, bucket: str, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with (
        S3BlobBackend.from_url(f"s3://{bucket}/p") as b,
        pytest.raises(CacheConfigError, match="AWS_ACCESS_KEY_ID") as info,
    ):
        b.put("k", b"x")
    assert type(info.value.__cause__).__module__.startswith("botocore")


def test_unreachable_endpoint_is_a_backend_error(bucket: str) -> None:
    from botocore.config import Config

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once the socket closes
    opts = _options(f"http://127.0.0.1:{port}", client_config=Config(retries={"max_attempts": 1}))
    with (
        S3BlobBackend.from_url(f"s3://{bucket}/p", **opts) as b,
        pytest.raises(CacheBackendError, match="cannot reach") as info,
    ):
        b.get("k")
    assert not isinstance(info.value, CacheConfigError)
    assert info.value.__cause__ is not None


def test_errors_pickle_with_their_context(s3_env: str) -> None:
    with (
        S3BlobBackend.from_url("s3://no-such-bucket-four/p", **_options(s3_env)) as b,
        pytest.raises(CacheError) as info,
    ):
        b.get("k")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is type(info.value) and str(again) == str(info.value)
    assert again.backend == "s3"
