"""The README's promises and the plugin guide stay true."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

from cacheness.storage import hookspecs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_readme_has_one_quickstart_and_one_test_command() -> None:
    blocks = _bash_blocks(README)
    quick = [b for b in blocks if "examples/quickstart.py" in b]
    tests = [b for b in blocks if "nox" in b and "quickstart" not in b]
    assert len(quick) == 1 and quick[0].count("\n") == 0
    assert tests and tests[0].strip() == "python3 -m pip install nox uv && python3 -m nox"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "CACHENESS_REQUIRE_SERVICES=1" in ci
    assert "python3 -m pip install -q nox uv" in ci and "python3 -m nox" in ci


def test_quickstart_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "verify ok: True" in proc.stdout


def test_every_hook_is_documented_with_its_signature() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("cacheness_register_")]
    assert len(hooks) == 4
    for name in hooks:
        fn = getattr(hookspecs, name)
        params = ", ".join(inspect.signature(fn).parameters)
        assert f"### `{name}({params})" in guide, f"{name} is not documented in docs/plugins.md"
        assert fn.__doc__, f"{name} has no docstring"
