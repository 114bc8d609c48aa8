"""put_file and open stream: memory does not grow with the file.

The measurement runs in a fresh interpreter, so the high-water mark of its
resident set (``ru_maxrss``) belongs to this transfer alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

LIMIT_MB = 64

SCRIPT = """
import hashlib, json, os, resource, sys
from cacheness.storage import BlobStore

size, root, src = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(src, "wb") as f:  # a real file, written in pieces, with varying content
    block = os.urandom(1 << 20)
    for i in range(size >> 20):
        f.write(block[i % 256:] + block[: i % 256])
expected = hashlib.sha256()
with open(src, "rb") as f:
    while chunk := f.read(1 << 20):
        expected.update(chunk)

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

with BlobStore(root, hash_algorithm="sha256") as store:
    store.put(b"warm-up", key="w")  # import and open everything before measuring
    with store.open("w") as f:
        f.read()
    base = peak_mb()
    key = store.put_file(src, key="big")
    after_put = peak_mb()
    got = hashlib.sha256()
    n = 0
    with store.open("big") as f:
        while chunk := f.read(1 << 20):
            got.update(chunk)
            n += len(chunk)
    after_open = peak_mb()
    meta = store.get_metadata("big")
print(json.dumps({"base": base, "put": after_put - base, "open": after_open - base,
                  "n": n, "same": got.hexdigest() == expected.hexdigest(),
                  "hash": meta["content_hash"] == "sha256:" + expected.hexdigest()}))
"""


def _transfer(run_python: Any, tmp_path: Path, size: int) -> dict[str, Any]:
    proc = run_python(SCRIPT, str(size), str(tmp_path / "store"), str(tmp_path / "src.bin"))
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    assert result["same"] and result["hash"] and result["n"] == size
    return result


def test_stream_256mb_in_bounded_memory(run_python: Any, tmp_path: Path) -> None:
    result = _transfer(run_python, tmp_path, 256 << 20)
    assert result["put"] < LIMIT_MB, result
    assert result["open"] < LIMIT_MB, result


@pytest.mark.slow
def test_stream_2gb_in_bounded_memory(run_python: Any, tmp_path: Path) -> None:
    result = _transfer(run_python, tmp_path, 2 << 30)
    assert result["put"] < LIMIT_MB, result
    assert result["open"] < LIMIT_MB, result
