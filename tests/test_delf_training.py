"""DELF training (training/delf): data preparation, loss decrease, resume, export round trip.

Everything runs a tiny stand-in backbone (``model.backbone: tiny``, a few channels) on
64-pixel generated images; the ResNet-50 variant is exercised by a slow test.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from d2r.config import ConfigError
from training.delf import data as D
from training.delf.config import load_train_config, train_config_from_dict
from training.delf.prepare_data import load_dataset_info, prepare

NUM_CLASSES = 4
PER_CLASS = 5
SIZE = 64


def _class_pattern(k: int) -> np.ndarray:
    """A fixed 24x24 colour texture per class."""
    rng = np.random.default_rng(100 + k)
    blocks = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    return np.kron(blocks, np.ones((4, 4, 1), np.uint8))


def _write_images(root: Path, *, landmark_offset: int = 0) -> list[tuple[str, int, str]]:
    """Images of NUM_CLASSES classes in the synthetic benchmark layout; returns (id, landmark, split)."""
    rng = np.random.default_rng(0)
    (root / "jpg").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(NUM_CLASSES):
        pattern = _class_pattern(k)
        for j in range(PER_CLASS):
            image = rng.integers(0, 256, size=(SIZE, SIZE, 3)).astype(np.uint8) // 4 + 96
            y, x = rng.integers(0, SIZE - pattern.shape[0], size=2)
            image[y:y + pattern.shape[0], x:x + pattern.shape[1]] = pattern
            image_id = f"img_{k}_{j}"
            Image.fromarray(image).save(root / "jpg" / f"{image_id}.jpg", quality=95)
            rows.append((image_id, k + landmark_offset, "val" if j == 0 else "train"))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "landmark_id", "split"])
        writer.writerows(rows)
    return rows


def _config(data_dir: Path, **training):
    values = {
        "data": {"dir": str(data_dir), "image_size": SIZE, "shuffle_buffer": 32},
        "augmentation": {"enabled": False},
        "model": {"backbone": "tiny", "tiny_channels": [8, 16, 32, 32, 64], "attention_channels": 16},
        "training": {
            "batch_size": 8, "max_steps": 100, "initial_lr": 0.05, "log_every": 1, "validate_every": 1000,
            "validation_batches": 1, "checkpoint_every": 1000, "seed": 0, **training,
        },
    }
    return train_config_from_dict(values)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("delf_train")
    _write_images(root / "synth", landmark_offset=10)
    info = prepare(root / "data", synthetic=str(root / "synth"), num_shards=2)
    return root, info


@pytest.fixture(scope="module")
def trained_run(records):
    """A 3-step run of the tiny network, checkpointed at step 3."""
    from training.delf.train import train

    root, _ = records
    out = root / "run"
    result = train(_config(root / "data"), out, max_steps=3)
    return out, result


# --------------------------------------------------------------------------- data


def test_prepare_synthetic_keeps_split_and_relabels(records):
    root, info = records
    assert info["num_classes"] == NUM_CLASSES
    assert info["num_train"] == NUM_CLASSES * (PER_CLASS - 1)
    assert info["num_validation"] == NUM_CLASSES
    assert load_dataset_info(root / "data")["num_classes"] == NUM_CLASSES
    with open(root / "data" / "relabeling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["label"]), int(r["landmark_id"])) for r in rows] == [(k, k + 10) for k in range(NUM_CLASSES)]
    files = D.resolve_pattern("train-*", root / "data")
    assert len(files) == 2 and D.count_records(files) == info["num_train"]
    image, label, image_id = next(iter(tf.data.TFRecordDataset(files).map(D.parse_example)))
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == tf.uint8
    assert 0 <= int(label) < NUM_CLASSES and image_id.numpy().decode().startswith("img_")
    with pytest.raises(FileExistsError):
        prepare(root / "data", synthetic=str(root / "synth"))


def test_gld_csvs_find_images_in_both_layouts(tmp_path):
    images = tmp_path / "images"
    (images / "a" / "b" / "c").mkdir(parents=True)
    pixels = np.full((20, 20, 3), 128, np.uint8)
    Image.fromarray(pixels).save(images / "a" / "b" / "c" / "abc1.jpg")
    Image.fromarray(pixels).save(images / "flat2.jpg")
    Image.fromarray(pixels).save(images / "flat3.png")  # not a JPEG: re-encoded
    (images / "bad4.jpg").write_bytes(b"not an image")
    train_csv = tmp_path / "train.csv"
    train_csv.write_text("id,url,landmark_id\nabc1,http://x,7\nflat2,http://y,7\nflat3,,9\n"
                         "gone,http://z,9\nbad4,,9\nnolabel,,None\n")
    items = D.read_gld_csv(train_csv)
    assert [(it.image_id, it.landmark_id) for it in items] == [
        ("abc1", 7), ("flat2", 7), ("flat3", 9), ("gone", 9), ("bad4", 9)]
    clean_csv = tmp_path / "train_clean.csv"
    clean_csv.write_text("landmark_id,images\n7,abc1 flat2\n9,flat3 gone bad4\n")
    assert {(it.image_id, it.landmark_id) for it in D.read_gld_clean_csv(clean_csv)} == {
        (it.image_id, it.landmark_id) for it in items}
    assert D.find_image(images, "abc1") == images / "a" / "b" / "c" / "abc1.jpg"
    assert D.find_image(images, "gone") is None

    info = prepare(tmp_path / "out", gld_clean_csv=str(clean_csv), images=str(images),
                   validation_fraction=0.5, num_shards=1)
    assert info["num_missing"] == 1 and info["num_skipped"] == 1
    assert (tmp_path / "out" / "missing.txt").read_text() == "gone\n"
    assert "bad4" in (tmp_path / "out" / "skipped.tsv").read_text()
    assert info["num_classes"] == 2 and info["num_train"] + info["num_validation"] == 3
    with pytest.raises(ValueError, match="landmark_id"):
        bad = tmp_path / "bad.csv"
        bad.write_text("id,url,landmark_id\nx,,seven\n")
        D.read_gld_csv(bad)
    with pytest.raises(ValueError, match="lacks the column"):
        D.read_gld_clean_csv(train_csv)


def test_split_per_class_keeps_a_training_image():
    items = [D.LabeledImage(f"i{i}", landmark) for i, landmark in enumerate([1, 1, 1, 1, 1, 2, 3, 3])]
    split = D.split_per_class(items, validation_fraction=0.4, seed=3)
    by_class = {}
    for it in split:
        by_class.setdefault(it.landmark_id, []).append(it.split)
    assert by_class[1].count(D.VALIDATION) == 2
    assert by_class[2] == [D.TRAIN]
    assert by_class[3].count(D.TRAIN) >= 1
    assert split == D.split_per_class(items, validation_fraction=0.4, seed=3)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="training.bogus"):
        load_train_config(overrides=["training.bogus=1"])
    with pytest.raises(ConfigError, match="training.batch_size"):
        load_train_config(overrides=["training.batch_size=0"])
    config = load_train_config(["synthetic_tiny_cpu"], ["training.max_steps=700"])
    assert config.model.backbone == "tiny" and config.training.max_steps == 700
    assert load_train_config(["gldv2_resnet50_gpu"]).model.backbone == "resnet50"
    child = tmp_path / "child.yaml"
    child.write_text("extends: synthetic_tiny_cpu\ntraining:\n  batch_size: 4\n")
    config = load_train_config([child])
    assert config.training.batch_size == 4 and config.model.backbone == "tiny"


# --------------------------------------------------------------------------- training


def test_cosine_and_arcface_logits():
    from training.delf.model import cosine_classifier

    x = np.array([[3.0, 0.0], [0.0, 2.0]], np.float32)
    layer = cosine_classifier(3, scale=10.0, margin=0.5)
    layer.build((None, 2))
    layer.kernel.assign(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32))
    plain = layer(x).numpy()
    np.testing.assert_allclose(plain, 10 * np.array([[1, 0, 2 ** -0.5], [0, 1, 2 ** -0.5]]), atol=1e-5)
    margin = layer(x, np.array([2, 0])).numpy()
    np.testing.assert_allclose(margin[0, 2], 10 * np.cos(np.pi / 4 + 0.5), atol=1e-4)
    np.testing.assert_allclose(margin[1, 0], 10 * np.cos(np.pi / 2 + 0.5), atol=1e-4)
    np.testing.assert_allclose(np.delete(margin, [2, 3]), np.delete(plain, [2, 3]), atol=1e-5)


def test_training_steps_lower_the_loss_on_a_fixed_batch(records):
    from training.delf.train import Trainer

    root, info = records
    config = _config(root / "data", initial_lr=0.05)
    files = D.resolve_pattern("train-*", root / "data")
    ds = D.make_dataset(files, batch_size=8, image_size=SIZE, augmentation=None, shuffle=False, repeat=False)
    images, labels = next(iter(ds))
    trainer = Trainer(config, num_classes=info["num_classes"])
    # step() reports the losses of its forward pass, before its update: the first
    # step gives the loss at step 0, the sixth the loss after five updates.
    history = [trainer.step(images, labels) for _ in range(6)]
    before, after = history[0], history[-1]
    assert trainer.global_step == 6
    assert np.isfinite(before["loss/total"]) and before["learning_rate"] > 0
    assert after["loss/desc"] < before["loss/desc"]
    assert after["loss/attention"] < before["loss/attention"] - 0.005  # the attention head learns more slowly
    assert after["loss/total"] < 0.95 * before["loss/total"]


def test_resume_continues_the_step_counter(records, trained_run):
    from training.delf.train import latest_checkpoint, load_run_config, train

    root, _ = records
    out, first = trained_run
    assert first.step == 3 and [h["step"] for h in first.history if "loss/total" in h] == [1, 2, 3]
    assert Path(first.checkpoint).name == "ckpt-3"
    assert (out / "config.yaml").is_file() and (out / "logs" / "train").is_dir()
    assert load_run_config(out).data.num_classes == NUM_CLASSES

    resumed = train(_config(root / "data"), out, max_steps=5)
    steps = [h["step"] for h in resumed.history if "loss/total" in h]
    assert resumed.step == 5 and steps == [4, 5]
    assert latest_checkpoint(out)[1].endswith("ckpt-5")
    lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if "loss/total" in e] == [1, 2, 3, 4, 5]

    changed = _config(root / "data")
    changed.model.attention_channels = 8
    with pytest.raises(ConfigError, match="model.attention_channels"):
        train(changed, out, max_steps=6)


def test_export_round_trip_through_from_savedmodel(records, trained_run, tmp_path):
    from d2r.features.delf import DelfExtractor
    from d2r.features.pca import load_pca
    from training.delf.export import EXPORT_INFO, export_model, learn_pca_from_images

    root, _ = records
    out, _ = trained_run
    model_dir = tmp_path / "model"
    info = export_model(out / "checkpoints", model_dir)
    assert info["network"]["descriptor_dim"] == 32 and info["step"] >= 3
    assert json.loads((model_dir / EXPORT_INFO).read_text())["network"]["backbone"] == "tiny"

    extractor = DelfExtractor.from_savedmodel(model_dir, scales=(1.0, 0.5), score_threshold=0.0, max_features=40)
    image = np.asarray(Image.open(root / "synth" / "jpg" / "img_1_2.jpg").resize((96, 64)))
    feats = extractor.extract(image)
    assert 0 < len(feats) <= 40 and feats.descriptors.shape[1] == 32
    assert np.all(np.diff(feats.scores) <= 0)
    assert np.all(feats.locations >= -1) and np.all(feats.locations[:, 0] <= 97)

    images = sorted((root / "synth" / "jpg").glob("*.jpg"))
    pca = learn_pca_from_images(model_dir, images, tmp_path / "pca", scales=(1.0,), score_threshold=0.0,
                                max_features=40, max_images=6)
    loaded = load_pca(tmp_path / "pca")
    assert loaded.input_dim == 32 and loaded.num_samples == pca.num_samples
    reduced = extractor.replace(pca=loaded, pca_dim=16).extract(image)
    assert reduced.descriptors.shape == (len(feats), 16)
    np.testing.assert_allclose(np.linalg.norm(reduced.descriptors, axis=1), 1.0, rtol=1e-4)
    with pytest.raises(FileExistsError):
        export_model(out, model_dir)


@pytest.mark.slow
def test_resnet50_network_exports_as_the_package_model(records, tmp_path):
    """One step of the ResNet-50 network with the autoencoder; export gives Keras weights the package loads."""
    from d2r.features.delf import DelfExtractor
    from training.delf.export import export_model
    from training.delf.train import train

    root, _ = records
    config = _config(root / "data", batch_size=2)
    config.model.backbone = "resnet50"
    config.model.use_autoencoder = True
    config.model.reduced_dimension = 16
    config.model.attention_channels = 32
    config.model.classifier = "arcface"
    config.model.scale = 10.0
    config.validate()
    result = train(config, tmp_path / "run", max_steps=1)
    assert result.step == 1
    info = export_model(tmp_path / "run", tmp_path / "model")
    assert info["keras_weights"] == "delf.weights.h5"
    image = np.full((64, 64, 3), 100, np.uint8)
    a = DelfExtractor.from_savedmodel(tmp_path / "model", scales=(1.0,), score_threshold=0.0).extract_raw(image)
    b = DelfExtractor.from_weights(
        tmp_path / "model" / "delf.weights.h5", use_autoencoder=True, reduced_dimension=16,
        attention_channels=32, scales=(1.0,), score_threshold=0.0,
    ).extract_raw(image)
    assert a.descriptors.shape[1] == 16
    np.testing.assert_allclose(a.descriptors, b.descriptors, rtol=1e-4, atol=1e-4)
