"""Tests for d2r.report: files, relative links, frame colours, PR curves, browser rendering."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from d2r import report as R
from d2r import verification as V
from d2r.datasets.revisited import load_revisited
from d2r.evaluation import compute_map, protocol_gnd
from d2r.types import Boxes, LocalFeatures

TOP_K = 6


class _Page(HTMLParser):
    """Links and result figures of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.figures: list[dict[str, str]] = []
        self.styles = ""
        self._in_style = False
        self.text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.links.append(attrs[key])
        if tag == "figure":
            self.figures.append(attrs)
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles += data
        self.text += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _expected_label(gnd, db_id: int, protocol: str) -> str:
    easy, hard, junk = set(gnd.easy.tolist()), set(gnd.hard.tolist()), set(gnd.junk.tolist())
    positive = {"easy": easy, "medium": easy | hard, "hard": hard}[protocol]
    ignored = {"easy": junk | hard, "medium": junk, "hard": junk | easy}[protocol]
    if db_id in positive:
        return "positive"
    return "junk" if db_id in ignored else "negative"


@pytest.fixture(scope="module")
def dataset(tiny_dataset):
    return load_revisited(tiny_dataset)


@pytest.fixture(scope="module")
def ranking(dataset):
    rng = np.random.default_rng(0)
    return np.stack([rng.permutation(dataset.num_db) for _ in range(dataset.num_queries)])


@pytest.fixture(scope="module")
def written(dataset, ranking, tmp_path_factory):
    """A report with regions on some thumbnails and two match views."""
    out = tmp_path_factory.mktemp("report")
    regions = {int(i): Boxes(np.array([[5, 5, 60, 40]]), np.array([0.9])) for i in ranking[0, :3]}
    rng = np.random.default_rng(1)
    verification = {
        (0, int(ranking[0, 0])): (rng.uniform(0, 100, (12, 2)), rng.uniform(0, 100, (12, 2))),
        (1, int(ranking[1, 2])): (np.zeros((0, 2)), np.zeros((0, 2))),
    }
    index = R.write_report(out, dataset=dataset, ranks=ranking, top_k=TOP_K, regions=regions,
                           verification=verification)
    return out, index, verification


def test_files_exist(written, dataset, ranking):
    out, index, verification = written
    assert index == out / "index.html"
    for protocol in ("easy", "medium", "hard"):
        with Image.open(out / f"pr_{protocol}.png") as png:
            assert png.format == "PNG" and png.size[0] > 100
    for q in range(dataset.num_queries):
        assert (out / "thumbs" / f"q_{q:04d}.jpg").is_file()
    for db_id in np.unique(ranking[:, :TOP_K]):
        with Image.open(out / "thumbs" / f"db_{db_id:06d}.jpg") as jpeg:
            assert jpeg.format == "JPEG" and max(jpeg.size) <= 192
    assert len(list((out / "thumbs").glob("db_*.jpg"))) == len(np.unique(ranking[:, :TOP_K]))
    for q, db_id in verification:
        assert (out / "matches" / f"q{q:04d}_db{db_id:06d}.html").is_file()
        assert (out / "matches" / f"q{q:04d}_db{db_id:06d}.jpg").is_file()


def test_links_are_relative_and_resolve(written):
    out, index, _ = written
    pages = [index, *sorted((out / "matches").glob("*.html"))]
    assert len(pages) == 3
    seen = 0
    for page in pages:
        for link in _parse(page).links:
            parsed = urlparse(link)
            assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
            assert (page.parent / parsed.path).resolve().is_file(), f"{page.name}: {link}"
            seen += 1
    assert seen > 30


def test_frame_colours_match_labels(written, dataset, ranking):
    _, index, _ = written
    page = _parse(index)
    for label, colour in R.LABEL_COLOURS.items():
        assert f"figure.{label} img {{ border-color: {colour}; }}" in page.styles
    assert len(page.figures) == dataset.num_queries * TOP_K
    labels = set()
    for n, fig in enumerate(page.figures):
        q, pos = divmod(n, TOP_K)
        db_id = int(fig["data-db-id"])
        assert db_id == ranking[q, pos]
        expected = _expected_label(dataset.gnd[q], db_id, "medium")
        assert fig["data-label"] == expected
        assert fig["class"].split() == ["result", expected]
        labels.add(expected)
    assert {"positive", "negative"} <= labels


