"""The layering rules of docs/architecture.md: the core never imports TensorFlow, the package
never imports training/, library modules never import a command-line module, ``distributed/``
uses only public APIs of the feature store and the indexes, and no driver dispatches on a
method or extractor name."""

import ast
import pathlib
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "d2r"

CORE = [
    "d2r", "d2r.types", "d2r.config", "d2r.codebook", "d2r.aggregation", "d2r.sources",
    "d2r.results", "d2r.index.inverted", "d2r.index.regional", "d2r.index.global_index",
    "d2r.index.storage", "d2r.index.registry", "d2r.index.layout", "d2r.index.region_vectors",
    "d2r.index.global_local", "d2r.methods", "d2r.methods.kernels", "d2r.methods.cnn",
    "d2r.features.registry",
    "d2r.verification", "d2r.evaluation", "d2r.datasets.revisited", "d2r.datasets.classic",
    "d2r.datasets.safe_pickle", "d2r.datasets.synthetic", "d2r.io.images",
    "d2r.io.feature_store", "d2r.io.delf_files", "d2r.io.delf_config", "d2r.protos",
    "d2r.detection.regions", "d2r.features.base", "d2r.features.rootsift", "d2r.features.pca",
    "d2r.features.receptive_field",
    # the pipelines import the models lazily too, so indexing with RootSIFT needs no TF
    "d2r.pipeline.extraction", "d2r.pipeline.build", "d2r.pipeline.searcher", "d2r.pipeline.run",
    "d2r.extract", "d2r.build_index", "d2r.query", "d2r.evaluate", "d2r.report",
    "d2r.demo", "d2r.cli", "d2r.commands", "d2r.progress", "d2r.extras", "d2r.errors",
    "d2r.verify", "d2r.index.segmented", "d2r.index.merge", "d2r.pipeline.update",
    "d2r.add", "d2r.remove", "d2r.compact", "d2r.serve", "d2r.server",
]
"""Modules that RootSIFT indexing, search and evaluation import (the CNN methods' module
imports TensorFlow only when a model is built)."""

CLI_MODULES = {"d2r.cli", "d2r.extract", "d2r.build_index", "d2r.query", "d2r.evaluate",
               "d2r.demo", "d2r.global_.learn", "d2r.verify", "d2r.commands", "d2r.__main__",
               "d2r.add", "d2r.remove", "d2r.compact", "d2r.serve"}
"""Command-line entry modules (``python -m ...``) and their argparse helpers."""


def test_core_imports_without_tensorflow():
    """The core, the RootSIFT pipeline, and registry lookups of TF-backed extractors and
    methods load no TensorFlow."""
    code = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "from d2r.features.registry import extractor_class, make_extractor\n"
        "from d2r.config import load_config\n"
        "from d2r.methods import method_class\n"
        "extractor_class('delf'), extractor_class('cnn'), method_class('rmac')\n"
        "make_extractor(load_config('rootsift-asmk-star'))\n"
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


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, *, skip_main: bool = False):
    """(module, imported names) of every import in ``path`` (inside ``main`` skipped on request)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = set()
    if skip_main:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                skipped |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(alias.name for alias in node.names)
            yield node.module, names
            for name in names:  # "from d2r import cli"
                yield f"{node.module}.{name}", ()


def test_library_never_imports_a_cli_module():
    """Only entry modules import entry modules; a library module's own ``main`` may."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if _module_name(path) in CLI_MODULES:
            continue
        offenders += [f"{path.relative_to(PACKAGE.parent)}: {module}"
                      for module, _ in _imports(path, skip_main=True) if module in CLI_MODULES]
    assert offenders == []


def test_distributed_uses_public_apis_only():
    """``distributed/`` reads no storage file itself and imports no private name of d2r."""
    offenders = []
    for path in (PACKAGE / "distributed").glob("*.py"):
        for module, names in _imports(path):
            if module.split(".")[0] == "h5py":
                offenders.append(f"{path.name}: imports h5py")
            if module.startswith("d2r.") and not module.startswith("d2r.distributed"):
                offenders += [f"{path.name}: {module}.{n}" for n in names if n.startswith("_")]
    assert offenders == []


def test_drivers_do_not_dispatch_on_names():
    """Method and extractor choices go through the registries: no name tests in the drivers."""
    patterns = ('backend == "cnn"', "backend == 'cnn'", 'endswith("_star")', "_INDEX_CLASSES",
                'method == "', "kind == \"")
    drivers = [PACKAGE / "pipeline", PACKAGE / "distributed"]
    offenders = [f"{path.relative_to(PACKAGE.parent)}: {p}"
                 for folder in drivers for path in folder.glob("*.py")
                 for p in patterns if p in path.read_text()]
    assert offenders == []
