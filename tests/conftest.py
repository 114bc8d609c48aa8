"""Cross-package fixtures: wheels built once, fresh virtual environments made from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STORAGE = ROOT / "packages" / "cacheness-storage"
CACHE = ROOT / "packages" / "cacheness"


def _uv() -> list[str] | None:
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    return [found] if found else None


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc  # type: ignore[no-any-return]


def build_wheel(project: Path, out: Path) -> Path:
    """A wheel of ``project`` built by hatchling (no network: hatchling is installed)."""
    out.mkdir(parents=True, exist_ok=True)
    # `build` rather than `pip wheel`: uv-made environments (nox's default) have no pip.
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(project)])
    name = project.name.replace("-", "_")
    return next(out.glob(f"{name}-*.whl"))


class Venv:
    """A fresh virtual environment (uv when available, else venv + pip)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        uv = _uv()
        if uv:
            run([*uv, "venv", "-q", "--python", sys.executable, str(path)])
        else:
            run([sys.executable, "-m", "venv", str(path)])
        self.python = str(path / "bin" / "python")
        self._uv = uv

    def install(self, *args: str) -> None:
        if self._uv:
            run([*self._uv, "pip", "install", "-q", "--python", self.python, *args])
        else:
            run([self.python, "-m", "pip", "install", "-q", *args])

    def python_code(self, code: str, cwd: Path | None = None) -> str:
        return run([self.python, "-c", code], cwd=cwd or self.path).stdout


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    return {"storage": build_wheel(STORAGE, out), "cache": build_wheel(CACHE, out)}


@pytest.fixture(scope="session")
def full_venv(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Venv:
    venv = Venv(tmp_path_factory.mktemp("venv") / "full")
    venv.install(str(wheels["cache"]), str(wheels["storage"]))
    return venv


@pytest.fixture(scope="session")
def make_venv(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Factory: ``make_venv(name) -> Venv`` in a fresh temporary folder."""

    def factory(name: str) -> Venv:
        return Venv(tmp_path_factory.mktemp("venv") / name)

    return factory
