"""A separate process for the custom-metadata tests.

``python _cm_worker.py CACHE_DIR BACKEND put N TAG`` puts N entries with custom
metadata; ``... invalidate KEY`` removes one entry without importing any model.
Prints one JSON line.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from cacheness import cacheness


def main() -> None:
    cache_dir, backend, action = sys.argv[1:4]
    out: object = None
    with cacheness(cache_dir=cache_dir, metadata_backend=backend) as cache:
        if action == "put":
            spec = importlib.util.spec_from_file_location(
                "cm_models", Path(__file__).with_name("_models.py")
            )
            assert spec is not None and spec.loader is not None
            models = importlib.util.module_from_spec(spec)
            sys.modules["cm_models"] = models  # annotations resolve through sys.modules
            spec.loader.exec_module(models)
            n, tag = int(sys.argv[4]), sys.argv[5]
            keys = []
            for i in range(n):
                exp = models.MLExperiment(model_type=tag, accuracy=i / n, run_name=f"{tag}-{i}")
                ds = models.Dataset(name=f"{tag}-data", rows=i)
                keys.append(
                    cache.put(
                        [tag, i],
                        custom_metadata={"ml_experiments": exp, "datasets": ds},
                        worker=tag,
                        i=i,
                    )
                )
            out = keys
        elif action == "invalidate":
            out = cache.invalidate(cache_key=sys.argv[4])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
