"""Train DELF: ``python -m training.delf.train --config CONFIG.yaml --out RUN``.

The run directory ``RUN`` receives

* ``config.yaml`` — the resolved configuration (with ``data.num_classes`` filled in);
* ``checkpoints/`` — ``tf.train.CheckpointManager`` checkpoints (step counter,
  optimizer state, every weight by name) every ``training.checkpoint_every`` steps
  and at the end;
* ``logs/train``, ``logs/validation`` — TensorBoard scalars (losses, accuracies,
  learning rate, gradient norms, attention statistics, seconds per step) and
  attention maps of validation images;
* ``history.jsonl`` — the logged metrics, one JSON object per line.

Running the same command again resumes from the latest checkpoint (the step counter
continues; the learning-rate schedule follows it).  A run directory whose recorded
``model`` configuration differs is refused; changes elsewhere (say a larger
``training.max_steps``) are logged and recorded.

Distribution: ``training.strategy: auto`` uses ``MirroredStrategy`` with several
GPUs, ``OneDeviceStrategy`` with one and the default strategy on CPU; the batch size
is global.  Each step: one forward pass of both branches, the descriptor loss
(backbone) and the attention (+ reconstruction) loss (head, gradients stopped at
the local feature map), each group's gradients clipped to ``training.clip_norm``,
one SGD-with-momentum update, learning rate decayed linearly to 0 at
``training.max_steps``.

Examples::

    python -m training.delf.train --config synthetic_tiny_cpu --data DATA --out RUN
    python -m training.delf.train --config gldv2_resnet50_gpu --data GLDV2_TFRECORDS --out RUN \\
        --set model.backbone_weights=resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from d2r.config import diff_configs, load_yaml
from training.delf.config import (
    ConfigError,
    TrainConfig,
    load_train_config,
    train_config_from_dict,
    train_config_to_dict,
)

__all__ = [
    "CHECKPOINT_DIR",
    "HISTORY",
    "RUN_CONFIG",
    "TrainResult",
    "Trainer",
    "latest_checkpoint",
    "load_run_config",
    "main",
    "make_strategy",
    "resolve_num_classes",
    "train",
]

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
HISTORY = "history.jsonl"


def make_strategy(name: str = "auto"):
    """The ``tf.distribute`` strategy named by ``training.strategy``."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else ("one_device" if gpus else "default")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "default":
        return tf.distribute.get_strategy()
    raise ConfigError(f"training.strategy: unknown strategy {name!r}")


def _linear_decay(initial_lr: float, max_steps: int, warmup_steps: int):
    """Keras schedule: linear warm-up to ``initial_lr``, then linear decay to 0 at ``max_steps``."""
    import keras
    import tensorflow as tf

    class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            warm = initial_lr * (step + 1.0) / float(max(warmup_steps, 1))
            decay = initial_lr * tf.maximum(0.0, (max_steps - step) / float(max_steps - warmup_steps))
            return tf.where(step < warmup_steps, warm, decay)

        def get_config(self):
            return {"initial_lr": initial_lr, "max_steps": max_steps, "warmup_steps": warmup_steps}

    return LinearDecay()


def resolve_num_classes(config: TrainConfig) -> int:
    """``data.num_classes``, else the ``num_classes`` of ``data.dir/dataset.json``."""
    if config.data.num_classes is not None:
        return int(config.data.num_classes)
    if not config.data.dir:
        raise ConfigError("data.num_classes: not set and there is no data.dir/dataset.json to read it from")
    from training.delf.prepare_data import load_dataset_info

    return int(load_dataset_info(config.data.dir)["num_classes"])


@dataclass
class TrainResult:
    """What :func:`train` did: the final ``step``, the logged ``history`` (dicts with a
    ``step`` key), the last checkpoint path and the mean seconds per step (first
    step, which traces the graph, left out)."""

    step: int
    history: list[dict] = field(default_factory=list)
    checkpoint: str | None = None
    seconds_per_step: float | None = None


