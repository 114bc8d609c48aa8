"""Side-by-side benchmarks: cacheness beside diskcache, joblib and cachier.

Run ``python -m benchmarks`` (full, < 10 min on 2 cores) or
``python -m benchmarks --quick`` (< 1 min); ``--only GROUP`` picks workload
groups; results go to ``benchmarks/results/latest.json`` and a Markdown table.
``python scripts/render_bench_table.py benchmarks/results/latest.json`` renders
the README table from the JSON. Timings are reported, never asserted.
"""
