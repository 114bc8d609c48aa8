"""``python -m benchmarks``: run the workload groups, write JSON and Markdown."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks._core import Row, Workdir, add_ratios, pin_malloc, status_row

logger = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "latest.json"

# group name -> (module, function); run in this order.
GROUPS: dict[str, tuple[str, str]] = {
    "reference": ("benchmarks.reference", "run_reference"),
    "small": ("benchmarks.workloads", "run_small"),
    "decorator": ("benchmarks.workloads", "run_decorator"),
    "arrays": ("benchmarks.workloads", "run_arrays"),
    "dataframe": ("benchmarks.workloads", "run_dataframe"),
    "hashing": ("benchmarks.workloads", "run_hashing"),
    "concurrency": ("benchmarks._concurrency", "run_concurrency"),
    "sql": ("benchmarks.workloads", "run_sql"),
    "import": ("benchmarks.workloads", "run_import"),
    # Last: it leaves big stores whose deletion is left to a background process.
    "latency": ("benchmarks.workloads", "run_latency"),
}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "cacheness",
        "cacheness-storage",
        "diskcache",
        "joblib",
        "cachier",
        "numpy",
        "pandas",
        "pyarrow",
        "blosc2",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "absent"
    return out


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="cacheness beside diskcache, joblib and cachier, in one run, with ratios.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repetitions (< 1 min)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GROUP",
        help=f"run only these groups (repeatable or comma-separated): {', '.join(GROUPS)}",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 3)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a size of the plan, e.g. --set small_ops=50 --set array_mb=4",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the full table here (default: next to the JSON)",
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the README summary instead of the full table"
    )
    parser.add_argument(
        "--tmp-dir", default=None, help="base directory for every system's files (one disk)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    only = [g.strip() for item in args.only for g in item.split(",") if g.strip()]
    unknown = [g for g in only if g not in GROUPS]
    if unknown:
        print(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    groups = [g for g in GROUPS if not only or g in only]

    from benchmarks.workloads import Plan

    plan = Plan.make(args.quick, args.reps)
    for item in args.set:
        field_name, _, text = item.partition("=")
        current = getattr(plan, field_name, None)
        if current is None or isinstance(current, bool) or not text:
            print(
                f"--set {item!r}: unknown plan field; known: {', '.join(vars(plan))}",
                file=sys.stderr,
            )
            return 2
        setattr(plan, field_name, type(current)(text))
    pin_malloc()
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "reps": plan.reps,
        "groups": groups,
        "plan": vars(plan),
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "commit": _git_commit(),
        "versions": _versions(),
    }
    work = Workdir(args.tmp_dir)
    meta["tmp_dir"] = str(work.base)
    rows: list[Row] = []
    t_all = time.perf_counter()
    group_seconds: dict[str, float] = {}
    try:
        for group in groups:
            module, func_name = GROUPS[group]
            print(f"[bench] {group} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            func: Callable[[Any, Workdir], list[Row]] = getattr(
                importlib.import_module(module), func_name
            )
            try:
                rows += func(plan, work)
            except Exception as exc:
                # A whole group failing (e.g. an import inside it) is reported, not fatal.
                logger.exception("group %s failed", group)
                rows.append(
                    status_row(
                        group,
                        group,
                        "-",
                        "(group)",
                        "reference",
                        "error",
                        f"{type(exc).__name__}: {exc}"[:300],
                    )
                )
            group_seconds[group] = round(time.perf_counter() - t0, 1)
            print(f"[bench] {group} done in {group_seconds[group]} s", file=sys.stderr, flush=True)
    finally:
        work.cleanup()
    add_ratios(rows)
    meta["duration_s"] = round(time.perf_counter() - t_all, 1)
    meta["group_seconds"] = group_seconds
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {"meta": meta, "rows": [r.to_dict() for r in rows]}

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    full = report.render_full(doc)
    md_path = args.markdown or args.json.with_suffix(".md")
    md_path.write_text(full, encoding="utf-8")
    print(report.render_summary(doc) if args.summary else full)
    print(f"[bench] wrote {args.json} and {md_path} in {meta['duration_s']} s", file=sys.stderr)
    return 0
