"""Run cache operations in a separate process for the multi-process tests.

``python _cache_worker.py CACHE_DIR BACKEND ACTION ARG`` prints one JSON line.
"""

from __future__ import annotations

import json
import sys

from cacheness import cacheness


def main() -> None:
    cache_dir, backend, action, arg = sys.argv[1:5]
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    out: object = None
    with cacheness(cache_dir=cache_dir, metadata_backend=backend, **options) as cache:
        if action == "traffic":
            # arg = worker id: 20 puts of its own keys, 20 hits, 10 misses.
            for i in range(20):
                cache.put(i, worker=arg, i=i)
            for i in range(20):
                assert cache.get(worker=arg, i=i) == i
            for i in range(10):
                assert cache.get(worker=arg, i=1000 + i) is None
        elif action == "fill":
            for i in range(int(arg)):
                cache.put(b"x" * 100, worker=sys.argv[6] if len(sys.argv) > 6 else "w", i=i)
        elif action == "put":
            cache.put(arg, x=1)
        elif action == "invalidate":
            out = cache.invalidate(x=1)
        elif action == "lease":
            out = cache._acquire_lease(arg, 60)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
