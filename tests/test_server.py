"""``d2r serve``: every endpoint and its error paths against a real server process on a
loopback port, and concurrent searches while the index is updated."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")
from PIL import Image  # noqa: E402

import d2r  # noqa: E402
from d2r.config import load_config  # noqa: E402
from d2r.pipeline.build import build_index  # noqa: E402
from d2r.pipeline.run import run_image  # noqa: E402
from d2r.pipeline.searcher import Searcher  # noqa: E402
from d2r.pipeline.sources import ImageSource  # noqa: E402
from tests._server import SMALL, Server, photo_index  # noqa: E402

TOKEN = "s3cret"
REFUSING = ["verification.decision=nfa", "verification.min_score=100000"]
"""A decision no pair of the tiny benchmark passes, however many inliers it has."""


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    return photo_index(tiny_dataset, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    """A writable server (token, small limits) over a copy of the index."""
    index = built.with_name("writable")
    shutil.copytree(built, index, symlinks=True)
    with Server(index, "--allow-writes", "--token", TOKEN, "--max-upload-mb", "1",
                "--max-pixels", "200000") as running:
        running.index = index
        yield running


@pytest.fixture(scope="module")
def readonly(built):
    with Server(built) as running:
        yield running


@pytest.fixture(scope="module")
def query(tiny_dataset) -> Path:
    return sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg"))[0]


def _search(server, image: Path | bytes, **fields):
    data = image.read_bytes() if isinstance(image, Path) else image
    return requests.post(server.url + "/search", files={"image": ("q.jpg", data)},
                         data={k: str(v) for k, v in fields.items()}, timeout=60)


def _error(response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "Traceback" not in response.text
    for word in words:
        assert word in message, message
    return message


def _png(width: int, height: int, value: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8) if value is None \
        else np.full((height, width, 3), value, np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def test_health(readonly, built):
    assert requests.get(readonly.url + "/health", timeout=10).json() == {
        "status": "ok", "images": 16}


def test_search_answers_what_d2r_query_answers(readonly, built, query):
    response = _search(readonly, query, top=5, rerank=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["timing"]) == {"extract_s", "search_s", "rerank_s", "total_s"}
    with Searcher(built, overrides=["verification.rerank=10"]) as searcher:
        expected = run_image(searcher, query)[:5]
    assert body["results"] == expected
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    assert all("inliers" in r for r in body["results"])
    for row in body["results"]:  # the default decision: -log10 NFA >= 3 and >= 8 inliers
        assert not row["verified"] or (row["inliers"] >= 8 and row["verification_score"] >= 3)
        assert isinstance(row["verification_score"], float)
    assert body["results"][0]["verified"]


def test_search_defaults_box_and_matches(readonly, query):
    body = _search(readonly, query).json()
    assert len(body["results"]) == 16  # top 20 by default, 16 images
    assert "inliers" not in body["results"][0]  # the index's rerank: 0
    assert not any(r["verified"] for r in body["results"])
    assert "verification_score" not in body["results"][0]
    boxed = _search(readonly, query, box="-10,-10,190,130", rerank=16, matches="true").json()
    verified = [r for r in boxed["results"] if r.get("inliers", 0) > 0]
    assert verified and boxed["results"] != body["results"]
    first = verified[0]
    assert len(first["matches"]) == min(first["inliers"], 300)
    assert len(first["matches"][0]) == 4 and len(first["image_size"]) == 2
    plain = _search(readonly, query, rerank=8).json()["results"]
    expanded = _search(readonly, query, rerank=8, expand=3).json()["results"]
    assert any(r["verified"] for r in plain)  # so the query was expanded
    # the checked head keeps its order; the expanded query ranks only the rest
    assert [r["name"] for r in expanded[:8]] == [r["name"] for r in plain[:8]]
    assert sorted(r["name"] for r in expanded) == sorted(r["name"] for r in plain)


@pytest.mark.parametrize("fields,words", [
    ({"box": "1,2,3"}, ["box must be x1,y1,x2,y2"]),
    ({"box": "5000,5000,6000,6000"}, ["misses the", "image"]),
    ({"top": "-1"}, ["top must be between 0 (all) and"]),
    ({"top": "many"}, ["bad request", "top"]),
    ({"rerank": "-1"}, ["rerank must be between"]),
    ({"expand": "3"}, ["query_expansion=3", "needs verification.rerank > 0"]),
])
def test_bad_search_fields_are_400(readonly, query, fields, words):
    _error(_search(readonly, query, **fields), 400, *words)


def test_top_follows_the_rule_of_d2r_query(readonly, built, query):
    """top=0 gives every image of the index, and the server ranks them as run_image does."""
    searcher = Searcher(built)
    every = len(searcher.names)
    response = _search(readonly, query, top=0)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == every
    response = _search(readonly, query, top=every)
    assert [r["name"] for r in response.json()["results"]] == \
        [r["name"] for r in run_image(searcher, query, k=every)]


def test_bad_uploads(server, readonly, query):
    _error(_search(readonly, b"not an image at all"), 400, "not an image")
    _error(_search(readonly, b""), 400, "is empty")
    _error(_search(readonly, _png(64, 64, value=255)), 400, "no local features")
    _error(requests.post(readonly.url + "/search", timeout=10), 400, "bad request", "image")
    _error(_search(server, b"x" * ((1 << 20) + 1000)), 413, "q.jpg is larger than the 1.0 MiB "
                                                             "upload limit")
    _error(_search(server, b"x" * (2 << 20)), 413, "request is larger than the 1.1 MiB limit")
    _error(_search(server, _png(500, 500)), 413, "500x500 pixels")


def test_writes_need_permission_and_the_token(server, readonly, query):
    photo = {"image": ("new.jpg", query.read_bytes())}
    _error(requests.post(readonly.url + "/images", files=photo, timeout=60), 403, "--allow-writes")
    _error(requests.delete(readonly.url + "/images/synth_db_000001.jpg", timeout=60), 403)
    _error(requests.post(server.url + "/images", files=photo, timeout=60), 401, "Bearer")
    _error(requests.post(server.url + "/images", files=photo, timeout=60,
                         headers={"Authorization": "Bearer wrong"}), 401)
    _error(requests.delete(server.url + "/images/synth_db_000001.jpg", timeout=60), 401)


def test_add_search_and_remove_an_image(server, query):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    photo = {"image": ("upload.jpg", query.read_bytes())}
    before = requests.get(server.url + "/health", timeout=10).json()["images"]
    added = requests.post(server.url + "/images", files=photo, data={"name": "the query.jpg"},
                          headers=auth, timeout=60)
    assert added.status_code == 201, added.text
    assert added.json()["name"] == "the query.jpg" and added.json()["features"] > 0
    assert (server.index / "uploads" / "the query.jpg").read_bytes() == query.read_bytes()
    assert requests.get(server.url + "/health", timeout=10).json()["images"] == before + 1
    assert _search(server, query).json()["results"][0]["name"] == "the query.jpg"
    thumb = requests.get(server.url + "/images/the query.jpg", timeout=10)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    _error(requests.post(server.url + "/images", files=photo, data={"name": "the query.jpg"},
                         headers=auth, timeout=60), 409, "already in the index")
    _error(requests.post(server.url + "/images", files=photo, data={"name": "../escape.jpg"},
                         headers=auth, timeout=60), 400, "without '/'")
    assert not (server.index.parent / "escape.jpg").exists()
    _error(requests.delete(server.url + "/images/nope.jpg", headers=auth, timeout=60), 404,
           "no image named 'nope.jpg'")
    removed = requests.delete(server.url + "/images/the query.jpg", headers=auth, timeout=60)
    assert removed.status_code == 200 and removed.json() == {"name": "the query.jpg",
                                                            "removed": True}
    assert requests.get(server.url + "/health", timeout=10).json()["images"] == before
    names = [r["name"] for r in _search(server, query).json()["results"]]
    assert "the query.jpg" not in names


def test_thumbnails_page_and_openapi(readonly):
    thumb = requests.get(readonly.url + "/images/synth_db_000003.jpg", timeout=10)
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 320
    _error(requests.get(readonly.url + "/images/nope.jpg", timeout=10), 404, "nope.jpg")
    page = requests.get(readonly.url + "/", timeout=10)
    assert page.status_code == 200 and "<title>d2r" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")  # offline
    spec = requests.get(readonly.url + "/openapi.json", timeout=10).json()
    assert {"/health", "/search", "/images", "/images/{name}"} <= set(spec["paths"])
    assert requests.get(readonly.url + "/docs", timeout=10).status_code == 200


def test_concurrent_searches_see_the_old_or_the_new_generation(server, tiny_dataset, query):
    """8 clients search while another adds then removes an image: every answer is 200
    and equals the answer of one generation."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    names = lambda: [(r["name"], r["score"]) for r in _search(server, query, top=16).json()["results"]]  # noqa: E731
    old = names()
    answers, errors = [], []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            response = _search(server, query, top=16)
            if response.status_code != 200:
                errors.append(response.text)
            else:
                answers.append([(r["name"], r["score"]) for r in response.json()["results"]])

    clients = [threading.Thread(target=client) for _ in range(8)]
    for thread in clients:
        thread.start()
    try:
        added = requests.post(server.url + "/images", headers=auth, timeout=120,
                              files={"image": ("x.jpg", query.read_bytes())},
                              data={"name": "concurrent.jpg"})
        assert added.status_code == 201, added.text
        new = names()
    finally:
        stop.set()
        for thread in clients:
            thread.join()
    requests.delete(server.url + "/images/concurrent.jpg", headers=auth, timeout=60)
    assert not errors
    assert new != old and new[0][0] == "concurrent.jpg"
    assert len(answers) >= 8
    assert all(answer in (old, new) for answer in answers)


