"""Ordinary user mistakes, run through the real ``d2r`` command in a subprocess: each exits
with status 2 and one stderr line ``d2r <command>: error: ...`` naming the problem, never a
traceback; ``-v`` keeps the traceback.  Also: the ``d2r`` console command, the core install
without TensorFlow or Ray, and progress lines when stderr is not a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SMALL = ("--config", "rootsift-asmk-star", "--set", "features.rootsift.max_features=80",
         "--set", "codebook.num_words=32")

BLOCK_HEAVY = ("import sys\n"
               "for name in ('tensorflow', 'tf_keras', 'tensorflow_hub', 'ray', 'fastapi',\n"
               "             'uvicorn', 'multipart'):\n"
               "    sys.modules[name] = None\n")
"""A ``sitecustomize`` that makes TensorFlow, Ray and the server's libraries unimportable,
as in the core install."""


def d2r(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m d2r ARGS`` (the ``d2r`` console command's code) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "d2r", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)


def assert_user_error(proc: subprocess.CompletedProcess, command: str, pattern: str) -> str:
    """Exit 2, no traceback, and exactly one stderr line (after any log lines) that starts
    ``d2r COMMAND: error:`` and matches ``pattern``; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith(f"d2r {command}: error: "), proc.stderr
    assert re.search(pattern, errors[0]), errors[0]
    assert "np.float64" not in errors[0]
    return errors[0]


def no_heavy_env(tmp: Path) -> dict:
    """An environment whose interpreter cannot import TensorFlow or Ray."""
    site = tmp / "block-heavy"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCK_HEAVY)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def index(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli-errors") / "index"
    proc = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", out, *SMALL)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def query_image(tiny_dataset) -> Path:
    return next(iter(sorted((tiny_dataset / "jpg").glob("*.jpg"))))


def test_mistyped_index_path(index, query_image):
    proc = d2r("query", "--index", f"{index}-typo", "--image", query_image)
    line = assert_user_error(proc, "query", r"no index at .*-typo: no such directory")
    assert "interrupted" not in line


def test_text_file_as_query_image(index, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    assert_user_error(d2r("query", "--index", index, "--image", text), "query", r"notes\.jpg")


def test_missing_query_image(index, tmp_path):
    assert_user_error(d2r("query", "--index", index, "--image", tmp_path / "nope.jpg"),
                      "query", r"nope\.jpg")


def test_box_outside_the_image_is_described_in_plain_numbers(index, query_image):
    width, height = Image.open(query_image).size
    box = f"{width + 10},{height + 10},{width + 200},{height + 200}"
    assert_user_error(d2r("query", "--index", index, "--image", query_image, "--box", box),
                      "query", rf"box {box} misses the {width}x{height} image")


def test_empty_box(index, query_image):
    assert_user_error(d2r("query", "--index", index, "--image", query_image, "--box",
                          "40,40,10,90"), "query", r"box 40,40,10,90 is empty")


@pytest.mark.parametrize("form", ["separate", "joined"])
def test_negative_box_coordinates_parse(index, query_image, form):
    width, height = Image.open(query_image).size
    box = f"-50,-50,{width // 2},{height // 2}"
    args = ["--box", box] if form == "separate" else [f"--box={box}"]
    proc = d2r("query", "--index", index, "--image", query_image, *args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["rank", "score", "inliers", "-log10NFA",
                                                   "verified", "name"]


def test_unknown_preset(tiny_dataset, tmp_path):
    proc = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "i",
               "--config", "rootsift-asmk-stra")
    assert_user_error(proc, "build-index", r"rootsift-asmk-stra")
    assert not (tmp_path / "i").exists()


def test_unknown_key(tiny_dataset, tmp_path):
    proc = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "i", *SMALL,
               "--set", "codebook.num_wrods=64")
    assert_user_error(proc, "build-index", r"codebook\.num_wrods")


def test_wrong_type(tiny_dataset, tmp_path):
    proc = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "i", *SMALL,
               "--set", "codebook.num_words=many")
    assert_user_error(proc, "build-index", r"codebook\.num_words")


