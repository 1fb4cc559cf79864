"""The pytest configuration docs/guide.md recommends, used by a user's project of its own: the
guide's examples pass with every warning an error (pytest-asyncio's loop-scope deprecation
warning included)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def guide_section() -> str:
    text = (ROOT / "docs" / "guide.md").read_text()
    start = text.index("## Testing your handlers and flows")
    return text[start : text.index("\n## ", start + 1)]


def test_the_guides_configuration_and_examples_run_without_a_warning(tmp_path: Path) -> None:
    section = guide_section()
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    examples = re.search(r"```python\n(.*?)```", section, re.S)
    assert toml is not None and examples is not None, "the guide lost its testing examples"
    (tmp_path / "pyproject.toml").write_text(toml.group(1))
    code = examples.group(1)  # as a user copies it: nothing added
    (tmp_path / "test_user.py").write_text(code)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "3 passed" in out, out
    assert "Warning" not in out, out
