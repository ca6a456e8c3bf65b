"""End-to-end tests of ``d2r evaluate`` run as a subprocess."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from d2r.cli.evaluate import load_ranks, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def dataset_dir(tmp_path):
    root = tmp_path / "roxford5k"
    (root / "jpg").mkdir(parents=True)
    # db: 0 easy(q0), 1 hard(q0), 2 junk(q0), 3 easy(q1), 4 negative
    gnd = {
        "imlist": [f"img{i}" for i in range(5)],
        "qimlist": ["q0", "q1"],
        "gnd": [
            {"bbx": [0.0, 0.0, 10.0, 10.0], "easy": [0], "hard": [1], "junk": [2]},
            {"bbx": [1.0, 1.0, 5.0, 5.0], "easy": [3], "hard": [], "junk": []},
        ],
    }
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd, protocol=2))
    return root


RANKS = np.array([[2, 1, 4, 0, 3], [3, 0, 1, 2, 4]], np.int64)
# q0 easy: junk {1,2}: 0 at shifted rank 1 -> 0.25; q1 easy: 1.0
# q0 medium: junk {2}: 1 at rank 0, 0 at rank 2 -> 0.5 + (1/2 + 2/3)/4; q1: 1.0
# q0 hard: junk {0,2}: 1 at rank 0 -> 1.0; q1 has no hard images -> excluded
EXPECTED_MAP = {
    "easy": 100 * (0.25 + 1.0) / 2,
    "medium": 100 * ((0.5 + (0.5 + 2 / 3) / 4) + 1.0) / 2,
    "hard": 100.0,
}


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "d2r.cli.evaluate", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )


def test_cli_writes_metrics(dataset_dir, tmp_path):
    ranks_file = tmp_path / "ranks.npy"
    np.save(ranks_file, RANKS)
    out = tmp_path / "out"
    proc = run_cli("--dataset-dir", dataset_dir, "--ranks", ranks_file, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "mP@10" in proc.stdout and "medium" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"easy", "medium", "hard"}
    for protocol, value in EXPECTED_MAP.items():
        assert set(metrics[protocol]) == {"mAP", "mP@1", "mP@5", "mP@10"}
        assert metrics[protocol]["mAP"] == pytest.approx(value, abs=1e-3)
    # hard: q0 positive at rank 1 (1-based) -> every mP@k is 100
    assert metrics["hard"]["mP@5"] == pytest.approx(100.0)
    # easy: q0 P@1 = 0, q1 P@1 = 1 -> 50
    assert metrics["easy"]["mP@1"] == pytest.approx(50.0)


def test_cli_reports_bad_input(dataset_dir, tmp_path):
    ranks_file = tmp_path / "ranks.npy"
    np.save(ranks_file, RANKS[:1])
    proc = run_cli("--dataset-dir", dataset_dir, "--ranks", ranks_file)
    assert proc.returncode == 2
    assert "1 ranking rows for 2 queries" in proc.stderr
    proc = run_cli("--dataset-dir", tmp_path / "nowhere", "--ranks", ranks_file)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_rank_file_formats(dataset_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.save(run_dir / "ranks.npy", RANKS)
    np.testing.assert_array_equal(load_ranks(run_dir), RANKS)

    scores_dir = tmp_path / "scores_only"
    scores_dir.mkdir()
    scores = np.zeros((2, 5), np.float32)
    scores[np.arange(2)[:, None], RANKS] = np.linspace(1, 0, 5)
    np.save(scores_dir / "scores.npy", scores)
    np.testing.assert_array_equal(load_ranks(scores_dir), RANKS)

    np.savez(tmp_path / "r.npz", ids=RANKS)
    np.testing.assert_array_equal(load_ranks(tmp_path / "r.npz"), RANKS)
    (tmp_path / "r.json").write_text(json.dumps({"ranks": RANKS.tolist()}))
    np.testing.assert_array_equal(load_ranks(tmp_path / "r.json"), RANKS)

    np.save(tmp_path / "float.npy", RANKS.astype(np.float32))
    with pytest.raises(ValueError, match="scores.npy"):
        load_ranks(tmp_path / "float.npy")
    np.savez(tmp_path / "other.npz", x=RANKS)
    with pytest.raises(ValueError, match="'ranks', 'ids', 'scores'"):
        load_ranks(tmp_path / "other.npz")
    (tmp_path / "r.txt").write_text("")
    with pytest.raises(ValueError, match="unsupported"):
        load_ranks(tmp_path / "r.txt")
    with pytest.raises(FileNotFoundError, match="neither"):
        load_ranks(dataset_dir / "jpg")


def test_main_in_process_revisitop_layout(dataset_dir, tmp_path, capsys):
    np.save(tmp_path / "ranks.npy", RANKS.T)
    code = main(["--dataset-dir", str(dataset_dir), "--ranks", str(tmp_path / "ranks.npy"),
                 "--layout", "revisitop", "--kappas", "1", "--out", str(tmp_path)])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["easy"]) == {"mAP", "mP@1"}
    assert metrics["medium"]["mAP"] == pytest.approx(EXPECTED_MAP["medium"], abs=1e-3)
    assert "roxford5k: 2 queries" in capsys.readouterr().out
