"""How far each local feature survives a change of scale and a rotation: real photographs
matched against their own downscaled or rotated copies.

For each shipped photograph (scikit-image's astronaut, coffee, chelsea, rocket) and each
feature (its preset's extractor, ``--max-keypoints`` of them), the photo is verified against
its copy scaled by 1, 0.75, 0.5, 0.35, 0.25 (``cv2.INTER_AREA``) and against its copy
rotated by 0, 15, 30, 60, 90 degrees about the centre (reflected border), with the preset's
matching and the default decision.  Printed: the mean one-to-one inliers and how many of
the four pairs verify.  No timing: it may run beside other work.

    python data/download.py xfeat disk
    python benchmarks/feature_invariance.py --features rootsift xfeat disk
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np
import skimage.data

from d2r.config import load_config
from d2r.features.registry import make_extractor
from d2r.spatial.ransac import verify_pair
from d2r.spatial.reranking import rerank_options

PRESETS = {"rootsift": "rootsift-asmk-star", "xfeat": "xfeat-asmk-star",
           "disk": "disk-asmk-star"}
WEIGHTS = {"xfeat": "parameters/xfeat/xfeat.pt", "disk": "parameters/disk/disk-depth-save.pth"}
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SCALES = (1.0, 0.75, 0.5, 0.35, 0.25)
ANGLES = (0, 15, 30, 60, 90)


def scaled(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return image.copy()
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(image, turn, (w, h), borderMode=cv2.BORDER_REFLECT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", nargs="+", choices=sorted(PRESETS),
                        default=["rootsift", "xfeat"])
    parser.add_argument("--max-keypoints", type=int, default=1000)
    args = parser.parse_args(argv)
    photos = [np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]) for name in PHOTOS]
    sides = {}
    for name in args.features:
        overrides = [] if name == "rootsift" else [
            f"features.{name}.weights_path={WEIGHTS[name]}",
            f"features.{name}.max_keypoints={args.max_keypoints}"]
        if name == "rootsift":
            overrides.append(f"features.rootsift.max_features={args.max_keypoints}")
        config = load_config(PRESETS[name], overrides=overrides)
        options = {k: v for k, v in rerank_options(config.verification).items() if k != "top_n"}
        sides[name] = (make_extractor(config), options)
    for label, values, change in (("scale", SCALES, scaled), ("degrees", ANGLES, rotated)):
        print(f"\n| {label} | " + " | ".join(f"{n}: inliers, verified" for n in sides) + " |")
        print("|---:|" + "---:|" * len(sides))
        for value in values:
            cells = []
            for extractor, options in sides.values():
                pairs = [verify_pair(extractor.extract(p),
                                     extractor.extract(np.ascontiguousarray(change(p, value))),
                                     **options) for p in photos]
                cells.append(f"{np.mean([v.num_inliers for v in pairs]):.0f}, "
                             f"{sum(v.verified for v in pairs)}/{len(pairs)}")
            print(f"| {value:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
