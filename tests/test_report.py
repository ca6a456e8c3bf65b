"""Tests for the benchmark report (d2r.report.benchmark, .drawing, .tables, .settings): files,
relative links, border colours, PR curves, metrics before and after re-ranking, the settings
block, thumbnail sizes, browser rendering."""

from __future__ import annotations

import datetime
import json
import logging
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from d2r.report import benchmark as R
from d2r.report.settings import run_settings
from d2r.report.tables import metrics_table
from d2r.spatial import reranking
from d2r.config import load_config
from d2r.datasets.revisited import load_revisited
from d2r.evaluation.metrics import compute_map, protocol_gnd
from d2r.types import Boxes, LocalFeatures

TOP_K = 6


class _Page(HTMLParser):
    """Links and result figures of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.figures: list[dict[str, str]] = []
        self.cells: list[tuple[dict[str, str], str]] = []
        self.ids: list[str] = []
        self._cell: dict[str, str] | None = None
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
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "td" and "data-metric" in attrs:
            self._cell = attrs
            self.cells.append((attrs, ""))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False
        if tag == "td":
            self._cell = None

    def handle_data(self, data):
        if self._in_style:
            self.styles += data
        elif self._cell is not None:
            attrs, text = self.cells[-1]
            self.cells[-1] = (attrs, text + data)
        self.text += data

    def metric(self, cls: str, protocol: str, metric: str) -> str:
        """Text of the metrics table cell of column group ``cls`` (before, after, change)."""
        found = [text for attrs, text in self.cells if cls in attrs["class"].split()
                 and attrs["data-protocol"] == protocol and attrs["data-metric"] == metric]
        assert len(found) == 1, (cls, protocol, metric, found)
        return found[0]


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
    for db_id in np.unique(ranking[:, :TOP_K]):  # stored once, at the match-view size
        with Image.open(out / "thumbs" / f"db_{db_id:06d}.jpg") as jpeg:
            assert jpeg.format == "JPEG" and max(jpeg.size) <= 256
    assert len(list((out / "thumbs").glob("db_*.jpg"))) == len(np.unique(ranking[:, :TOP_K]))
    page = index.read_text(encoding="utf-8")
    shown = [(int(w), int(h)) for w, h in
             re.findall(r'src="thumbs/db_\d+\.jpg" width="(\d+)" height="(\d+)"', page)]
    assert len(shown) == dataset.num_queries * TOP_K and max(max(s) for s in shown) == 192
    assert not list((out / "matches").glob("*.jpg"))  # lines are SVG over the thumbnails
    for q, db_id in verification:
        match = out / "matches" / f"q{q:04d}.html"
        assert f"db{db_id:06d}" in _parse(match).ids


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
    assert "12 matched points" in text and "0 matched points" in text
    match = _parse(written[0] / "matches" / "q0000.html")
    assert "12 matched points" in match.text


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
    results = reranking.rerank_batch([query], (np.array([[1, 0]]), np.array([[0.5, 0.4]])), db)
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


def _expected_metrics(ranks, gnd, protocol):
    """mAP and mP@1/5/10 in percent, straight from compute_map."""
    mean_ap, _, mean_pr, _ = compute_map(ranks, protocol_gnd(gnd, protocol), [1, 5, 10])
    return {"mAP": 100 * mean_ap, **{f"mP@{k}": 100 * v for k, v in zip((1, 5, 10), mean_pr)}}


def test_metrics_before_and_after_reranking(dataset, ranking, tmp_path):
    before_ranks = ranking[:, ::-1].copy()
    after = R._as_benchmark(dataset).evaluate(ranking)
    before = R._as_benchmark(dataset).evaluate(before_ranks)
    index = R.write_report(tmp_path, dataset=dataset, ranks=ranking, top_k=2, metrics=after,
                           initial_metrics=before)
    page = _parse(index)
    for protocol in ("easy", "medium", "hard"):
        want_after = _expected_metrics(ranking, dataset.gnd, protocol)
        want_before = _expected_metrics(before_ranks, dataset.gnd, protocol)
        for metric in ("mAP", "mP@1", "mP@5", "mP@10"):
            shown_before = float(page.metric("before", protocol, metric))
            shown_after = float(page.metric("after", protocol, metric))
            shown_change = float(page.metric("change", protocol, metric))
            assert shown_before == pytest.approx(want_before[metric], abs=0.006)
            assert shown_after == pytest.approx(want_after[metric], abs=0.006)
            assert shown_change == pytest.approx(want_after[metric] - want_before[metric],
                                                 abs=0.011)
    assert "Before re-ranking" in page.text and "After re-ranking" in page.text
    # without initial metrics: one column group, nothing about a before
    single = _parse(R.write_report(tmp_path / "single", dataset=dataset, ranks=ranking, top_k=2))
    assert float(single.metric("after", "medium", "mAP")) == pytest.approx(
        _expected_metrics(ranking, dataset.gnd, "medium")["mAP"], abs=0.006)
    assert not [a for a, _ in single.cells if "before" in a["class"]]
    assert "Before re-ranking" not in single.text


def test_classic_metrics_before_and_after(tmp_path):
    table = metrics_table({"mAP": 60.0, "mP@1": 80.0}, {"mAP": 50.5, "mP@1": 80.0})
    page = _Page()
    page.feed(table)
    assert page.metric("before", "all", "mAP") == "50.50"
    assert page.metric("after", "all", "mAP") == "60.00"
    assert page.metric("change", "all", "mAP") == "+9.50"
    assert page.metric("change", "all", "mP@1") == "+0.00"
    assert "All queries" in page.text


def test_settings_block_is_shown_and_escaped(dataset, ranking, tmp_path):
    settings = [("Index", "/data/<script>alert(1)</script> & co"), ("Re-ranking", "top 100")]
    index = R.write_report(tmp_path, dataset=dataset, ranks=ranking, top_k=2, settings=settings)
    raw = index.read_text(encoding="utf-8")
    assert "<script>" not in raw
    assert "/data/&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in raw
    text = _parse(index).text
    assert "How this was produced" in text and "top 100" in text


def test_run_settings_in_plain_words():
    config = load_config("rootsift-asmk-star", overrides=["verification.rerank=100"])
    built = load_config("rootsift-asmk-star")
    from d2r.config import to_dict

    manifest = {"config": to_dict(built), "num_images": 200, "d2r_version": "0.1.0",
                "codebook": {"sha256": "ab" * 32, "num_words": 1024, "dim": 128,
                             "path": "codebooks/0123456789abcdef"}}
    rows = dict(run_settings(config, manifest, index="/x/index", num_queries=40, num_db=200,
                             when=datetime.datetime(2024, 5, 6, 7, 8)))
    assert rows["Index"] == "/x/index"
    assert rows["Preset"].startswith("rootsift-asmk-star")
    assert rows["Changed for this run"] == "verification.rerank=100"
    assert "1024 words" in rows["Visual words (codebook)"]
    assert "abababababab" in rows["Visual words (codebook)"]
    assert "codebooks/0123456789abcdef" in rows["Visual words (codebook)"]
    assert "ASMK*" in rows["Image similarity"]
    assert "top 100" in rows["Re-ranking"]
    assert ("the verified ones (a-contrario, -log10 NFA >= 3: at most 1 false in 1,000 "
            "unrelated pairs expected) move up, highest score first; the others checked follow "
            "by inliers, then search order") in rows["Re-ranking"]
    old = dict(run_settings(load_config("rootsift-asmk-star", overrides=[
        "verification.rerank=100", "verification.decision=inliers"]), manifest))
    assert ("the verified ones (>= 8 inliers: about 22 false in 1,000 unrelated pairs measured) "
            "move up, most inliers first; the others keep their search order") in old["Re-ranking"]
    assert rows["Queries"] == "40" and rows["Database images"] == "200"
    assert rows["Date"].startswith("2024-05-06 07:08")
    # a build that is no preset: the closest one and what differs
    other = to_dict(load_config("rootsift-asmk-star", overrides=["codebook.num_words=64"]))
    rows = dict(run_settings(built, {"config": other}))
    assert rows["Preset"] == "rootsift-asmk-star, changed: codebook.num_words=64"
    assert rows["Re-ranking"] == "none (initial ranking only)"


def test_plain_words(written):
    out, index, _ = written
    for page in [index, *(out / "matches").glob("*.html")]:
        text = _parse(page).text
        assert not re.search(r"\bframes?\b", text, re.IGNORECASE), page.name
        assert "inlier" not in text.lower(), page.name
    text = _parse(index).text
    assert "Green border: correct match (positive under the Medium protocol)" in text
    assert "red: wrong" in text and "grey: ignored" in text


def test_thumbnails_are_small(written, dataset):
    """Every JPEG is plain (no EXIF / ICC) and a few KB for its size."""
    out, _, _ = written
    jpegs = sorted((out / "thumbs").glob("*.jpg"))
    assert len(jpegs) > dataset.num_queries
    for path in jpegs:
        with Image.open(path) as jpeg:
            assert max(jpeg.size) <= 256
            assert "exif" not in jpeg.info and "icc_profile" not in jpeg.info
            assert JpegImagePlugin.get_sampling(jpeg) == 2  # 4:2:0: chroma at half resolution
            limit = 3 * 1024 + 0.3 * jpeg.width * jpeg.height  # ~2.4 bits per pixel
        assert path.stat().st_size < limit, (path.name, path.stat().st_size)
        assert path.stat().st_size < 20 * 1024, path.name


def test_report_progress_is_logged(dataset, ranking, tmp_path, caplog):
    """Off a terminal the loop over queries logs progress lines (``report: 2/4 query ...``)."""
    from d2r.progress import set_interval

    set_interval(1e-9)  # a line at every query
    try:
        with caplog.at_level(logging.INFO, logger="d2r.progress"):
            R.write_report(tmp_path, dataset=dataset, ranks=ranking, top_k=1)
    finally:
        set_interval(None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("report: ")]
    assert any(f"/{dataset.num_queries} query" in line for line in lines), lines


@pytest.fixture(scope="module")
def reranked_run(tiny_dataset, tmp_path_factory):
    """run_dataset on a tiny index without and with spatial re-ranking (the second one with
    the report)."""
    from d2r.pipeline.build import build_index
    from d2r.pipeline.run import run_dataset
    from d2r.pipeline.searcher import Searcher
    from d2r.pipeline.sources import ImageSource

    root = tmp_path_factory.mktemp("run")
    config = load_config("rootsift-asmk-star", overrides=["codebook.num_words=64"])
    build_index(config, ImageSource.from_dataset(tiny_dataset), root / "index")
    with Searcher(root / "index", overrides=["verification.rerank=0"]) as searcher:
        run_dataset(searcher, tiny_dataset, root / "plain", show_progress=False)
    with Searcher(root / "index", overrides=["verification.rerank=10"]) as searcher:
        run_dataset(searcher, tiny_dataset, root / "reranked", report=True, show_progress=False)
    return root


def test_run_dataset_reports_initial_and_reranked(reranked_run, tiny_dataset):
    plain, reranked = reranked_run / "plain", reranked_run / "reranked"
    assert not (plain / "metrics_initial.json").exists()  # no re-ranking, nothing before it
    after = json.loads((reranked / "metrics.json").read_text())
    before = json.loads((reranked / "metrics_initial.json").read_text())
    # metrics.json keeps its shape; the initial metrics are those of the run without re-ranking
    assert set(after) == {"easy", "medium", "hard"}
    assert all(set(v) == {"mAP", "mP@1", "mP@5", "mP@10"} for v in after.values())
    assert before == json.loads((plain / "metrics.json").read_text())
    gnd = load_revisited(tiny_dataset).gnd
    for name, ranks in (("plain", np.load(plain / "ranks.npy")),
                        ("reranked", np.load(reranked / "ranks.npy"))):
        want = {p: _expected_metrics(ranks, gnd, p) for p in ("easy", "medium", "hard")}
        got = before if name == "plain" else after
        for p in want:
            for metric, value in want[p].items():
                assert got[p][metric] == pytest.approx(value)
    page = _parse(reranked / "report" / "index.html")
    for p in ("easy", "medium", "hard"):
        for metric in ("mAP", "mP@10"):
            assert float(page.metric("before", p, metric)) == pytest.approx(
                before[p][metric], abs=0.006)
            assert float(page.metric("after", p, metric)) == pytest.approx(
                after[p][metric], abs=0.006)
    text = page.text
    assert "How this was produced" in text
    assert str((reranked_run / "index").resolve()) in text
    assert "rootsift-asmk-star" in text and "codebook.num_words=64" in text
    assert "top 10 results" in text and "64 words" in text
    assert list((reranked / "report" / "matches").glob("q*.html"))


_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_headless_browser(written, tmp_path):
    """Chromium loads the page from file:// and paints thumbnails and coloured borders."""
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
