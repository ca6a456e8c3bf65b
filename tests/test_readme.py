"""The README's commands, run as written on a fresh clone (slow: fresh venv + demo)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the repository")
def test_readme_commands_run_as_written(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "readme_commands.sh"), str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "readme_commands: all README commands ran" in proc.stdout
    assert (tmp_path / "d2r" / "d2r-demo" / "demo.json").is_file()
