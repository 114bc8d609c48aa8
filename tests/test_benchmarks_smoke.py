"""The benchmark harness cannot rot: a tiny quick run in a subprocess.

Timings are never asserted (the harness reports, the issues read its
ratios). What is asserted: the run finishes, the JSON has rows for every
system, every value read back was verified equal to the value written, a
system is "unavailable" only when it really cannot be imported, and the
README renderer turns the JSON into a table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "latency": {"cacheness", "cacheness.BlobStore", "diskcache.Cache"},
    "small": {
        "cacheness",
        "cacheness+mem",
        "cacheness.BlobStore",
        "diskcache.Cache",
        "joblib.Memory",
        "cachier",
        "pickle-file",
    },
    "decorator": {
        "cacheness.cached",
        "cacheness.cached+mem",
        "diskcache.memoize",
        "joblib.Memory",
        "cachier",
        "functools.lru_cache",
    },
    "arrays": {
        "cacheness",
        "cacheness.BlobStore",
        "diskcache.Cache",
        "joblib.Memory",
        "cachier",
        "pickle-file",
    },
}


def _cache_layer_missing(system: str) -> bool:
    """True when the cacheness part a system needs cannot be imported here either."""
    import cacheness

    needed = ["cacheness", "cached"] if system.startswith("cacheness.cached") else ["cacheness"]
    return not all(hasattr(cacheness, name) for name in needed)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "results.json"
    cmd = [
        sys.executable, "-m", "benchmarks", "--quick", "--reps", "2",
        "--only", "small,decorator,arrays,latency",
        "--set", "small_ops=40", "--set", "array_mb=2",
        "--set", "lat_big=3000", "--set", "lat_samples=100",
        "--json", str(json_path), "--tmp-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| workload |" in done.stdout
    doc: dict[str, Any] = json.loads(json_path.read_text(encoding="utf-8"))
    return doc


def test_every_system_has_rows(results: dict[str, Any]) -> None:
    for group, systems in EXPECTED.items():
        seen = {r["system"] for r in results["rows"] if r["group"] == group}
        assert systems <= seen, f"{group}: no rows for {sorted(systems - seen)}"


def test_no_errors_and_unavailable_only_when_import_fails(results: dict[str, Any]) -> None:
    for row in results["rows"]:
        if row["status"] == "skipped":  # not built: one file per entry (see LATENCY_SKIPPED)
            assert row["group"] == "latency" and row["system"] in ("joblib.Memory", "cachier")
            continue
        assert row["status"] in ("ok", "unavailable"), row
        if row["status"] == "unavailable":
            assert row["kind"] == "ours", f"peer {row['system']} unavailable: {row['notes']}"
            assert _cache_layer_missing(row["system"]), row


def test_every_value_read_back_was_verified(results: dict[str, Any]) -> None:
    # Latency rows: build times read nothing back, first-pass rows are one value each.
    ok_rows = [r for r in results["rows"] if r["status"] == "ok" and r["group"] != "latency"]
    assert ok_rows
    for row in ok_rows:
        assert row["verified"] is True, row
        assert row["n"] == 2 and row["median"] is not None, row


def test_ratios_point_at_a_peer(results: dict[str, Any]) -> None:
    peers = {r["system"] for r in results["rows"] if r["kind"] == "peer"}
    with_ratio = [r for r in results["rows"] if r["ratio"] is not None]
    assert with_ratio
    for row in with_ratio:
        assert row["best_peer"] in peers
        assert row["ratio"] > 0


def test_renderer_writes_readme_section(results: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "latest.json"
    src.write_text(json.dumps(results), encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold table\n<!-- bench:end -->\nrest\n")
    script = str(ROOT / "scripts" / "render_bench_table.py")
    done = subprocess.run(
        [sys.executable, script, str(src), "--write-readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n<!-- bench:start -->\n") and text.endswith(
        "<!-- bench:end -->\nrest\n"
    )
    assert "old table" not in text
    assert "| workload | metric | cacheness |" in text
    assert "diskcache.Cache" in text


def test_latency_reports_the_first_pass_and_a_ratio_per_repetition(
    results: dict[str, Any],
) -> None:
    rows = [r for r in results["rows"] if r["group"] == "latency" and r["status"] == "ok"]
    first = {r["system"] for r in rows if r["metric"] == "first get p50"}
    assert first == EXPECTED["latency"]
    for r in rows:
        if r["metric"] == "p50 ratio":
            assert len(r["values"]) == 2 and all(v > 0 for v in r["values"])  # --reps 2
        if r["metric"].startswith(("get", "first get")):
            assert r["verified"] is True  # every value read back was the one written
