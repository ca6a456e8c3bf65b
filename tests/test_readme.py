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


def _python_block(section: str) -> str:
    """The first ```python block under the README heading ``section``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_use_from_python_example_runs(tiny_dataset, tmp_path, monkeypatch, capsys):
    """The README's "Use from Python" block, run as written in a folder of 16 photos."""
    photos, new, more = tmp_path / "photos", tmp_path / "new", tmp_path / "more_photos" / "x"
    photos.mkdir()
    new.mkdir()
    more.mkdir(parents=True)
    for i, image in enumerate(sorted((tiny_dataset / "jpg").glob("synth_db_*.jpg"))):
        shutil.copy(image, photos / f"eiffel-{i:02d}.jpg")
    shutil.copy(tiny_dataset / "jpg" / "synth_q_0001.jpg", new / "tower.jpg")
    shutil.copy(tiny_dataset / "jpg" / "synth_q_0002.jpg", more / "gate.jpg")
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_block("Use from Python"), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1 ") and lines[0].endswith(" True eiffel-03.jpg")
    assert lines[-1] == "17 images; sound"
