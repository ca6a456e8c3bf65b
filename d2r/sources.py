"""Images to process: names (the ids used in stores and indexes) and the files they live in.

An :class:`ImageSource` comes from a directory, a list file or a benchmark's
database; extraction, indexing and the Ray drivers all take one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from d2r.datasets.benchmarks import load_benchmark

__all__ = ["ImageSource"]


@dataclass(frozen=True)
class ImageSource:
    """Images to process: ``names[i]`` (the id used in stores and indexes) lives at ``paths[i]``.

    ``rotations`` is empty (no image is turned) or holds, per image, the clockwise
    degrees (a multiple of 90) that turn it upright before feature extraction.
    """

    names: tuple[str, ...]
    paths: tuple[Path, ...]
    rotations: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.rotations and len(self.rotations) != len(self.names):
            raise ValueError(f"{len(self.rotations)} rotations for {len(self.names)} images")

    def __len__(self) -> int:
        return len(self.names)

    def rotation(self, i: int) -> int:
        """Clockwise degrees that turn image ``i`` upright (0 without rotations)."""
        return self.rotations[i] if self.rotations else 0

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> "ImageSource":
        """Every image below ``directory`` (recursive, sorted), named by relative path."""
        from d2r.io.images import list_images

        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"image directory {root} does not exist")
        names = list_images(root)
        if not names:
            raise ValueError(f"image directory {root} holds no images")
        return cls(tuple(names), tuple(root / n for n in names))

    @classmethod
    def from_list(cls, list_file: str | os.PathLike) -> "ImageSource":
        """One image path per line; relative paths are relative to the list file's folder."""
        path = Path(list_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read image list {path}: {exc}") from exc
        names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        if not names:
            raise ValueError(f"image list {path} names no images")
        return cls(tuple(names), tuple(path.parent / n for n in names))

    @classmethod
    def from_dataset(
        cls,
        dataset_dir: str | os.PathLike,
        *,
        benchmark: str = "auto",
        rotations: str | os.PathLike | None = None,
        distractor_list: str | os.PathLike | None = None,
        distractor_root: str | os.PathLike | None = None,
    ) -> ImageSource:
        """The database of a benchmark (:func:`~d2r.datasets.benchmarks.load_benchmark`), with
        its images' rotations.

        Names are the benchmark's ``db_names`` (for revisited with R1M: base images,
        then the distractors in list order, as
        :func:`d2r.datasets.revisited.with_distractors` numbers them).
        """
        dataset = load_benchmark(dataset_dir, kind=benchmark, rotations=rotations,
                               distractor_list=distractor_list, distractor_root=distractor_root)
        turns = tuple(dataset.rotation(i) for i in range(dataset.num_db))
        return cls(tuple(dataset.db_names),
                   tuple(dataset.db_path(i) for i in range(dataset.num_db)),
                   turns if any(turns) else ())

    def shard(self, index: int, count: int) -> ImageSource:
        """Every ``count``-th image starting at ``index`` (``--shard index/count``)."""
        return ImageSource(self.names[index::count], self.paths[index::count],
                           self.rotations[index::count])