class Trainer:
    """Network, optimizer, step counter and checkpoints under one distribution strategy.

    ``Trainer(config, num_classes=C)`` builds everything; :meth:`step` trains on one
    global batch; :meth:`losses` evaluates the losses of a batch without updating;
    ``out_dir`` enables :meth:`save` / :meth:`restore`.
    """

    def __init__(self, config: TrainConfig, *, num_classes: int, out_dir: str | os.PathLike | None = None,
                 strategy=None) -> None:
        import keras
        import tensorflow as tf

        from training.delf.model import DelfNetwork

        self.config = config
        self.num_classes = int(num_classes)
        self.strategy = strategy if strategy is not None else make_strategy(config.training.strategy)
        replicas = self.strategy.num_replicas_in_sync
        if config.training.batch_size % replicas:
            raise ConfigError(
                f"training.batch_size: {config.training.batch_size} is not divisible by the {replicas} replicas"
            )
        keras.utils.set_random_seed(config.training.seed)
        t = config.training
        with self.strategy.scope():
            self.network = DelfNetwork(config.model, self.num_classes)
            self.schedule = _linear_decay(t.initial_lr, t.max_steps, t.warmup_steps)
            self.optimizer = keras.optimizers.SGD(
                learning_rate=self.schedule, momentum=t.momentum,
                weight_decay=t.weight_decay if t.weight_decay > 0 else None,
            )
            self._variables = self.network.descriptor_variables + self.network.head_variables
            self._split = len(self.network.descriptor_variables)
            self.optimizer.build(self._variables)
            self.step_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(
            step=self.step_counter, optimizer=self.optimizer, weights=self.network.weights_by_name()
        )
        self.manager = None
        if out_dir is not None:
            self.manager = tf.train.CheckpointManager(
                self.checkpoint, str(Path(out_dir) / CHECKPOINT_DIR), max_to_keep=t.keep_checkpoints
            )
        self._train_fn = None
        self._loss_fn = {}

    # -- one replica ---------------------------------------------------------

    def _replica_losses(self, images, labels, training: bool):
        import tensorflow as tf

        t = self.config.training
        batch = self.config.training.batch_size
        labels = tf.cast(labels, tf.int64)
        tf.debugging.assert_less(
            labels, tf.constant(self.num_classes, tf.int64),
            message=f"a label is >= num_classes ({self.num_classes}): data.num_classes does not fit the TFRecords",
        )
        out = self.network.forward(images, labels, training=training)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits
        desc = tf.nn.compute_average_loss(ce(labels, out.desc_logits), global_batch_size=batch)
        attn = tf.nn.compute_average_loss(ce(labels, out.attention_logits), global_batch_size=batch)
        if out.expanded is not None:
            per_example = tf.reduce_mean(tf.square(out.expanded - out.local_features), axis=[1, 2, 3])
            rec = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
        else:
            rec = tf.constant(0.0)
        total = desc + t.attention_loss_weight * attn + t.reconstruction_loss_weight * rec

        def correct(logits):
            hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)
            return tf.reduce_sum(hits) / float(batch)

        replicas = float(self.strategy.num_replicas_in_sync)
        metrics = {
            "loss/desc": desc,
            "loss/attention": attn,
            "loss/reconstruction": rec,
            "loss/total": total,
            "accuracy/desc": correct(out.desc_logits),
            "accuracy/attention": correct(out.attention_logits),
            "attention/mean": tf.reduce_mean(out.attention) / replicas,
            "attention/max": tf.reduce_max(out.attention) / replicas,
        }
        return total, metrics, out

    def _replica_step(self, images, labels):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            total, metrics, _ = self._replica_losses(images, labels, True)
        grads = tape.gradient(total, self._variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self._variables)]
        clip = self.config.training.clip_norm
        desc_grads, desc_norm = tf.clip_by_global_norm(grads[: self._split], clip)
        head_grads, head_norm = tf.clip_by_global_norm(grads[self._split:], clip)
        lr = self.schedule(self.optimizer.iterations)
        self.optimizer.apply_gradients(zip(desc_grads + head_grads, self._variables))
        replicas = float(self.strategy.num_replicas_in_sync)
        metrics["grad_norm/desc"] = desc_norm / replicas
        metrics["grad_norm/head"] = head_norm / replicas
        metrics["learning_rate"] = lr / replicas
        return metrics

    def _reduce(self, per_replica: dict) -> dict:
        import tensorflow as tf

        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    # -- public --------------------------------------------------------------

    def step(self, images, labels) -> dict[str, float]:
        """Train on one global batch (tensors, or a distributed batch); returns its metrics."""
        import tensorflow as tf

        if self._train_fn is None:
            @tf.function
            def train_fn(images, labels):
                return self._reduce(self.strategy.run(self._replica_step, args=(images, labels)))

            self._train_fn = train_fn
        metrics = self._train_fn(images, labels)
        self.step_counter.assign_add(1)
        return {k: float(v.numpy()) for k, v in metrics.items()}

    def losses(self, images, labels, *, training: bool = True) -> dict[str, float]:
        """Losses and accuracies of one global batch, without updating the weights.

        ``training=True`` runs batch normalization on batch statistics (as in
        :meth:`step`); ``False`` uses the moving averages (validation).
        """
        import tensorflow as tf

        if training not in self._loss_fn:
            @tf.function
            def loss_fn(images, labels):
                per_replica = self.strategy.run(lambda i, l: self._replica_losses(i, l, training)[1], args=(images, labels))
                return self._reduce(per_replica)

            self._loss_fn[training] = loss_fn
        return {k: float(v.numpy()) for k, v in self._loss_fn[training](images, labels).items()}

    @property
    def global_step(self) -> int:
        return int(self.step_counter.numpy())

    def restore(self, path: str | None = None) -> str | None:
        """Restore ``path`` or the latest checkpoint of the run directory; returns its path (None: none)."""
        if path is None:
            if self.manager is None:
                raise ValueError("restore() without a path needs a Trainer with out_dir")
            path = self.manager.latest_checkpoint
        if path is None:
            return None
        self.checkpoint.restore(path).assert_existing_objects_matched()
        logger.info("restored %s (step %d)", path, self.global_step)
        return path

    def save(self) -> str:
        """Write a checkpoint numbered by the step counter; returns its path."""
        if self.manager is None:
            raise ValueError("save() needs a Trainer with out_dir")
        path = self.manager.save(checkpoint_number=self.global_step)
        logger.info("saved checkpoint %s", path)
        return path


