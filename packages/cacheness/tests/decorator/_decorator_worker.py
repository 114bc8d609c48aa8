"""A process calling one ``@cached`` function, for the cross-process stampede tests.

``python _decorator_worker.py CACHE_DIR RUNS_FILE SLEEP LEASE_TTL [GO_FILE]`` waits for
GO_FILE (when given), calls ``slow(21)`` and prints one JSON line. Each body run
appends one line to RUNS_FILE (O_APPEND, so concurrent writers never mix lines).
"""

from __future__ import annotations

import json
import os
import sys
import time

from cacheness import cached, cacheness


def main() -> None:
    cache_dir, runs_file, sleep_s, lease_ttl = sys.argv[1:5]
    go = sys.argv[5] if len(sys.argv) > 5 else None
    lease = None if lease_ttl == "none" else float(lease_ttl)  # "none": no cross-process lease
    with cacheness(cache_dir=cache_dir) as cache:

        @cached(cache_instance=cache, key_prefix="stampede", lease_ttl_seconds=lease)
        def slow(x: int) -> int:
            fd = os.open(runs_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
            time.sleep(float(sleep_s))
            return x * 2

        if go is not None:
            deadline = time.monotonic() + 60
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.005)
        t0 = time.monotonic()
        value = slow(21)
        print(json.dumps({"value": value, "seconds": time.monotonic() - t0, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
