"""One version number for both distributions, and a pin that keeps them in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _project(name: str) -> dict:  # type: ignore[type-arg]
    with open(ROOT / "packages" / name / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]  # type: ignore[no-any-return]


def test_versions_are_in_lockstep() -> None:
    assert _project("cacheness")["version"] == _project("cacheness-storage")["version"]


def test_cache_pins_storage_to_the_same_minor() -> None:
    version = _project("cacheness-storage")["version"]
    pins = [d for d in _project("cacheness")["dependencies"] if d.startswith("cacheness-storage")]
    assert pins == [f"cacheness-storage~={version}"]
    for extra, deps in _project("cacheness")["optional-dependencies"].items():
        for dep in deps:
            if dep.startswith("cacheness-storage"):
                assert re.fullmatch(
                    rf"cacheness-storage\[[a-z0-9,]+\]~={re.escape(version)}", dep
                ), extra


def test_installed_version_matches_pyproject() -> None:
    import cacheness
    import cacheness.storage

    assert cacheness.__version__ == _project("cacheness")["version"]
    assert cacheness.storage.__version__ == _project("cacheness-storage")["version"]


def test_both_packages_declare_the_extras_the_design_names() -> None:
    for name in ("cacheness", "cacheness-storage"):
        extras = set(_project(name)["optional-dependencies"])
        assert {"polars", "dill", "postgres", "s3", "all"} <= extras, name
