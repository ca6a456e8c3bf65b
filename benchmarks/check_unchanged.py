"""Prove that a d2r tree behaves bit-identically to an old commit.

    python benchmarks/check_unchanged.py --old d9a1d7b [--new TREE] [--work DIR]
        [--size default|small|tiny] [--cnn-size tiny] [--cnn-max-side 128]
        [--presets NAME ...] [--skip-cnn] [--json FILE]

The old commit is exported (``git archive``) from the repository this script
lives in into a temporary directory.  The synthetic benchmark is generated once
with the old tree; then, for every configuration, an index is built and the
benchmark queried with the old tree and with the new one (default: the working
tree this script lives in), each in a subprocess whose ``d2r`` is imported from
that tree.  Compared bit for bit: every ``.npy`` array and ``names.json`` under
``INDEX/search`` (and the list of its files), the arrays under
``INDEX/codebooks``, the ``kind`` / ``num_images`` / ``config`` of
``index.json``, and the query results ``ranks.npy`` / ``scores.npy`` /
``metrics.json``.

``--presets`` keeps the configurations of the named presets (``rootsift-asmk-star``
selects every configuration built on it) or with the given names (as printed).

One line per configuration, ``IDENTICAL`` or ``DIFFERENT: <what>`` (or
``FAILED: <what>`` when a command failed), then a summary line.  The exit
status is 0 only when every configuration is identical.

CNN presets run with random weights on a smaller benchmark (``--cnn-size``)
with downscaled images (``--cnn-max-side``); the multi-resolution ones at two
small resolutions.  Left out: the DELF presets (they need a DELF model).
``rootsift-d2r-r-asmk-star`` needs a trained detector, so it runs with grid
regions instead.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

SCRIPT_TREE = Path(__file__).resolve().parents[1]

GRID = ("regions.source=grid",)
REGIONAL_SEARCH = GRID + ("aggregation.regional_search=true",)
MULTIRES_SETS = ("features.cnn.resolutions=[96,128]",)

LEFT_OUT = {
    "delf-asmk-star": "needs a DELF model, features.delf.model_path",
    "delf-d2r-asmk-star-regional-search": "needs a DELF model and a detector",
    "delf-d2r-r-asmk-star": "needs a DELF model and a detector",
}
"""Presets that cannot run without downloaded weights, and why."""

SUBSTITUTED = {
    "rootsift-d2r-r-asmk-star": "runs with regions.source=grid: its detector needs trained weights",
}
"""Presets run with a changed setting, and why."""


@dataclass(frozen=True)
class Case:
    """One configuration: a preset, its build-time and query-time ``--set`` values."""

    name: str
    preset: str
    build_sets: tuple[str, ...] = ()
    query_sets: tuple[str, ...] = ()
    rerank: int = 0
    cnn: bool = False


LOCAL_CASES = (
    Case("base", "base", rerank=20),
    Case("rootsift-asmk-star", "rootsift-asmk-star", rerank=20),
    Case("rootsift-asmk-star/query-no-db-norm", "rootsift-asmk-star",
         query_sets=("aggregation.database_normalization=false",), rerank=20),
    Case("rootsift-asmk-star/asmk", "rootsift-asmk-star",
         ("aggregation.method=asmk",), rerank=20),
    Case("rootsift-vlad", "rootsift-vlad", rerank=20),
    Case("rootsift-d2r-r-asmk-star/grid", "rootsift-d2r-r-asmk-star", GRID, rerank=20),
    Case("rootsift-asmk-star/regional-search", "rootsift-asmk-star", REGIONAL_SEARCH,
         rerank=20),
    Case("rootsift-asmk-star/regional-search/query-avg", "rootsift-asmk-star",
         REGIONAL_SEARCH, ("aggregation.pooling=avg",), rerank=20),
    Case("rootsift-asmk-star/grid/r_asmk", "rootsift-asmk-star",
         GRID + ("aggregation.method=r_asmk",), rerank=20),
    Case("rootsift-asmk-star/grid/naive_r_asmk", "rootsift-asmk-star",
         GRID + ("aggregation.method=naive_r_asmk",), rerank=20),
    Case("rootsift-asmk-star/grid/r_vlad", "rootsift-asmk-star",
         GRID + ("aggregation.method=r_vlad",), rerank=20),
)

CNN_CASES = tuple(
    Case(preset, preset, MULTIRES_SETS if preset.startswith("multires") else (), cnn=True)
    for preset in (
        "mac-vgg16", "rmac-vgg16", "rmac-vgg16-qe", "rmac-vgg16-aml", "rmac-vgg16-aml-qe",
        "multires-rmac-resnet101", "multires-rmac-resnet101-cam",
        "regional-vgg16", "regional-vgg16-qe",
    )
)


BOOKKEEPING = {".verified.json"}
"""Files of an index that record when its arrays were last hashed, not what they hold."""


class CommandFailed(RuntimeError):
    """A d2r subprocess exited with an error."""


class Tree:
    """A d2r source tree whose subprocesses import ``d2r`` from that tree only."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root.resolve()
        self.env = dict(os.environ, PYTHONPATH=str(self.root), PYTHONHASHSEED="0")

    def run(self, *args: str) -> None:
        """``python ARGS`` in the tree; raise :class:`CommandFailed` with its output's tail."""
        done = subprocess.run([sys.executable, *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True)
        if done.returncode:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise CommandFailed(f"{self.label} tree: {' '.join(args[:2])} exited with "
                                f"{done.returncode}: " + " | ".join(tail))

    def check_import(self) -> None:
        """Assert that ``import d2r`` in this tree's environment finds this tree's package
        (an editable install must not shadow it)."""
        done = subprocess.run(
            [sys.executable, "-c", "import d2r; print(d2r.__file__)"],
            cwd=self.root, env=self.env, capture_output=True, text=True, check=True)
        found = Path(done.stdout.strip()).resolve()
        expected = self.root / "d2r" / "__init__.py"
        if found != expected:
            raise SystemExit(f"{self.label} tree imports d2r from {found}, not {expected}")
        print(f"{self.label}: d2r from {found}")


def export_commit(repo: Path, commit: str, dest: Path) -> str:
    """Write ``commit``'s files into ``dest`` (``git archive``); return its full hash."""
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{commit}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="tar")
    return sha


