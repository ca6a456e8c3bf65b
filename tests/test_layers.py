"""The layering rule of DESIGN.md: the core never imports TensorFlow; the package never imports training/."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "d2r"

CORE = [
    "d2r", "d2r.types", "d2r.config", "d2r.codebook", "d2r.aggregation", "d2r.encode",
    "d2r.index.inverted", "d2r.index.regional", "d2r.index.global_index", "d2r.index.storage",
    "d2r.verification", "d2r.evaluation", "d2r.datasets.revisited", "d2r.datasets.classic",
    "d2r.datasets.safe_pickle", "d2r.datasets.synthetic", "d2r.io.images",
    "d2r.io.feature_store", "d2r.io.delf_files", "d2r.io.delf_config", "d2r.protos",
    "d2r.detection.regions", "d2r.features.base", "d2r.features.rootsift", "d2r.features.pca",
    "d2r.features.receptive_field",
    # the pipelines import the models lazily too, so indexing with RootSIFT needs no TF
    "d2r.extract", "d2r.build_index", "d2r.searcher", "d2r.query", "d2r.evaluate", "d2r.report",
    "d2r.demo", "d2r.cli",
]


def test_core_imports_without_tensorflow():
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'tensorflow_hub', 'official'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_package_never_imports_training():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}: {n}" for n in names if n.split(".")[0] == "training"]
    assert offenders == []