def test_aps_and_match_counts_shown(written, dataset, ranking):
    _, index, verification = written
    text = _parse(index).text
    aps = compute_map(ranking, protocol_gnd(dataset.gnd, "medium"))[1]
    shown = [float(v) for v in re.findall(r"AP \(medium\) ([0-9.]+)", text)]
    np.testing.assert_allclose(shown, 100 * aps, atol=0.051)
    assert "12 inliers" in text and "0 inliers" in text


def test_hard_protocol_labels(dataset, ranking, tmp_path):
    index = R.write_report(tmp_path, dataset=dataset, ranks=ranking[:, :4], top_k=4,
                           protocol="hard", metrics={"note": "given"})
    page = _parse(index)
    for n, fig in enumerate(page.figures):
        q = n // 4
        assert fig["data-label"] == _expected_label(dataset.gnd[q], int(fig["data-db-id"]), "hard")
    assert "given" in page.text


def test_label_results_padding(dataset):
    ranks = np.full((dataset.num_queries, 3), -1)
    ranks[:, 0] = dataset.gnd[0].easy[0]
    labels = R.label_results(ranks, dataset)
    assert labels[0, 0] == "positive" and labels[0, 1] == ""


def test_precision_recall_hand_checked():
    # Junk id 3 is removed: [1, 2, 0] -> positives at ranks 0 and 2.
    curves = R.precision_recall(np.array([[3, 1, 2, 0, -1], [5, 6, 7, 8, 9]]),
                                [{"ok": [1, 0], "junk": [3]}, {"ok": [], "junk": []}])
    assert curves.shape == (2, 101)
    assert curves[0, 0] == 1.0 and curves[0, 50] == 1.0
    np.testing.assert_allclose(curves[0, 51:], 2 / 3)
    assert np.isnan(curves[1]).all()
    missing = R.precision_recall(np.array([[0, 1]]), [{"ok": [0, 7]}])
    assert missing[0, 50] == 1.0 and missing[0, 51] == 0.0


def test_report_matches_from_rerank():
    rng = np.random.default_rng(2)
    desc = rng.normal(size=(20, 8)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    xy = rng.uniform(0, 200, (20, 2))

    def feats(loc):
        return LocalFeatures(loc, desc, np.ones(20), np.ones(20), (200, 200))

    query, db = feats(xy), [feats(xy + 5.0), feats(rng.uniform(0, 200, (20, 2)))]
    results = V.rerank_batch([query], (np.array([[1, 0]]), np.array([[0.5, 0.4]])), db)
    pairs = R.report_matches(results, [query], db, top_k=2)
    q_xy, d_xy = pairs[(0, 0)]
    assert q_xy.shape == (20, 2)
    np.testing.assert_allclose(d_xy - q_xy, 5.0, atol=1e-4)
    assert set(pairs) == {(0, 0), (0, 1)}


def test_rejects_bad_input(dataset, ranking, tmp_path):
    with pytest.raises(ValueError, match="ranks must have shape"):
        R.write_report(tmp_path, dataset=dataset, ranks=ranking[:1])
    bad = ranking.copy()
    bad[0, 0] = dataset.num_db
    with pytest.raises(ValueError, match="outside"):
        R.write_report(tmp_path, dataset=dataset, ranks=bad)
    with pytest.raises(ValueError, match="protocol"):
        R.write_report(tmp_path, dataset=dataset, ranks=ranking, protocol="medium-hard")
    with pytest.raises(ValueError, match="aps must have shape"):
        R.write_report(tmp_path, dataset=dataset, ranks=ranking, aps=[0.5])
    with pytest.raises(TypeError, match="verification"):
        R.write_report(tmp_path, dataset=dataset, ranks=ranking, top_k=1,
                       verification={(0, int(ranking[0, 0])): np.zeros((3, 4))})


_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_browser(written, tmp_path):
    """Chromium loads the page from file:// and paints thumbnails and coloured frames."""
    _, index, _ = written
    shot = tmp_path / "index.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={shot}",
             "--window-size=1200,1400", index.as_uri()],
            check=True, timeout=120, capture_output=True,
        )
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels @ np.array([65536, 256, 1]))) > 1000
    for label in ("positive", "negative"):
        rgb = np.array([int(R.LABEL_COLOURS[label][i:i + 2], 16) for i in (1, 3, 5)])
        assert np.any(np.abs(pixels - rgb).max(axis=1) <= 8), label