def generate_benchmark(tree: Tree, out: Path, size: str) -> Path:
    """The synthetic benchmark of ``size`` (seed 0) in ``out``, made by ``tree`` (``d2r
    synthetic``, or ``python -m d2r.datasets.synthetic`` in trees older than ``d2r/cli/``)."""
    command = (("-m", "d2r", "synthetic") if (tree.root / "d2r" / "cli" / "synthetic.py").exists()
               else ("-m", "d2r.datasets.synthetic"))
    tree.run(*command, "--out", str(out), "--size", size, "--seed", "0", "--overwrite")
    return out


def build_and_query(tree: Tree, case: Case, data: Path, out: Path, extra_sets: tuple) -> None:
    """Build ``case``'s index into ``out/index`` and query ``data`` into ``out/results``."""
    if out.exists():
        shutil.rmtree(out)
    index, results = out / "index", out / "results"
    sets = [arg for value in extra_sets + case.build_sets for arg in ("--set", value)]
    tree.run("-m", "d2r.build_index", "--dataset-dir", str(data), "--out", str(index),
             "--config", case.preset, *sets)
    query = [arg for value in case.query_sets for arg in ("--set", value)]
    if case.rerank:
        query += ["--rerank", str(case.rerank)]
    tree.run("-m", "d2r.query", "--index", str(index), "--dataset-dir", str(data),
             "--out", str(results), *query)


