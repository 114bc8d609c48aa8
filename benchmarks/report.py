"""Markdown from the JSON results: the full table and the README summary.

Used by ``python -m benchmarks`` (after a run) and by
``scripts/render_bench_table.py`` (from a saved JSON file).
"""

from __future__ import annotations

import re
from typing import Any

RATIO_HEADER = "vs best peer"
LEGEND = (
    "*vs best peer*: the best of diskcache / joblib / cachier on that line (for SQL rows: the "
    "hand-written query of the SQL benchmark), divided so that "
    "**> 1 means this system is better** (faster, smaller, fewer errors); "
    "`pickle-file`, `functools.lru_cache`, parquet/pickle files and the physical reference "
    "points are shown for orientation and never count as a peer. Medians over the "
    "repetitions, spread = min\u2013max; ✓ = every value read back was checked equal to the value "
    "written. MB = 10⁶ bytes."
)

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def _fmt(value: float | None) -> str:
    if value is None:
        return "\u2013"
    mag = abs(value)
    if mag == 0:
        return "0"
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _ratio(row: dict[str, Any]) -> str:
    ratio = row.get("ratio")
    if ratio is None:
        return "\u2013"
    text = f"{ratio:.2f}x"
    return f"**{text}**" if row["kind"] == "ours" else text


def _verified(row: dict[str, Any]) -> str:
    v = row.get("verified")
    return "✓" if v else ("✗" if v is False else "")


def _value(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"*{row['status']}*"
    return f"{_fmt(row['median'])} {row['unit']}".strip()


def _spread(row: dict[str, Any]) -> str:
    if row["status"] != "ok" or row.get("lo") is None or row.get("n", 0) < 2:
        return ""
    return f"{_fmt(row['lo'])}\u2013{_fmt(row['hi'])}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _header(meta: dict[str, Any]) -> str:
    mode = "quick" if meta.get("quick") else "full"
    parts = [
        f"Run: {meta.get('started', '?')}, {mode} mode, {meta.get('reps', '?')} repetitions, "
        f"{meta.get('cpu_count', '?')} CPUs, load average at start "
        f"{meta.get('loadavg_start', '?')}, took {meta.get('duration_s', 0):.0f} s.",
    ]
    versions = meta.get("versions") or {}
    if versions:
        parts.append(
            "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."
        )
    return " ".join(parts)


def render_full(doc: dict[str, Any]) -> str:
    """Every row, grouped by workload group."""
    rows: list[dict[str, Any]] = doc["rows"]
    lines = [_header(doc.get("meta", {})), "", LEGEND, ""]
    group = None
    for row in rows:
        if row["group"] != group:
            group = row["group"]
            lines += [
                "",
                f"### {group}",
                "",
                f"| workload | metric | system | median | spread | {RATIO_HEADER} | ok | notes |",
                "|---|---|---|---:|---:|---:|:-:|---|",
            ]
        lines.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    row["workload"],
                    row["metric"],
                    f"**{row['system']}**" if row["kind"] == "ours" else row["system"],
                    _value(row),
                    _spread(row),
                    _ratio(row),
                    _verified(row),
                    row.get("notes", ""),
                )
            )
            + " |"
        )
    return "\n".join(lines).strip() + "\n"


def render_summary(doc: dict[str, Any]) -> str:
    """One line per (workload, metric, our system): its value, the best peer's, the ratio."""
    rows: list[dict[str, Any]] = doc["rows"]
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((row["workload"], row["metric"]), []).append(row)
    lines = [
        _header(doc.get("meta", {})),
        "",
        LEGEND,
        "",
        f"| workload | metric | cacheness | value | best peer | peer value | {RATIO_HEADER} | ok "
        "| notes |",
        "|---|---|---|---:|---|---:|---:|:-:|---|",
    ]
    for (workload, metric), group in by_key.items():
        ours = [r for r in group if r["kind"] == "ours"]
        if not ours or group[0]["group"] == "reference":
            continue
        peer_name = next((r["best_peer"] for r in ours if r.get("best_peer")), None)
        peer = next((r for r in group if r["system"] == peer_name), None)
        for row in ours:
            lines.append(
                "| "
                + " | ".join(
                    _cell(x)
                    for x in (
                        workload,
                        metric,
                        row["system"],
                        _value(row)
                        if row["status"] == "ok"
                        else f"*{row['status']}*: {row['notes']}",
                        peer["system"] if peer else "\u2013",
                        _value(peer) if peer else "\u2013",
                        _ratio(row),
                        _verified(row),
                        row.get("notes", "") if row["status"] == "ok" else "",
                    )
                )
                + " |"
            )
    refs = [r for r in rows if r["group"] == "reference" and r["status"] == "ok"]
    if refs:
        lines += ["", "Physical reference points (same run):", ""]
        lines += ["| workload | metric | what | median |", "|---|---|---|---:|"]
        for r in refs:
            lines.append(
                f"| {_cell(r['workload'])} | {r['metric']} | {_cell(r['system'])} | {_value(r)} |"
            )
    return "\n".join(lines).strip() + "\n"


def replace_section(text: str, table: str) -> str:
    """Put ``table`` between the bench markers of ``text`` (markers kept)."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no {START} ... {END} section")
    return pattern.sub(lambda _m: f"{START}\n{table.rstrip()}\n{END}", text, count=1)
