"""DELF training configuration: dataclass defaults, YAML files, ``--set a.b=c`` overrides.

Resolution order (later wins): the dataclass defaults below → the YAML files in
order (a file may say ``extends: other.yaml``, relative to itself, or the name of a
file in ``training/delf/configs/``) → overrides.  Unknown keys and values of the
wrong type are :class:`~d2r.config.ConfigError` naming the dotted key (the same
rules as the package's configuration, whose helpers this module reuses).

The defaults are the reference's GLDv2 recipe (ResNet-50, 321 px crops, batch 32,
SGD momentum 0.9, lr 0.01 decayed linearly to 0 over 500k steps, gradients clipped
to norm 10 per loss group, attention loss weight 1, reconstruction loss weight 10).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from d2r.config import ConfigError, build_dataclass, merge_values, parse_override, read_yaml, to_dict

__all__ = [
    "CONFIG_DIR",
    "AugmentationConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainingConfig",
    "available_configs",
    "load_train_config",
    "train_config_from_dict",
    "train_config_to_dict",
]

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass
class DataConfig:
    """Where the TFRecords are (written by ``prepare_data`` or the reference's script)."""

    dir: str | None = None
    """Directory written by ``python -m training.delf.prepare_data`` (holds ``dataset.json``)."""
    train_pattern: str = "train-*"
    """Glob of the training shards, relative to ``dir`` unless absolute."""
    validation_pattern: str | None = "validation-*"
    """Glob of the validation shards (None or no match: no validation)."""
    num_classes: int | None = None
    """Number of classes; None: read from ``dir/dataset.json``."""
    image_size: int = 321
    """Training crops are resized to ``image_size x image_size`` pixels."""
    shuffle_buffer: int = 1000
    seed: int = 0


@dataclass
class AugmentationConfig:
    """Random crop (ImageNet-style bounding box sampling) + resize, optional flip."""

    enabled: bool = True
    area_range: tuple[float, ...] = (0.08, 1.0)
    """Fraction of the image area a crop covers (min, max): the scale augmentation."""
    aspect_ratio_range: tuple[float, ...] = (0.75, 1.3333333)
    min_object_covered: float = 0.1
    max_attempts: int = 100
    flip: bool = False
    """Random left-right flips (off by default: landmarks are not mirror-symmetric)."""


@dataclass
class ModelConfig:
    """The network: backbone, attention head, optional autoencoder, classifiers."""

    backbone: Literal["resnet50", "tiny"] = "resnet50"
    """``resnet50``: Keras ResNet-50, local features from conv4 (the package's
    :func:`d2r.features.delf_model.build_delf_model`); ``tiny``: a small plain CNN
    with the same outputs (tests and CPU runs)."""
    backbone_weights: str | None = None
    """Local Keras ResNet-50 ImageNet weights file (no-top ``.h5``); nothing is downloaded."""
    tiny_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    """``tiny``: channels of its five stride-2 stages (the fourth gives the local features)."""
    use_autoencoder: bool = False
    """Reduce the local descriptors to ``reduced_dimension`` with a 1x1-conv autoencoder."""
    reduced_dimension: int = 128
    attention_channels: int = 512
    pooling: Literal["avg", "gem"] = "avg"
    """Global pooling of the last stage for the descriptor (backbone) classifier."""
    gem_power: float = 3.0
    classifier: Literal["softmax", "cosine", "arcface"] = "softmax"
    """Descriptor classifier: a dense softmax layer (DELF), or normalized (cosine)
    logits times ``scale``, with an additive angular margin for ``arcface`` (DELG)."""
    scale: float = 45.25
    margin: float = 0.1


@dataclass
class TrainingConfig:
    """Optimization, logging and checkpoints."""

    batch_size: int = 32
    """Global batch size (split across replicas)."""
    max_steps: int = 500_000
    initial_lr: float = 0.01
    """Learning rate, decayed linearly to 0 at ``max_steps`` (after ``warmup_steps``)."""
    warmup_steps: int = 0
    momentum: float = 0.9
    weight_decay: float = 0.0
    """Decoupled weight decay of the SGD optimizer (0: none)."""
    clip_norm: float = 10.0
    """Clip each loss group's gradients (backbone; attention + autoencoder) to this global norm."""
    attention_loss_weight: float = 1.0
    reconstruction_loss_weight: float = 10.0
    log_every: int = 100
    validate_every: int = 1000
    validation_batches: int = 50
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    strategy: Literal["auto", "mirrored", "one_device", "default"] = "auto"
    """``auto``: MirroredStrategy with several GPUs, OneDevice on one GPU, the default strategy on CPU."""
    seed: int = 0


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> TrainConfig:
        """Check value ranges; raise :class:`ConfigError` naming the key."""
        checks = [
            ("data.image_size", self.data.image_size >= 32, "must be >= 32"),
            ("data.shuffle_buffer", self.data.shuffle_buffer >= 1, "must be >= 1"),
            ("data.num_classes", self.data.num_classes is None or self.data.num_classes >= 2, "must be >= 2"),
            ("augmentation.area_range", _range_ok(self.augmentation.area_range, 1e-6, 1.0), "must be (min, max) in (0, 1]"),
            ("augmentation.aspect_ratio_range", _range_ok(self.augmentation.aspect_ratio_range, 1e-6, None), "must be (min, max) > 0"),
            ("model.tiny_channels", len(self.model.tiny_channels) == 5 and min(self.model.tiny_channels) >= 1, "must be 5 positive integers"),
            ("model.reduced_dimension", self.model.reduced_dimension >= 1, "must be >= 1"),
            ("model.attention_channels", self.model.attention_channels >= 1, "must be >= 1"),
            ("model.gem_power", self.model.gem_power > 0, "must be > 0"),
            ("model.scale", self.model.scale > 0, "must be > 0"),
            ("model.margin", 0 <= self.model.margin < 1.6, "must be in [0, 1.6) radians"),
            ("training.batch_size", self.training.batch_size >= 1, "must be >= 1"),
            ("training.max_steps", self.training.max_steps >= 1, "must be >= 1"),
            ("training.initial_lr", self.training.initial_lr > 0, "must be > 0"),
            ("training.warmup_steps", 0 <= self.training.warmup_steps < self.training.max_steps, "must be in [0, max_steps)"),
            ("training.momentum", 0 <= self.training.momentum < 1, "must be in [0, 1)"),
            ("training.weight_decay", self.training.weight_decay >= 0, "must be >= 0"),
            ("training.clip_norm", self.training.clip_norm > 0, "must be > 0"),
            ("training.attention_loss_weight", self.training.attention_loss_weight >= 0, "must be >= 0"),
            ("training.reconstruction_loss_weight", self.training.reconstruction_loss_weight >= 0, "must be >= 0"),
            ("training.log_every", self.training.log_every >= 1, "must be >= 1"),
            ("training.validate_every", self.training.validate_every >= 1, "must be >= 1"),
            ("training.validation_batches", self.training.validation_batches >= 0, "must be >= 0"),
            ("training.checkpoint_every", self.training.checkpoint_every >= 1, "must be >= 1"),
            ("training.keep_checkpoints", self.training.keep_checkpoints >= 1, "must be >= 1"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"{key}: {what}, got {_get(self, key)!r}")
        if self.model.backbone_weights is not None and self.model.backbone != "resnet50":
            raise ConfigError("model.backbone_weights: only the resnet50 backbone takes ImageNet weights")
        return self


def _range_ok(values: tuple[float, ...], low: float, high: float | None) -> bool:
    if len(values) != 2 or not values[0] <= values[1] or values[0] < low:
        return False
    return high is None or values[1] <= high


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def available_configs() -> list[str]:
    """Names of the YAML recipes shipped in ``training/delf/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _resolve_file(name: str | Path, base: Path | None = None) -> Path:
    """A config path as given, relative to ``base``, or the name of a shipped recipe."""
    path = Path(name)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path]
    if base is not None and not path.is_absolute():
        candidates.insert(0, base / path)
    candidates += [CONFIG_DIR / path, CONFIG_DIR / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config file {str(name)!r} not found (shipped recipes: {', '.join(available_configs())})"
    )


def _read_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise ConfigError(f"config file {path} extends itself through {' -> '.join(map(str, seen))}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = _resolve_file(str(parent), path.parent)
    return merge_values(_read_file(parent_path, seen + (path.resolve(),)), data)


def train_config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a (partial) nested mapping."""
    return build_dataclass(TrainConfig, values).validate()


def train_config_to_dict(config: TrainConfig) -> dict:
    """Plain nested dict (tuples as lists) that :func:`train_config_from_dict` reads back."""
    return to_dict(config)


def load_train_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> TrainConfig:
    """Resolve defaults → YAML ``files`` (paths or shipped recipe names) → ``"a.b=c"`` overrides."""
    values: dict = {}
    for name in files:
        values = merge_values(values, _read_file(_resolve_file(name)))
    for text in overrides:
        values = merge_values(values, parse_override(text))
    return train_config_from_dict(values)
