"""A third-party plugin package, installed for real, is used with no registration call."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

PYPROJECT = """
[build-system]
requires = ["hatchling>=1.27"]
build-backend = "hatchling.build"

[project]
name = "cacheness-demo"
version = "0.0.1"
dependencies = ["cacheness-storage"]

[project.entry-points.cacheness]
demo = "cacheness_demo"

[tool.hatch.build.targets.wheel]
packages = ["cacheness_demo"]
"""

PLUGIN = '''
"""A demo plugin: a directory blob backend for demo:// URLs and a handler for Point."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar

from cacheness.storage import hookimpl
from cacheness.storage.abc import BlobBackend, TypeHandler, chunks_of
from cacheness.storage.errors import BlobNotFoundError


@dataclass
class Point:
    x: float
    y: float


class DemoBlobBackend(BlobBackend):
    name: ClassVar[str] = "demo"
    schemes: ClassVar[tuple[str, ...]] = ("demo",)

    def __init__(self, root: str) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "DemoBlobBackend":
        return cls(url.split("://", 1)[1], **options)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key + ".demo")

    def put(self, key, data):
        tmp = self._path(key) + ".tmp"
        with open(tmp, "wb") as f:
            for c in chunks_of(data):
                f.write(c)
        os.replace(tmp, self._path(key))

    def get(self, key):
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BlobNotFoundError(key, key=key) from None

    def exists(self, key):
        return os.path.exists(self._path(key))

    def delete(self, key):
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False

    def iter_keys(self, prefix=""):
        return (n[:-5] for n in os.listdir(self.root) if n.endswith(".demo") and n.startswith(prefix))


class PointHandler(TypeHandler):
    name: ClassVar[str] = "demo-point"
    types: ClassVar[tuple[type, ...]] = (Point,)

    def dumps(self, obj: Point) -> bytes:
        return json.dumps([obj.x, obj.y]).encode()

    def loads(self, data: bytes) -> Point:
        return Point(*json.loads(data))


@hookimpl
def cacheness_register_blob_backends():
    return [DemoBlobBackend]


@hookimpl
def cacheness_register_handlers():
    return [PointHandler]
'''

USER_PROGRAM = """
import os, sys, tempfile
from cacheness.storage import BlobStore
from cacheness_demo import Point

blobs = tempfile.mkdtemp()
# inline_max=0: even small values go to the plugin's backend, so its files can be counted.
with tempfile.TemporaryDirectory() as d, BlobStore(
    d, blob_backend="demo://" + blobs, inline_max=0
) as store:
    store.put(Point(1.5, -2.0), key="p")
    store.put(b"raw", key="b")
    value = store.get("p")
    assert value == Point(1.5, -2.0) and type(value) is Point, value
    assert store.get("b") == b"raw"
    meta = store.get_metadata("p")
    print(meta["handler"], sorted(os.listdir(blobs)).__len__())
"""


def test_installed_plugin_adds_blob_backend_and_handler(
    make_venv: Any, wheels: dict[str, Path], tmp_path: Path
) -> None:
    pkg = tmp_path / "cacheness-demo"
    (pkg / "cacheness_demo").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (pkg / "cacheness_demo" / "__init__.py").write_text(PLUGIN)

    venv = make_venv("plugin")
    venv.install(str(wheels["storage"]), str(pkg))
    out = venv.python_code(USER_PROGRAM).split()
    assert out == ["demo-point", "2"], out


def test_without_the_plugin_the_scheme_is_unknown(full_venv: Any) -> None:
    out = full_venv.python_code(
        "from cacheness.storage import BlobStore, CacheConfigError\n"
        "import tempfile\n"
        "try:\n"
        "    BlobStore(tempfile.mkdtemp(), blob_backend='demo:///x')\n"
        "except CacheConfigError as e:\n"
        "    print(str(e))\n"
    )
    assert "unknown blob backend 'demo'" in out
    assert "file" in out and "memory" in out
