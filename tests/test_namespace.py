"""The cacheness namespace in every install mode of DESIGN.md §1.

Each scenario installs into a fresh virtual environment, so what is tested
is what ships: the storage wheel alone, both wheels, and both editable.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "pandas", "blosc2", "dill", "sqlalchemy.orm", "pyarrow", "polars")

ROUND_TRIP = """
import tempfile
from cacheness.storage import BlobStore
with tempfile.TemporaryDirectory() as d, BlobStore(d) as store:
    store.put(b"payload", key="k")
    store.put({"a": [1, 2.5, "x"]}, key="obj")
    assert store.get("k") == b"payload", store.get("k")
    assert store.get("obj") == {"a": [1, 2.5, "x"]}
    assert store.list() == ["k", "obj"]
print("round-trip-ok")
"""

LIGHT_IMPORT = f"""
import sys
import cacheness
loaded = [m for m in {HEAVY!r} if m in sys.modules]
assert not loaded, f"import cacheness loaded {{loaded}}"
print("light-ok")
"""


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_storage_wheel_holds_only_the_storage_portion(wheels: dict[str, Path]) -> None:
    names = _names(wheels["storage"])
    code = [n for n in names if not n.startswith("cacheness_storage-")]
    assert "cacheness/__init__.py" not in names
    assert code and all(n.startswith("cacheness/storage/") for n in code), code
    assert "cacheness/storage/py.typed" in names


def test_cache_wheel_holds_no_storage_files(wheels: dict[str, Path]) -> None:
    names = _names(wheels["cache"])
    assert "cacheness/__init__.py" in names
    assert "cacheness/py.typed" in names
    assert not [n for n in names if n.startswith("cacheness/storage/")]


def test_storage_wheel_alone(make_venv: Any, wheels: dict[str, Path]) -> None:
    venv = make_venv("storage-only")
    venv.install(str(wheels["storage"]))
    missing = venv.python_code(
        "import importlib.util as u; print([m for m in ('pandas', 'dill', 'polars') if u.find_spec(m)])"
    )
    assert missing.strip() == "[]", "the storage wheel must not pull pandas, dill or polars"
    assert "round-trip-ok" in venv.python_code(ROUND_TRIP)
    # Without the cache distribution, `cacheness` is a bare namespace portion.
    out = venv.python_code(
        "import cacheness, cacheness.storage; print(hasattr(cacheness, 'cached'))"
    )
    assert out.strip() == "False"


def test_full_wheels(full_venv: Any) -> None:
    assert "round-trip-ok" in full_venv.python_code(ROUND_TRIP)
    out = full_venv.python_code(
        "import cacheness; from cacheness.storage import BlobStore; "
        "from cacheness import CacheError; from cacheness.storage.errors import CacheError as E; "
        "print(CacheError is E)"
    )
    assert out.strip() == "True"
    assert "light-ok" in full_venv.python_code(LIGHT_IMPORT)


def test_editable_installs(make_venv: Any) -> None:
    venv = make_venv("editable")
    venv.install(
        "-e",
        str(ROOT / "packages" / "cacheness-storage"),
        "-e",
        str(ROOT / "packages" / "cacheness"),
    )
    assert "round-trip-ok" in venv.python_code(ROUND_TRIP)
    paths = venv.python_code("import cacheness; print('\\n'.join(cacheness.__path__))").split()
    assert str(ROOT / "packages" / "cacheness" / "src" / "cacheness") in paths
    assert str(ROOT / "packages" / "cacheness-storage" / "src" / "cacheness") in paths
    assert "light-ok" in venv.python_code(LIGHT_IMPORT)


@pytest.mark.parametrize("module", ["cacheness", "cacheness.storage"])
def test_import_is_light_in_this_environment(module: str) -> None:
    import subprocess
    import sys

    code = f"import sys, {module}; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