def compare_npy(old: Path, new: Path, label: str) -> list[str]:
    """Differences between two ``.npy`` files: dtype, shape, then the raw bytes."""
    a, b = np.load(old, allow_pickle=False), np.load(new, allow_pickle=False)
    if a.dtype != b.dtype:
        return [f"{label}: dtype {a.dtype} vs {b.dtype}"]
    if a.shape != b.shape:
        return [f"{label}: shape {a.shape} vs {b.shape}"]
    a_bytes, b_bytes = a.tobytes(), b.tobytes()
    if a_bytes == b_bytes:
        return []
    if a.size == 0 or a.dtype.itemsize == 0:
        return [f"{label}: contents differ"]
    rows = [np.frombuffer(data, np.uint8).reshape(a.size, a.dtype.itemsize)
            for data in (a_bytes, b_bytes)]
    unequal = int(np.count_nonzero((rows[0] != rows[1]).any(axis=1)))
    return [f"{label}: {unequal} of {a.size} values differ"]


def compare_file(old: Path, new: Path, label: str) -> list[str]:
    """Differences between two files: a ``.npy`` by :func:`compare_npy`, others byte for byte."""
    if old.suffix == ".npy":
        return compare_npy(old, new, label)
    return [] if old.read_bytes() == new.read_bytes() else [f"{label}: contents differ"]


def compare_dir(old: Path, new: Path, label: str, compared) -> list[str]:
    """Differences between two directories: their lists of files, then every file for
    which ``compared(relative_path)`` is true."""
    def listing(root: Path) -> set[str]:  # not the bookkeeping of verified arrays
        return {p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.is_file() and p.name not in BOOKKEEPING}

    old_files, new_files = listing(old), listing(new)
    diffs = [f"{label}/{name}: only in old" for name in sorted(old_files - new_files)]
    diffs += [f"{label}/{name}: only in new" for name in sorted(new_files - old_files)]
    for name in sorted(old_files & new_files):
        if compared(name):
            diffs += compare_file(old / name, new / name, f"{label}/{name}")
    return diffs


def dict_diff(a, b, prefix: str = "") -> list[str]:
    """Dotted keys at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in dict_diff(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)]
    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    return [] if same else [f"{prefix or 'value'}: {a!r} vs {b!r}"]


def compare_manifest(old: Path, new: Path) -> list[str]:
    """Differences in ``index.json``'s ``kind``, ``num_images`` and ``config``."""
    a, b = (json.loads(path.read_text()) for path in (old, new))
    return [f"index.json {d}" for key in ("kind", "num_images", "config")
            for d in dict_diff(a.get(key), b.get(key), key)]


def compare_outputs(old: Path, new: Path) -> list[str]:
    """Every difference between the old and new tree's index and results of one case."""
    diffs = compare_dir(old / "index/search", new / "index/search", "search",
                        lambda name: name.endswith(".npy") or name == "names.json")
    if (old / "index/codebooks").exists() or (new / "index/codebooks").exists():
        diffs += compare_dir(old / "index/codebooks", new / "index/codebooks", "codebooks",
                             lambda name: name.endswith(".npy"))
    diffs += compare_manifest(old / "index/index.json", new / "index/index.json")
    for name in ("ranks.npy", "scores.npy"):
        diffs += compare_npy(old / "results" / name, new / "results" / name, f"results/{name}")
    metrics = [json.loads((root / "results/metrics.json").read_text()) for root in (old, new)]
    diffs += [f"metrics.json {d}" for d in dict_diff(*metrics)]
    return diffs


def check_case(case: Case, trees: tuple[Tree, Tree], data: Path, work: Path,
               extra_sets: tuple) -> dict:
    """Run ``case`` with both trees and compare; a result record with ``status``."""
    start = time.monotonic()
    outs = [work / tree.label / case.name.replace("/", "__") for tree in trees]
    try:
        for tree, out in zip(trees, outs):
            build_and_query(tree, case, data, out, extra_sets)
        diffs = compare_outputs(*outs)
        status = "DIFFERENT" if diffs else "IDENTICAL"
    except (CommandFailed, OSError, ValueError) as exc:
        diffs, status = [str(exc)], "FAILED"
    return dict(asdict(case), status=status, differences=diffs,
                seconds=round(time.monotonic() - start, 1))


