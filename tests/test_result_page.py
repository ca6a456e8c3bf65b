"""``d2r query --image Q --out DIR --report``: one query's results as a page with thumbnails,
database images found through the folder recorded at build time or ``--images``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

SMALL = ("--config", "rootsift-asmk-star", "--set", "features.rootsift.max_features=80",
         "--set", "codebook.num_words=32")


def d2r(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2r", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def photos_index(tiny_dataset, tmp_path_factory):
    """A folder of photos (one name needing HTML escaping) and an index built from it."""
    work = tmp_path_factory.mktemp("page")
    photos = work / "photos"
    shutil.copytree(tiny_dataset / "jpg", photos)
    first = sorted(photos.glob("*.jpg"))[0]
    first.rename(photos / "a<b>&c.jpg")
    proc = d2r("build-index", "--images", photos, "--out", work / "index", *SMALL)
    assert proc.returncode == 0, proc.stderr
    return photos, work / "index"


def _cards(page: str) -> list[str]:
    return re.findall(r"<div class='card[^']*'>.*?</div></div>", page)


def test_page_shows_the_query_and_the_top_results(photos_index, tmp_path):
    photos, index = photos_index
    query = photos / "a<b>&c.jpg"
    out = tmp_path / "res"
    proc = d2r("query", "--index", index, "--image", query, "--out", out, "--report",
               "--rerank", "8", "--top", "5")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == len(list(photos.glob("*.jpg"))) and rows[0]["name"] == "a<b>&c.jpg"
    page = (out / "report" / "index.html").read_text()
    assert "a&lt;b&gt;&amp;c.jpg" in page and "a<b>" not in page
    assert len(_cards(page)) == 5
    assert sorted(p.name for p in (out / "report" / "thumbs").iterdir()) == \
        ["query.jpg", *(f"r{rank:04d}.jpg" for rank in range(1, 6))]
    assert "spatially verified" in page and "class='card verified'" in page


def test_only_verified_results_are_framed_green(photos_index, tmp_path):
    """Under a decision that refuses every pair, no card is green though many have >= 8
    matched points; the page names the rule and shows each card's score."""
    photos, index = photos_index
    out = tmp_path / "res"
    proc = d2r("query", "--index", index, "--image", photos / "a<b>&c.jpg", "--out", out,
               "--report", "--rerank", "8", "--top", "8", "--set", "verification.decision=nfa",
               "--set", "verification.min_score=100000")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())
    assert rows[0]["inliers"] >= 8 and not any(row["verified"] for row in rows)
    page = (out / "report" / "index.html").read_text()
    cards = _cards(page)
    assert len(cards) == 8 and not any("class='card verified'" in card for card in cards)
    assert all("-log10 NFA" in card for card in cards)
    assert ("0 verified (a-contrario, -log10 NFA &gt;= 100000: at most 1 false in 10^100000 "
            "unrelated pairs expected) come first") in page

    proc = d2r("query", "--index", index, "--image", photos / "a<b>&c.jpg", "--out", out,
               "--report", "--rerank", "8", "--top", "8")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "results.json").read_text())
    cards = _cards((out / "report" / "index.html").read_text())
    green = [("class='card verified'" in card) for card in cards]
    assert green == [row["verified"] for row in rows[:8]] and any(green) and not all(green)


def test_moved_images_get_a_card_and_images_finds_them(photos_index, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(photos_index[0], photos)
    index = tmp_path / "index"
    built = d2r("build-index", "--images", photos, "--out", index, *SMALL)
    assert built.returncode == 0, built.stderr
    assert json.loads((index / "index.json").read_text())["images_root"] == str(photos.resolve())
    moved = photos.rename(tmp_path / "moved")
    query = moved / "a<b>&c.jpg"

    lost = d2r("query", "--index", index, "--image", query, "--out", tmp_path / "a", "--report",
               "--top", "3")
    assert lost.returncode == 0, lost.stderr
    page = (tmp_path / "a" / "report" / "index.html").read_text()
    assert page.count("class='missing'") == 3 and "photos" in page

    found = d2r("query", "--index", index, "--image", query, "--out", tmp_path / "b", "--report",
                "--top", "3", "--images", moved)
    assert found.returncode == 0, found.stderr
    page = (tmp_path / "b" / "report" / "index.html").read_text()
    assert "class='missing'" not in page and len(_cards(page)) == 3


def test_report_needs_out(photos_index):
    photos, index = photos_index
    proc = d2r("query", "--index", index, "--image", sorted(photos.glob("*.jpg"))[0], "--report")
    assert proc.returncode == 2 and "--report needs --out" in proc.stderr
