"""Physical reference points measured in the same run: what the machine itself can do.

memcpy of the array, page-cache write and read of the same bytes (into fresh
memory and into a preallocated buffer), one hash pass, and raw codec
throughput on incompressible and compressible data. A cache's large put/get
can be judged against these rather than against absolute numbers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from benchmarks._collect import Collector
from benchmarks._core import MB, Row, Workdir, rotate


def run_reference(plan: Any, work: Workdir) -> list[Row]:
    import numpy as np

    coll = Collector("reference")
    n = plan.array_mb * 2**20 // 8
    random_arr = np.random.default_rng(3).standard_normal(n)
    smooth_arr = np.arange(n, dtype=np.float64)
    nbytes = random_arr.nbytes
    wl_mem = f"{plan.array_mb} MiB through memory and page cache"

    with work.fresh("reference") as path:
        target = str(path / "blob")
        dst = np.empty_like(random_arr)
        buf = bytearray(nbytes)

        def memcpy() -> None:
            np.copyto(dst, random_arr)

        def write() -> None:
            with open(target, "wb") as fh:
                fh.write(memoryview(random_arr).cast("B"))

        def unlink() -> None:
            # Writes go to a new file, like a cache's put: overwriting in place
            # would time the truncation of the old pages too.
            if os.path.exists(target):
                os.unlink(target)

        def read_fresh() -> None:
            with open(target, "rb") as fh:
                data = fh.read()
            assert len(data) == nbytes

        def read_into() -> None:
            with open(target, "rb", buffering=0) as fh:
                view = memoryview(buf)
                got = 0
                while got < nbytes:
                    k = fh.readinto(view[got:])
                    if not k:
                        break
                    got += k
            assert got == nbytes

        def xxh3() -> None:
            import xxhash

            xxhash.xxh3_128(memoryview(random_arr).cast("B")).digest()

        ops: dict[str, Callable[[], None]] = {
            "memcpy (preallocated)": memcpy,
            "page-cache write": write,
            "page-cache read, fresh memory": read_fresh,
            "page-cache read into buffer": read_into,
            "xxh3_128 hash": xxh3,
        }
        for op in ops.values():  # first touch of every buffer, outside the timing
            op()
        for rep in range(plan.reps):
            for name in rotate(list(ops), rep):
                if name == "page-cache write":
                    unlink()
                t0 = time.perf_counter()
                ops[name]()
                elapsed = time.perf_counter() - t0
                coll.add(
                    wl_mem, "throughput", "MB/s", "higher", name, "reference", nbytes / MB / elapsed
                )
        if os.path.exists(target):
            os.unlink(target)

    # Codec throughput hardly depends on size past a few MB; 32 MiB keeps zstd's
    # single-threaded passes from dominating the run.
    codec_mb = min(plan.array_mb, 32)
    cut = codec_mb * 2**20 // 8
    for label, arr in (("random normal", random_arr[:cut]), ("np.arange", smooth_arr[:cut])):
        _codecs(plan, coll, f"{codec_mb} MiB float64 {label}: raw codecs", arr)
    return coll.rows()


def _codecs(plan: Any, coll: Collector, workload: str, arr: Any) -> None:
    codecs = _codec_table()
    raw = memoryview(arr).cast("B")
    nbytes = arr.nbytes
    for rep in range(plan.reps):
        for name in rotate(list(codecs), rep):
            compress, decompress, note = codecs[name]
            try:
                t0 = time.perf_counter()
                packed = compress(raw)
                t_c = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = decompress(packed)
                t_d = time.perf_counter() - t0
                coll.check(workload, name, bytes(out) == raw.tobytes() if rep == 0 else True)
            except Exception as exc:
                coll.fail(workload, name, "reference", exc)
                continue
            coll.add(
                workload, "compress", "MB/s", "higher", name, "reference", nbytes / MB / t_c, note
            )
            coll.add(workload, "decompress", "MB/s", "higher", name, "reference", nbytes / MB / t_d)
            coll.add(workload, "ratio", "x", "higher", name, "reference", nbytes / len(packed))


def _codec_table() -> dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], str]]:
    table: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], str]] = {}
    try:
        import blosc2

        def b_c(data: Any) -> Any:
            return blosc2.compress2(
                data,
                typesize=8,
                codec=blosc2.Codec.LZ4,
                filters=[blosc2.Filter.SHUFFLE],
                nthreads=2,
            )

        def b_d(data: Any) -> Any:
            return blosc2.decompress2(data, nthreads=2)

        table["blosc2 lz4+shuffle"] = (b_c, b_d, "typesize 8, 2 threads")
    except ImportError:
        pass
    try:
        import lz4.frame

        table["lz4.frame"] = (lz4.frame.compress, lz4.frame.decompress, "default level")
    except ImportError:
        pass
    try:
        import zstandard

        def z_c(data: Any) -> Any:
            return zstandard.ZstdCompressor(level=3).compress(data)

        def z_d(data: Any) -> Any:
            return zstandard.ZstdDecompressor().decompress(data)

        table["zstd level 3"] = (z_c, z_d, "one thread")
    except ImportError:
        pass
    return table
