"""Render the benchmark table from a results JSON written by ``python -m benchmarks``.

    python scripts/render_bench_table.py benchmarks/results/latest.json            # README summary
    python scripts/render_bench_table.py benchmarks/results/latest.json --full     # every row
    python scripts/render_bench_table.py benchmarks/results/latest.json --write-readme

``--write-readme`` replaces the part of README.md between ``<!-- bench:start -->``
and ``<!-- bench:end -->`` (markers kept); the README is never hand-typed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a file from anywhere: the renderer lives in the benchmarks package.
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("results", type=Path, help="JSON written by python -m benchmarks")
    parser.add_argument("--full", action="store_true", help="every row, not the summary")
    parser.add_argument(
        "--write-readme",
        nargs="?",
        const=ROOT / "README.md",
        type=Path,
        default=None,
        metavar="README",
        help="rewrite the bench:start/bench:end section of README.md (or the given file)",
    )
    args = parser.parse_args(argv)
    try:
        doc = json.loads(args.results.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"{args.results}: no such file; run `python -m benchmarks` first", file=sys.stderr)
        return 2
    table = report.render_full(doc) if args.full else report.render_summary(doc)
    if args.write_readme is None:
        print(table, end="")
        return 0
    readme: Path = args.write_readme
    try:
        text = report.replace_section(readme.read_text(encoding="utf-8"), table)
    except ValueError as exc:
        print(f"{readme}: {exc}; add the two markers where the table belongs", file=sys.stderr)
        return 1
    readme.write_text(text, encoding="utf-8")
    print(f"wrote the benchmark table into {readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