# --------------------------------------------------------------------------- run directory


def load_run_config(run_dir: str | os.PathLike) -> TrainConfig:
    """The resolved configuration recorded in a run directory."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    return train_config_from_dict(load_yaml(path.read_text(), f"run config {path}") or {})


def latest_checkpoint(path: str | os.PathLike) -> tuple[Path, str]:
    """(run directory, checkpoint prefix) for a run directory, its ``checkpoints/``
    folder or a checkpoint prefix (``.../ckpt-N``)."""
    import tensorflow as tf

    p = Path(path)
    if (p / RUN_CONFIG).is_file():
        run_dir, folder = p, p / CHECKPOINT_DIR
    elif p.name == CHECKPOINT_DIR and (p.parent / RUN_CONFIG).is_file():
        run_dir, folder = p.parent, p
    elif Path(f"{p}.index").is_file() and (p.parent.parent / RUN_CONFIG).is_file():
        return p.parent.parent, str(p)
    else:
        raise FileNotFoundError(f"{p}: not a training run directory, its checkpoints/ or a checkpoint prefix")
    prefix = tf.train.latest_checkpoint(str(folder))
    if prefix is None:
        raise FileNotFoundError(f"{folder}: no checkpoint yet")
    return run_dir, prefix


def _record_config(run_dir: Path, config: TrainConfig) -> None:
    """Write config.yaml, refusing a run directory trained with another model."""
    path = run_dir / RUN_CONFIG
    new = train_config_to_dict(config)
    if path.is_file():
        old = load_yaml(path.read_text(), f"run config {path}") or {}
        model_diff = diff_configs(old.get("model", {}), new["model"], "model")
        if old.get("data", {}).get("num_classes") != new["data"]["num_classes"]:
            model_diff.append(f"data.num_classes: {old.get('data', {}).get('num_classes')!r} != {new['data']['num_classes']!r}")
        if model_diff:
            raise ConfigError(f"{run_dir} was trained with another model; differences: {'; '.join(model_diff)}")
        other = diff_configs(old, new)
        if other:
            logger.warning("resuming %s with a changed configuration: %s", run_dir, "; ".join(other))
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(new, sort_keys=False))
    os.replace(tmp, path)


# --------------------------------------------------------------------------- training loop


def _datasets(config: TrainConfig):
    from training.delf.data import make_dataset, resolve_pattern

    d = config.data
    train_files = resolve_pattern(d.train_pattern, d.dir)
    if not train_files:
        raise FileNotFoundError(f"data.train_pattern: no file matches {d.train_pattern!r} in {d.dir or '.'}")
    train_ds = make_dataset(
        train_files, batch_size=config.training.batch_size, image_size=d.image_size,
        augmentation=config.augmentation, shuffle=True, repeat=True, shuffle_buffer=d.shuffle_buffer, seed=d.seed,
    )
    val_ds = None
    if d.validation_pattern and config.training.validation_batches > 0:
        val_files = resolve_pattern(d.validation_pattern, d.dir)
        if val_files:
            val_ds = make_dataset(
                val_files, batch_size=config.training.batch_size, image_size=d.image_size, augmentation=None,
                shuffle=False, repeat=False, drop_remainder=True,
            ).take(config.training.validation_batches)
        else:
            logger.warning("data.validation_pattern %r matches nothing: no validation", d.validation_pattern)
    return train_ds, val_ds


def _validate(trainer: Trainer, dataset, writer, step: int) -> dict[str, float]:
    import numpy as np
    import tensorflow as tf

    sums: dict[str, float] = {}
    batches = 0
    first = next(iter(dataset.take(1)), (None,))[0]
    for images, labels in trainer.strategy.experimental_distribute_dataset(dataset):
        metrics = trainer.losses(images, labels, training=False)
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + v
        batches += 1
    if not batches:
        logger.warning("validation set is smaller than one batch: no validation")
        return {}
    result = {f"validation/{k}": v / batches for k, v in sums.items() if not k.startswith("attention/")}
    with writer.as_default(step=step):
        for k, v in result.items():
            tf.summary.scalar(k.split("/", 1)[1], v)
        attention = trainer.network.forward(first, training=False).attention
        peak = tf.reduce_max(attention, axis=[1, 2, 3], keepdims=True)
        tf.summary.image("attention", attention / (peak + 1e-6), max_outputs=4)
        tf.summary.image("images", (first + 1.0) / 2.0, max_outputs=4)
    writer.flush()
    logger.info("step %d validation: %s", step, "  ".join(f"{k}={v:.4f}" for k, v in sorted(result.items())))
    return {k: float(np.float64(v)) for k, v in result.items()}


def train(
    config: TrainConfig, out_dir: str | os.PathLike, *, max_steps: int | None = None
) -> TrainResult:
    """Train (or resume) the run in ``out_dir`` until ``training.max_steps``.

    ``max_steps`` stops earlier (the schedule still follows ``training.max_steps``):
    for tests and for spreading a run over several jobs.  ``max_steps=0`` on a new run
    saves the initial weights as checkpoint 0 (a random-weights baseline to export).
    """
    import tensorflow as tf

    run_dir = Path(out_dir)
    num_classes = resolve_num_classes(config)
    config = replace(config, data=replace(config.data, num_classes=num_classes))
    _record_config(run_dir, config)
    trainer = Trainer(config, num_classes=num_classes, out_dir=run_dir)
    trainer.restore()
    stop = config.training.max_steps if max_steps is None else min(max_steps, config.training.max_steps)
    if trainer.global_step >= stop:
        if trainer.manager.latest_checkpoint is None:
            # max_steps=0: save the initialization (a random-weights baseline to export).
            return TrainResult(trainer.global_step, [], trainer.save())
        logger.info("%s: already at step %d (>= %d), nothing to do", run_dir, trainer.global_step, stop)
        return TrainResult(trainer.global_step, [], trainer.manager.latest_checkpoint)
    from training.delf.model import describe

    logger.info("network: %s", describe(trainer.network))
    train_ds, val_ds = _datasets(config)
    iterator = iter(trainer.strategy.experimental_distribute_dataset(train_ds))
    writers = {name: tf.summary.create_file_writer(str(run_dir / LOG_DIR / name)) for name in ("train", "validation")}
    t = config.training
    history: list[dict] = []
    sums: dict[str, float] = {}
    count = 0
    times: list[float] = []
    checkpoint = None
    logger.info("training from step %d to %d (global batch %d, %d replica(s))",
                trainer.global_step, stop, t.batch_size, trainer.strategy.num_replicas_in_sync)
    with open(run_dir / HISTORY, "a") as log:
        while trainer.global_step < stop:
            images, labels = next(iterator)
            start = time.perf_counter()
            metrics = trainer.step(images, labels)
            elapsed = time.perf_counter() - start
            first_step = not times and count == 0
            if not first_step:
                times.append(elapsed)
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            step = trainer.global_step
            if step % t.log_every == 0 or step == stop or step == 1:
                entry = {"step": step, **{k: v / count for k, v in sums.items()}}
                if times:
                    recent = times[-count:] if len(times) >= count else times
                    entry["perf/seconds_per_step"] = sum(recent) / len(recent)
                    entry["perf/images_per_second"] = t.batch_size / entry["perf/seconds_per_step"]
                with writers["train"].as_default(step=step):
                    for k, v in entry.items():
                        if k != "step":
                            tf.summary.scalar(k, v)
                history.append(entry)
                log.write(json.dumps(entry) + "\n")
                log.flush()
                logger.info("step %d  %s", step, "  ".join(
                    f"{k.split('/', 1)[-1] if k.startswith('loss/') else k}={v:.4g}"
                    for k, v in entry.items() if k in (
                        "loss/total", "loss/desc", "loss/attention", "loss/reconstruction",
                        "accuracy/desc", "accuracy/attention", "learning_rate", "perf/seconds_per_step")))
                sums, count = {}, 0
            if val_ds is not None and (step % t.validate_every == 0 or step == stop):
                entry = {"step": step, **_validate(trainer, val_ds, writers["validation"], step)}
                history.append(entry)
                log.write(json.dumps(entry) + "\n")
                log.flush()
            if step % t.checkpoint_every == 0 or step == stop:
                checkpoint = trainer.save()
    for writer in writers.values():
        writer.flush()
    return TrainResult(
        trainer.global_step, history, checkpoint, sum(times) / len(times) if times else None
    )


def main(argv: Sequence[str] | None = None) -> TrainResult:
    parser = argparse.ArgumentParser(prog="python -m training.delf.train", description="Train DELF.")
    parser.add_argument("--config", action="append", default=[],
                        help="YAML config file or shipped recipe name (repeatable; later wins)")
    parser.add_argument("--data", help="TFRecord directory written by prepare_data (sets data.dir)")
    parser.add_argument("--out", required=True, help="run directory (created; rerun to resume)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. training.max_steps=1000")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop at this step without changing the schedule (resume later)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.set)
    if args.data:
        overrides.insert(0, f"data.dir={json.dumps(str(args.data))}")
    config = load_train_config(args.config, overrides)
    result = train(config, args.out, max_steps=args.max_steps)
    train_entries = [h for h in result.history if "loss/total" in h]
    last = train_entries[-1] if train_entries else {}
    print(f"{args.out}: step {result.step}, loss {last.get('loss/total', float('nan')):.4f}, "
          f"desc acc {last.get('accuracy/desc', float('nan')):.3f}, "
          f"attention acc {last.get('accuracy/attention', float('nan')):.3f}, "
          f"{result.seconds_per_step or float('nan'):.3f} s/step")
    return result


if __name__ == "__main__":
    main()