def test_settings_state_the_decision(readonly):
    settings = requests.get(readonly.url + "/settings", timeout=10).json()
    assert settings["decision"] == "nfa" and settings["rule"] == "a-contrario, -log10 NFA >= 3"
    assert settings["error_rate"] == "at most 1 false in 1,000 unrelated pairs expected"


@pytest.fixture(scope="module")
def refusing(tiny_dataset, tmp_path_factory):
    """A server over an index recorded with the :data:`REFUSING` decision."""
    photos = tmp_path_factory.mktemp("refusing") / "photos"
    photos.mkdir()
    for image in sorted((tiny_dataset / "jpg").glob("synth_db_*.jpg")):
        shutil.copy(image, photos)
    config = load_config("rootsift-asmk-star", overrides=[*SMALL, *REFUSING])
    index = build_index(config, ImageSource.from_directory(photos), photos.parent / "index",
                        show_progress=False)
    with Server(index) as running:
        yield running


def _d2r_query(index: Path, query: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "d2r", "query", "--index", str(index),
                           "--image", str(query), "--rerank", "16", "--set", REFUSING[0],
                           "--set", REFUSING[1], *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_pair_the_decision_refuses_is_unverified_everywhere(refusing, built, query):
    """Under ``nfa`` with an unreachable ``min_score``, rows with >= 8 inliers say
    ``verified: false`` in the server's JSON, ``d2r query`` JSON, CSV and table, and
    :class:`d2r.Hit`; the server and the table name the rule."""
    settings = requests.get(refusing.url + "/settings", timeout=10).json()
    assert settings["decision"] == "nfa"
    assert settings["rule"] == "a-contrario, -log10 NFA >= 100000"
    served = _search(refusing, query, rerank=16).json()["results"]
    printed = json.loads(_d2r_query(built, query, "--format", "json"))
    table = list(csv.DictReader(io.StringIO(_d2r_query(built, query, "--format", "csv"))))
    with d2r.open_index(built, rerank=16, settings=REFUSING) as index:
        hits = index.search(query)
    for rows in (served, printed):
        assert any(r["inliers"] >= 8 for r in rows)
        assert not any(r["verified"] for r in rows)
        assert all(isinstance(r["verification_score"], float) for r in rows)
    assert any(int(r["inliers"]) >= 8 for r in table)
    assert {r["verified"] for r in table} == {"false"}
    assert any(h.inliers >= 8 for h in hits) and not any(h.verified for h in hits)
    assert printed == [h.row() for h in hits]
    header, columns, first = _d2r_query(built, query).splitlines()[:3]
    assert ("; 0 verified (a-contrario, -log10 NFA >= 100000: at most 1 false in 10^100000 "
            "unrelated pairs expected) come first") in header, header
    assert columns.split() == ["rank", "score", "inliers", "-log10NFA", "verified", "name"]
    assert first.split()[4] == "false"
