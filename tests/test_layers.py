"""The layering rules of docs/architecture.md, as rules over every module of the package (no
lists of modules to keep up to date):

* the stages import only downward (:data:`STAGES`, the order data flows);
* only ``d2r.cli`` defines commands, and nothing outside it imports it (the ``python -m``
  shims and ``d2r.__main__`` excepted: their only code calls a command);
* importing any module loads no TensorFlow (models are imported when they are built);
* the package never imports ``training/``;
* ``distributed/`` uses only public names of the rest and reads no storage file itself;
* the drivers never dispatch on a method or extractor name.
"""

import ast
import importlib
import pathlib
import pkgutil
import subprocess
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "d2r"

STAGES = ("core", "protos", "io", "evaluation", "datasets", "features", "regions", "cnn",
          "encoding", "index", "spatial", "methods", "report", "pipeline", "distributed",
          "api", "service", "cli")
"""The package's stages, lowest first: a module may import its own stage and those before it.
``core`` is the top-level modules (types, config, errors, registry, progress, checks, extras);
``api`` is :mod:`d2r.api` and the package itself (``import d2r``)."""

ENTRY_SHIMS = {"d2r.__main__", "d2r.build_index", "d2r.query"}
"""``python -m d2r``, ``python -m d2r.build_index``, ``python -m d2r.query``: each only runs a
command of ``d2r.cli``."""


def _modules():
    """(dotted name, path) of every module of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _stage(module: str) -> str:
    """The stage of a module of d2r: its folder, ``core`` for a top-level module."""
    parts = module.split(".")
    if module in ("d2r", "d2r.api"):
        return "api"
    if module in ENTRY_SHIMS:
        return "cli"
    if len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "core"


def _imports(path: pathlib.Path):
    """(imported module, imported names, line) of every absolute import in ``path``, lazy ones
    inside functions included."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = tuple(alias.name for alias in node.names)
            yield node.module, names, node.lineno
            for name in names:  # "from d2r.cli import arguments" imports d2r.cli.arguments
                if (PACKAGE.parent / (node.module + "." + name).replace(".", "/")).with_suffix(
                        ".py").exists():
                    yield f"{node.module}.{name}", (), node.lineno


def test_every_folder_of_the_package_is_a_stage():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(STAGES), sorted(folders - set(STAGES))


def test_stages_import_only_downward():
    offenders = []
    for module, path in _modules():
        own = STAGES.index(_stage(module))
        for imported, _, line in _imports(path):
            if imported == "d2r" or not imported.startswith("d2r."):
                continue
            if imported == "d2r.__version__" or imported.startswith("d2r.__version__"):
                continue
            target = _stage(imported)
            if STAGES.index(target) > own:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({_stage(module)}) "
                                 f"imports {imported} ({target})")
    assert offenders == []


def _defines_a_command(path: pathlib.Path) -> list[str]:
    """What in ``path`` makes it a command: a top-level ``main`` or a ``__main__`` block."""
    found = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            found.append(f"def main (line {node.lineno})")
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            found.append(f"__main__ block (line {node.lineno})")
    return found


def test_only_the_cli_defines_commands():
    offenders = [f"{path.relative_to(PACKAGE.parent)}: {what}"
                 for module, path in _modules()
                 if _stage(module) != "cli" or module in ENTRY_SHIMS
                 for what in _defines_a_command(path)
                 if not (module in ENTRY_SHIMS and what.startswith("__main__"))]
    assert offenders == []
    commands = [m for m, p in _modules() if m.startswith("d2r.cli.") and _defines_a_command(p)]
    assert len(commands) >= 13


def test_entry_shims_only_run_a_command():
    for module, path in _modules():
        if module not in ENTRY_SHIMS:
            continue
        imported = {m for m, _, _ in _imports(path)}
        assert imported and all(m.startswith("d2r.cli.") for m in imported), (module, imported)


def test_nothing_outside_the_cli_imports_it():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {imported}"
                 for module, path in _modules()
                 if _stage(module) != "cli"
                 for imported, _, line in _imports(path)
                 if imported == "d2r.cli" or imported.startswith("d2r.cli.")]
    assert offenders == []


def test_no_module_loads_tensorflow_on_import():
    """Importing every module of the package (and looking TF-backed extractors and methods up
    in their registries) loads no TensorFlow: models are imported when one is built."""
    code = (
        "import importlib, pkgutil, sys, d2r\n"
        "for m in pkgutil.walk_packages(d2r.__path__, 'd2r.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)\n"
        "from d2r.features.registry import extractor_class, make_extractor\n"
        "from d2r.config import load_config\n"
        "from d2r.methods import method_class\n"
        "extractor_class('delf'), extractor_class('cnn'), method_class('rmac')\n"
        "make_extractor(load_config('rootsift-asmk-star'))\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'tensorflow_hub', 'official', 'torch'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_module_is_importable():
    import d2r

    names = [m.name for m in pkgutil.walk_packages(d2r.__path__, "d2r.")
             if not m.name.endswith("__main__")]
    assert len(names) > 100
    for name in names:
        importlib.import_module(name)


def test_package_never_imports_training():
    offenders = [f"{path}: {m}" for _, path in _modules() for m, _, _ in _imports(path)
                 if m.split(".")[0] == "training"]
    assert offenders == []


def test_distributed_uses_public_apis_only():
    """``distributed/`` reads no storage file itself and imports no private name of d2r."""
    offenders = []
    for path in (PACKAGE / "distributed").glob("*.py"):
        for module, names, _ in _imports(path):
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


def test_the_stage_rule_catches_an_upward_import(tmp_path):
    """The rule is live: an index module importing the pipeline is an offence."""
    assert STAGES.index(_stage("d2r.index.layout")) < STAGES.index(_stage("d2r.pipeline.run"))
    assert _stage("d2r.types") == "core" and _stage("d2r") == "api"
    assert _stage("d2r.build_index") == "cli" and _stage("d2r.cli.query") == "cli"


def test_the_service_reaches_the_index_through_the_api():
    """The server opens, searches, adds and removes through :class:`d2r.Index` only: from the
    pipeline it imports nothing but error types."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {imported}.{name}"
                 for module, path in _modules() if _stage(module) == "service"
                 for imported, names, line in _imports(path)
                 if imported.startswith("d2r.pipeline")
                 for name in names if not name.endswith("Error")]
    assert offenders == []


def test_commands_and_the_service_search_through_the_api():
    """One way to open and search an index: the commands and the server use :class:`d2r.Index`
    (``open_index``, ``search``, ``evaluate``), never the searcher or the query runner."""
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {imported}"
                 for module, path in _modules() if _stage(module) in ("cli", "service")
                 for imported, _, line in _imports(path)
                 if imported in ("d2r.pipeline.searcher", "d2r.pipeline.run")]
    assert offenders == []


def test_every_command_module_is_a_d2r_command():
    """``d2r <name>`` runs ``d2r.cli.<name>``: every command module is listed, and every
    listed (or renamed) command has its module."""
    from d2r.cli.dispatch import COMMANDS, RENAMED, command_module

    commands = {m for m, p in _modules() if _stage(m) == "cli" and m.startswith("d2r.cli.")
                and _defines_a_command(p)} - {"d2r.cli.dispatch"}
    assert commands == {command_module(name) for name in COMMANDS}
    assert {command_module(name) for name in RENAMED} <= commands
