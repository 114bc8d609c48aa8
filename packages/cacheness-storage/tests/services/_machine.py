"""One "machine" of a team: a separate process with its own BlobStore on shared services.

Run as ``python _machine.py SPEC.pickle``; the spec (a dict) names the store (``root``,
``backend``, ``blob_backend``), a ``mode`` and its arguments. The result is
pickled to ``spec["out"]``. A ``barrier`` directory and ``parties`` count make
every machine finish opening its store before any starts the measured work,
so the work really overlaps.
"""

from __future__ import annotations

import os
import pickle
import resource
import sys
import time
from pathlib import Path
from typing import Any

from cacheness.storage import BlobStore, CacheError


def _wait_for_everyone(spec: dict[str, Any], name: str) -> None:
    barrier = spec.get("barrier")
    if not barrier:
        return
    folder = Path(barrier)
    (folder / f"ready-{name}").touch()
    deadline = time.monotonic() + 60
    while len(ready := list(folder.glob("ready-*"))) < spec["parties"]:
        if time.monotonic() > deadline:
            raise TimeoutError("the other machines never became ready")
        time.sleep(0.005)
    # Everyone derives the same start time from the files, then spins to it:
    # polling alone would let the machines start milliseconds apart.
    start = max(p.stat().st_mtime for p in ready) + 0.2
    while time.time() < start:
        pass


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run(spec: dict[str, Any]) -> Any:
    name = spec.get("name", "m")
    if spec["mode"] == "open":
        return _open_fresh(spec, name)
    with BlobStore(
        spec["root"],
        backend=spec["backend"],
        blob_backend=spec["blob_backend"],
        blob_backend_options=spec.get("blob_backend_options"),
    ) as store:
        store.exists("warm-up")  # opens the database connection and the S3 client
        mode = spec["mode"]
        if mode == "put":
            _wait_for_everyone(spec, name)
            return [store.put(value, key=key) for key, value in spec["items"]]
        if mode == "read":
            return {
                "values": {key: store.get(key) for key in spec["keys"]},
                "metadata": {key: store.get_metadata(key) for key in spec["keys"]},
                "list": store.list(),
            }
        if mode == "race":
            return _race(store, spec, name)
        if mode == "stream":
            return _stream(store, spec)
        raise ValueError(f"unknown mode {mode!r}")


def _open_fresh(spec: dict[str, Any], name: str) -> int:
    """Open the metadata backend at the same moment as the others; count the lock rows we see."""
    import sqlalchemy as sa
    from cacheness.storage.backends import SqlAlchemyMetadataBackend

    engine = sa.create_engine(spec["backend"])
    try:
        engine.connect().close()  # connect before the start line, so the opens really collide
        _wait_for_everyone(spec, name)
        SqlAlchemyMetadataBackend(engine).close()
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM cacheness_lock")).scalar_one())
    finally:
        engine.dispose()


def _race(store: BlobStore, spec: dict[str, Any], name: str) -> dict[str, Any]:
    """Put, read back and delete the same few contents the other machine is churning."""
    contents = [c.encode() * 200 for c in spec["contents"]]
    key = f"{name}-key"
    failures: list[str] = []
    _wait_for_everyone(spec, name)
    for i in range(spec["rounds"]):
        content = contents[i % len(contents)]
        store.put(content, key=key)
        try:
            got = store.get(key)
            if got != content:
                failures.append(f"round {i}: read back different bytes")
        except CacheError as exc:
            failures.append(f"round {i}: {type(exc).__name__}: {exc}")
        store.delete(key)
    return {"failures": failures}


def _stream(store: BlobStore, spec: dict[str, Any]) -> dict[str, Any]:
    """put_file and open of a big file, reporting how much the peak RSS grew."""
    import xxhash

    store.put(b"warm" * 1000, key="warm")  # client, connection pool, first-request buffers
    base = _maxrss_bytes()
    key = store.put_file(spec["path"], key="big")
    after_put = _maxrss_bytes()
    h = xxhash.xxh3_128()
    n = 0
    with store.open(key) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    after_read = _maxrss_bytes()
    return {
        "put_growth": after_put - base,
        "read_growth": after_read - after_put,
        "read_bytes": n,
        "read_hash": h.hexdigest(),
    }


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        spec = pickle.load(f)
    result = run(spec)
    tmp = spec["out"] + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.replace(tmp, spec["out"])


if __name__ == "__main__":
    main()
