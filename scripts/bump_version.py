"""Set the one version number of both distributions (lockstep): bump_version.py X.Y.Z."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = [
    ROOT / "packages/cacheness-storage/pyproject.toml",
    ROOT / "packages/cacheness/pyproject.toml",
]


def bump(new: str) -> None:
    if not re.fullmatch(r"\d+\.\d+\.\d+", new):
        raise SystemExit(f"version must look like X.Y.Z, got {new!r}")
    for path in FILES:
        text = path.read_text()
        text = re.sub(r'(?m)^version = "[^"]+"', f'version = "{new}"', text, count=1)
        text = re.sub(
            r"cacheness-storage(\[[a-z0-9,]+\])?~=[0-9.]+", rf"cacheness-storage\g<1>~={new}", text
        )
        path.write_text(text)


if __name__ == "__main__":
    bump(sys.argv[1])