def test_unknown_query_time_key(index, query_image):
    proc = d2r("query", "--index", index, "--image", query_image, "--set", "search.nosuch=1")
    assert_user_error(proc, "query", r"search\.nosuch")


def test_index_of_another_version(index, tmp_path, query_image):
    copy = tmp_path / "old"
    copy.mkdir()
    manifest = json.loads((index / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps({**manifest, "version": 999}))
    assert_user_error(d2r("query", "--index", copy, "--image", query_image), "query",
                      r"index\.json: .*v999.* reads v\d+: rebuild it")


def test_missing_tensorflow_names_the_extra(tiny_dataset, tmp_path):
    proc = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "i",
               "--config", "delf-asmk-star", env=no_heavy_env(tmp_path))
    assert_user_error(proc, "build-index", r"needs tensorflow.*pip install 'd2r\[tf\]'")


def test_unreadable_ranks_file(tiny_dataset, tmp_path):
    ranks = tmp_path / "ranks.npy"
    ranks.write_text("garbage")
    assert_user_error(d2r("evaluate", "--dataset-dir", tiny_dataset, "--ranks", ranks),
                      "evaluate", r"ranks\.npy")


def test_ranks_of_the_wrong_shape(tiny_dataset, tmp_path):
    ranks = tmp_path / "ranks.npy"
    np.save(ranks, np.zeros((3, 2), dtype=np.int64))
    assert_user_error(d2r("evaluate", "--dataset-dir", tiny_dataset, "--ranks", ranks),
                      "evaluate", r"ranks")


def test_verbose_keeps_the_traceback(index, query_image):
    proc = d2r("query", "-v", "--index", f"{index}-typo", "--image", query_image)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_unknown_command_and_help():
    proc = d2r("serch")
    assert proc.returncode == 2 and "unknown command 'serch'" in proc.stderr
    helped = d2r("--help")
    assert helped.returncode == 0
    for name in ("build-index", "query", "evaluate", "extract", "demo", "check", "synthetic"):
        assert re.search(rf"^\s+{name}\s", helped.stdout, re.M), helped.stdout


def test_console_command_is_installed():
    command = Path(sys.executable).with_name("d2r")
    if not command.exists():
        pytest.skip("d2r is not installed as a console command in this environment")
    proc = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("d2r "), proc.stderr


def test_core_build_and_query_need_neither_tensorflow_nor_ray(tiny_dataset, tmp_path,
                                                              query_image):
    env = no_heavy_env(tmp_path)
    out = tmp_path / "index"
    built = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", out, *SMALL, env=env)
    assert built.returncode == 0, built.stderr
    proc = d2r("query", "--index", out, "--image", query_image, "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["name"] == query_image.stem
    sharded = d2r("query", "--index", out, "--shards", tmp_path, "--image", query_image, env=env)
    assert_user_error(sharded, "query", r"needs ray.*pip install 'd2r\[ray\]'")
    served = d2r("serve", "--index", out, env=env)
    assert_user_error(served, "serve", r"d2r serve needs fastapi, uvicorn, multipart, not "
                                       r"installed here: pip install 'd2r\[serve\]'")
    added = d2r("add", "--index", out, "--images", query_image.parent, env=env)
    assert added.returncode == 0, added.stderr  # updates are core


def test_progress_lines_when_stderr_is_not_a_terminal(tiny_dataset, tmp_path):
    proc = d2r("build-index", "--dataset-dir", tiny_dataset, "--out", tmp_path / "i", *SMALL,
               "--progress-interval", "0.02")
    assert proc.returncode == 0, proc.stderr
    done = [int(n) for n in re.findall(r"extract: (\d+)/16 img \(\d+%\), [\d.]+ img/s, ETA",
                                       proc.stderr)]
    assert len(done) >= 2 and done == sorted(done), proc.stderr  # extraction lasts > 0.1 s
    assert re.search(r"extract: 16 img done in", proc.stderr), proc.stderr
    assert "\r" not in proc.stderr  # no bar off a terminal