def select_cases(presets: list[str] | None, skip_cnn: bool) -> list[Case]:
    """The configurations to run: all, or those whose preset or name is in ``presets``."""
    cases = list(LOCAL_CASES) + ([] if skip_cnn else list(CNN_CASES))
    if presets is not None:
        unknown = set(presets) - {c.preset for c in cases} - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"no configuration for {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.preset in presets or c.name in presets]
    return cases


def report_line(result: dict) -> str:
    """``NAME: IDENTICAL`` or ``NAME: DIFFERENT: ...`` (at most five differences shown)."""
    line = f"{result['name']}: {result['status']}"
    if result["differences"]:
        shown = result["differences"][:5]
        more = len(result["differences"]) - len(shown)
        line += ": " + "; ".join(shown) + (f"; and {more} more" if more else "")
    return line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="old commit (in this script's repository)")
    parser.add_argument("--new", type=Path, default=SCRIPT_TREE,
                        help="new d2r tree (default: the tree this script lives in)")
    parser.add_argument("--work", type=Path,
                        help="keep data, indexes and results here (default: a temporary "
                             "directory, removed at the end)")
    parser.add_argument("--size", choices=("default", "small", "tiny"), default="default",
                        help="synthetic benchmark size of the RootSIFT configurations")
    parser.add_argument("--cnn-size", choices=("default", "small", "tiny"), default="tiny",
                        help="synthetic benchmark size of the CNN presets (default tiny)")
    parser.add_argument("--cnn-max-side", type=int, default=128,
                        help="images.max_side of the CNN presets (default 128)")
    parser.add_argument("--presets", nargs="+", metavar="NAME",
                        help="only these presets or configuration names")
    parser.add_argument("--skip-cnn", action="store_true", help="leave the CNN presets out")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, old_root: Path, work: Path) -> list[dict]:
    """Check every selected configuration; print one line each as it finishes."""
    trees = (Tree("old", old_root), Tree("new", args.new))
    for tree in trees:
        tree.check_import()
    for preset, why in LEFT_OUT.items():
        print(f"left out: {preset} ({why})")
    for preset, why in SUBSTITUTED.items():
        print(f"note: {preset} {why}")
    cases = select_cases(args.presets, args.skip_cnn)
    datasets = {size: generate_benchmark(trees[0], work / "data" / size, size)
                for size in {args.cnn_size if case.cnn else args.size for case in cases}}
    results = []
    for case in cases:
        data = datasets[args.cnn_size if case.cnn else args.size]
        extra = (f"images.max_side={args.cnn_max_side}",) if case.cnn else ()
        results.append(check_case(case, trees, data, work, extra))
        print(report_line(results[-1]), flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="d2r-check-") as tmp:
        old_root = Path(tmp) / "old-tree"
        sha = export_commit(SCRIPT_TREE, args.old, old_root)
        work = args.work or Path(tmp) / "work"
        work.mkdir(parents=True, exist_ok=True)
        results = run_all(args, old_root, work)
    identical = sum(r["status"] == "IDENTICAL" for r in results)
    seconds = time.monotonic() - start
    print(f"{identical}/{len(results)} configurations identical "
          f"(old {sha[:10]} vs new {args.new.resolve()}) in {seconds:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(
            dict(old=args.old, old_sha=sha, new=str(args.new.resolve()), size=args.size,
                 cnn_size=args.cnn_size, cnn_max_side=args.cnn_max_side,
                 seconds=round(seconds, 1), all_identical=identical == len(results),
                 results=results), indent=2) + "\n")
    return 0 if results and identical == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
