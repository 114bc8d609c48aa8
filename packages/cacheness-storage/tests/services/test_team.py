"""The team setup: machines (separate processes) sharing one PostgreSQL database and one bucket."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cacheness.storage import BlobStore, _store

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _values_in_blobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests count objects in the bucket: keep every value there (values
    small enough for the metadata row are covered by test_inline.py)."""
    monkeypatch.setattr(_store, "INLINE_MAX", 0)


MACHINE = Path(__file__).with_name("_machine.py")
PREFIX = "shared"
Names = Callable[..., list[str]]


def _spec(tmp_path: Path, name: str, postgres_url: str, bucket: str, **more: Any) -> dict[str, Any]:
    return {
        "name": name,
        "root": str(tmp_path / f"machine-{name}"),
        "backend": postgres_url,
        "blob_backend": f"s3://{bucket}/{PREFIX}",
        "out": str(tmp_path / f"out-{name}.pickle"),
        **more,
    }


def _run_machines(tmp_path: Path, specs: list[dict[str, Any]]) -> list[Any]:
    """Start every machine at once, wait for all, return their results (or fail with stderr)."""
    if len(specs) > 1:
        barrier = tmp_path / f"barrier-{specs[0]['name']}-{len(list(tmp_path.glob('barrier-*')))}"
        barrier.mkdir()
        for spec in specs:
            spec.update(barrier=str(barrier), parties=len(specs))
    procs = []
    for spec in specs:
        spec_path = tmp_path / f"spec-{spec['name']}.pickle"
        spec_path.write_bytes(pickle.dumps(spec))
        Path(spec["out"]).unlink(missing_ok=True)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(MACHINE), str(spec_path)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for spec, proc in zip(specs, procs, strict=True):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"machine {spec['name']} failed:\n{err}"
        results.append(pickle.loads(Path(spec["out"]).read_bytes()))
    return results


@pytest.fixture
def local_store(tmp_path: Path, postgres_url: str, bucket: str, s3_env: str) -> Any:
    """This test process as one more machine, opened when a test asks for it."""
    stores: list[BlobStore] = []

    def open_store() -> BlobStore:
        s = BlobStore(
            tmp_path / "local", backend=postgres_url, blob_backend=f"s3://{bucket}/{PREFIX}"
        )
        stores.append(s)
        return s

    yield open_store
    for s in stores:
        s.close()


def test_machines_opening_a_fresh_database_at_once_all_get_the_write_lock(
    tmp_path: Path, postgres_server_url: str
) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_server_url)
    try:
        for attempt in range(2):
            schema = f"fresh_{uuid.uuid4().hex[:12]}"
            with engine.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            url = f"{postgres_server_url}{'&' if '?' in postgres_server_url else '?'}"
            url += f"options=-csearch_path%3D{schema}"
            try:
                # Each machine counts the lock rows right after its backend
                # opened: with none, its write_lock would serialise nothing.
                specs = [
                    _spec(tmp_path, f"r{attempt}m{i}", url, "unused", mode="open") for i in range(4)
                ]
                assert _run_machines(tmp_path, specs) == [1, 1, 1, 1]
            finally:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        engine.dispose()


def test_what_one_machine_writes_another_reads(
    tmp_path: Path, postgres_url: str, bucket: str, s3_env: str, local_store: Any
) -> None:
    array = np.arange(60_000, dtype=np.int32).reshape(300, 200)
    items = [
        ("report", {"accuracy": 0.93, "labels": ["cat", "dog"]}),
        ("weights", array),
        ("raw", b"\x01\x02" * 40_000),
    ]
    (keys,) = _run_machines(
        tmp_path, [_spec(tmp_path, "a", postgres_url, bucket, mode="put", items=items)]
    )
    assert keys == ["report", "weights", "raw"]

    (seen,) = _run_machines(
        tmp_path, [_spec(tmp_path, "b", postgres_url, bucket, mode="read", keys=keys)]
    )
    assert seen["list"] == sorted(keys)
    assert seen["values"]["report"] == items[0][1]
    np.testing.assert_array_equal(seen["values"]["weights"], array)
    assert seen["values"]["weights"].dtype == np.int32
    assert seen["values"]["raw"] == items[2][1]

    here = local_store()
    for key in keys:
        meta = here.get_metadata(key)
        assert meta is not None
        assert meta["content_hash"] == seen["metadata"][key]["content_hash"]
    assert here.verify().ok


def test_concurrent_puts_of_the_same_content_keep_one_object(
    tmp_path: Path,
    postgres_url: str,
    bucket: str,
    s3_env: str,
    local_store: Any,
    object_names: Names,
) -> None:
    # Incompressible, so each is a blob object rather than an inline value.
    contents = [random.Random(i).randbytes(300_000) for i in range(5)]
    specs = [
        _spec(
            tmp_path,
            name,
            postgres_url,
            bucket,
            mode="put",
            items=[(f"{name}-{i}", c) for i, c in enumerate(contents)]
            + [(f"shared-{i}", c) for i, c in enumerate(contents)],
        )
        for name in ("a", "b")
    ]
    _run_machines(tmp_path, specs)

    assert len(object_names(bucket, PREFIX + "/")) == len(contents)
    here = local_store()
    assert len(here.list()) == 3 * len(contents)
    for i, content in enumerate(contents):
        for key in (f"a-{i}", f"b-{i}", f"shared-{i}"):
            assert here.get(key) == content
    assert here.verify().ok


def test_delete_racing_a_put_of_the_same_content_never_loses_a_blob(
    tmp_path: Path,
    postgres_url: str,
    bucket: str,
    s3_env: str,
    local_store: Any,
    object_names: Names,
) -> None:
    contents = ["alpha", "beta", "gamma"]
    specs = [
        _spec(tmp_path, name, postgres_url, bucket, mode="race", contents=contents, rounds=40)
        for name in ("a", "b")
    ]
    results = _run_machines(tmp_path, specs)

    assert [r["failures"] for r in results] == [[], []]
    here = local_store()
    assert here.list() == []
    report = here.verify()
    assert report.ok, report
    assert object_names(bucket, PREFIX + "/") == []  # every blob freed with its last key
