"""CNN global baselines through the same CLIs as D2R (random-weight VGG16, tiny images)."""

import json
import subprocess
import sys



def _run(*args):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_rmac_with_learned_whitening_and_qe(tiny_dataset, tmp_path):
    small = ["--set", "images.max_side=96"]
    _run("d2r.global_.learn", "--dataset-dir", str(tiny_dataset), "--out", str(tmp_path / "w"),
         "--config", "rmac-vgg16", "--dim", "32", *small)
    index = tmp_path / "index"
    _run("d2r.build_index", "--dataset-dir", str(tiny_dataset), "--out", str(index),
         "--config", "rmac-vgg16-qe", *small,
         "--set", f"features.cnn.whitening_path={tmp_path / 'w'}")
    manifest = json.loads((index / "index.json").read_text())
    assert manifest["kind"] == "global" and manifest["codebook"] is None
    assert manifest["features"]["extractor"]["dim"] == 32
    _run("d2r.query", "--index", str(index), "--dataset-dir", str(tiny_dataset),
         "--out", str(tmp_path / "res"))
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert set(metrics) == {"easy", "medium", "hard"}


def test_cnn_refuses_spatial_verification(tiny_dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "d2r.build_index", "--dataset-dir",
                           str(tiny_dataset), "--out", str(tmp_path / "i"), "--config",
                           "rmac-vgg16", "--set", "verification.rerank=10"],
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "spatial verification needs local features" in proc.stderr
