"""The public Python API (``import d2r``) on the tiny synthetic benchmark: every image input
kind, boxes, re-ranking, updates, checks, errors, threads and the one path shared with
``d2r query``."""

import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import d2r
from d2r.api import ClosedIndexError, MetricTable
from d2r.config import load_config
from d2r.errors import InputError
from d2r.io.images import ImageError
from d2r.pipeline.build import build_index as pipeline_build
from d2r.pipeline.run import FeaturelessQueryError
from d2r.pipeline.update import UnknownImagesError
from d2r.pipeline.sources import ImageSource

SMALL = {"codebook.num_words": 32, "features.rootsift.max_features": 80}


def _key(hits):
    """What two searches must agree on, bit for bit."""
    return [(h.rank, h.name, h.score, h.inliers, h.verified, h.verification_score,
             None if h.matches is None else h.matches.tobytes()) for h in hits]


@pytest.fixture(scope="module")
def photos(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("api") / "photos"
    folder.mkdir()
    for image in sorted((tiny_dataset / "jpg").glob("synth_db_*.jpg")):
        shutil.copy(image, folder)
    return folder


@pytest.fixture(scope="module")
def built(photos):
    """The index directory of ``photos`` (built through the API, then closed)."""
    with d2r.build_index(photos, photos.parent / "index", settings=SMALL, progress=False):
        pass
    return photos.parent / "index"


@pytest.fixture(scope="module")
def index(built):
    """The index opened with spatial re-ranking of the top 8."""
    with d2r.open_index(built, rerank=8) as opened:
        yield opened


@pytest.fixture(scope="module")
def query(tiny_dataset):
    return tiny_dataset / "jpg" / "synth_q_0000.jpg"


def test_import_d2r_is_cheap_and_exports_the_api():
    code = ("import sys, d2r\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'fastapi', 'faiss', 'torch', 'numpy')))\n"
            "print(sorted(d2r.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", str(sorted(["Hit", "Index", "__version__", "build_index", "errors",
                                     "evaluate", "open_index"]))]
    assert d2r.errors.InputError is InputError


def test_the_command_modules_do_not_shadow_the_api():
    import importlib

    importlib.import_module("d2r.build_index")  # the ``python -m d2r.build_index`` shim
    assert importlib.import_module("d2r.cli.build_index").main is not None
    importlib.import_module("d2r.cli.evaluate")
    assert callable(d2r.build_index) and d2r.build_index.__module__ == "d2r.api"
    assert d2r.evaluate.__module__ == "d2r.api"


def test_a_search_returns_typed_hits_best_first(index, query):
    hits = index.search(query, top=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(isinstance(h, d2r.Hit) for h in hits)
    with pytest.raises(AttributeError):
        hits[0].score = 1.0
    head = hits[0]
    assert head.inliers >= index.settings.verification.min_inliers and head.verified
    assert head.verification_score > 0
    assert head.row() == {"rank": 1, "name": head.name, "score": head.score, "verified": True,
                          "inliers": head.inliers, "verification_score": head.verification_score}
    assert head.matches.dtype == np.float32 and head.matches.shape == (head.inliers, 4)
    assert len(index.search(query, top=0)) == len(index) == 16


def test_every_input_kind_gives_the_hits_of_the_path(index, query, tmp_path):
    expected = _key(index.search(query))
    pixels = np.asarray(Image.open(query).convert("RGB"))
    rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, np.uint8)], axis=2)
    with open(query, "rb") as file:
        inputs = {
            "str": str(query), "PIL": Image.open(query), "uint8": pixels,
            "float64": pixels / 255.0, "float32": (pixels / np.float32(255)).astype(np.float32),
            "RGBA": rgba, "bytes": query.read_bytes(), "BytesIO": io.BytesIO(query.read_bytes()),
            "file": file,
        }
        for kind, image in inputs.items():
            assert _key(index.search(image)) == expected, kind
    gray = np.asarray(Image.open(query).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    gray_hits = index.search(tmp_path / "gray.png")
    assert _key(index.search(gray)) == _key(gray_hits)
    assert gray_hits[0].name == expected[0][1]


def test_in_memory_inputs_are_searched_without_a_file(index, query, monkeypatch):
    """Bytes, pixels and file objects are decoded from memory: no temporary file is made."""
    import tempfile

    expected = _key(index.search(query))

    def no_files(*args, **kwargs):
        raise AssertionError("a temporary file was made for a search")

    monkeypatch.setattr(tempfile, "mkstemp", no_files)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_files)
    pixels = np.asarray(Image.open(query).convert("RGB"))
    for image in (query.read_bytes(), pixels, Image.open(query), io.BytesIO(query.read_bytes())):
        assert _key(index.search(image)) == expected
    with pytest.raises(d2r.errors.InputError, match=r"^the 4 bytes: not an image file"):
        index.search(b"nope")


def test_a_box_searches_that_part_of_the_image(index, query):
    box = (10, 20, 150, 120)
    hits = index.search(query, box=box)
    assert _key(hits) != _key(index.search(query))
    assert _key(index.search(np.asarray(Image.open(query)), box=box)) == _key(hits)


def test_rerank_is_a_query_time_setting(built, index, query):
    with d2r.open_index(built) as plain:
        hits = plain.search(query)
        assert plain.settings.verification.rerank == 0
    assert all(h.inliers is None and not h.verified and h.matches is None
               and h.verification_score is None for h in hits)
    assert hits[0].row() == {"rank": 1, "name": hits[0].name, "score": hits[0].score,
                             "verified": False}
    reranked = index.search(query)
    assert index.settings.verification.rerank == 8
    assert sum(h.inliers is not None for h in reranked) == 8
    with d2r.open_index(built, settings={"verification.rerank": 8}) as same:
        assert _key(same.search(query)) == _key(reranked)


def test_per_call_settings_timing_and_the_server_row(built, index, query):
    timing = {}
    with d2r.open_index(built) as plain:
        hits = plain.search(query, settings={"verification.rerank": 8}, timing=timing,
                            workers=1)
        assert plain.settings.verification.rerank == 0  # for that call only
        assert all(h.inliers is None for h in plain.search(query))
    assert _key(hits) == _key(index.search(query))
    assert set(timing) == {"extract", "search", "rerank"} and min(timing.values()) >= 0
    head = hits[0]
    row = head.row(matches=3)
    assert len(row["matches"]) == min(3, head.inliers) and row["image_size"] == \
        list(head.image_size) and len(head.image_size) == 2
    assert row["matches"][0] == head.matches[0].tolist()
    assert row["matches"][-1] == head.matches[-1].tolist()
    assert "matches" not in hits[-1].row(matches=3)  # beyond the re-ranked head
    with pytest.raises(InputError, match="codebook.num_words"):
        index.search(query, settings={"codebook.num_words": 8})


def test_kind_features_and_refresh_after_another_writer(built, tiny_dataset, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    new = tiny_dataset / "jpg" / "synth_q_0002.jpg"
    with d2r.open_index(copy) as reader, d2r.open_index(copy) as writer:
        assert reader.kind == "inverted"
        first = reader.names[0]
        assert len(reader.features(first)) > 0
        with pytest.raises(InputError, match="no image named 'nope'"):
            reader.features("nope")
        before = reader.search(new, top=3)
        with ThreadPoolExecutor(2) as pool:  # searches run while the other object adds
            running = [pool.submit(reader.search, new, top=3) for _ in range(4)]
            writer.add([new])
            assert all(_key(f.result()) == _key(before) for f in running)
        assert len(reader) == 16 and "synth_q_0002.jpg" not in reader.names
        reader.refresh()
        assert len(reader) == 17 and reader.search(new, top=1)[0].name == "synth_q_0002.jpg"


def test_d2r_query_prints_what_search_returns(built, index, query, capsys):
    from d2r.cli.query import main

    assert main(["--index", str(built), "--image", str(query), "--rerank", "8",
                 "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == [h.row() for h in index.search(query)]
    assert any("inliers" in row for row in printed)


def test_search_many_equals_a_loop_of_search(index, tiny_dataset):
    queries = sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg"))
    boxes = [None, (0, 0, 200, 150), None, None]
    together = index.search_many(queries, boxes=boxes, top=6)
    assert [_key(hits) for hits in together] == \
        [_key(index.search(q, box=b, top=6)) for q, b in zip(queries, boxes)]
    assert index.search_many([]) == []


def test_concurrent_searches_on_one_index_answer_as_sequential_ones(index, tiny_dataset):
    queries = sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg")) * 4
    sequential = [_key(index.search(q)) for q in queries]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda q: _key(index.search(q)), queries))
    assert concurrent == sequential


def test_add_remove_compact_through_the_api(built, tiny_dataset, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    new = tiny_dataset / "jpg" / "synth_q_0001.jpg"
    with d2r.open_index(copy) as index:
        summary = index.add([new, Image.open(new)], names=[None, "b.jpg"])
        assert summary.added == ["synth_q_0001.jpg", "b.jpg"]
        assert len(index) == 18 and {"synth_q_0001.jpg", "b.jpg"} <= set(index.names)
        assert {h.name for h in index.search(new, top=2)} == {"synth_q_0001.jpg", "b.jpg"}
        index.remove(["b.jpg", "synth_db_000000.jpg"])
        assert len(index) == 16 and "b.jpg" not in index.names
        assert "synth_db_000000.jpg" not in index.names
        before = index.search(new, top=0)
        assert "b.jpg" not in {h.name for h in before}
        index.compact()
        assert _key(index.search(new, top=0)) == _key(before)
        assert index.check() == []
        with pytest.raises(UnknownImagesError, match="'nope.jpg'"):
            index.remove(["nope.jpg"])
        with pytest.raises(InputError, match=r"has no name: pass names="):
            index.add([np.asarray(Image.open(new))])
    with d2r.open_index(copy) as reopened:
        assert reopened.names == index_names(copy)


def test_add_a_folder_or_a_list_file_names_images_as_build_index_does(built, tiny_dataset,
                                                                         tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(built, copy)
    folder = tmp_path / "new" / "sub"
    folder.mkdir(parents=True)
    for name in ("synth_q_0001.jpg", "synth_q_0002.jpg"):
        shutil.copy(tiny_dataset / "jpg" / name, folder / name)
    listed = tmp_path / "list.txt"
    listed.write_text("new/sub/synth_q_0001.jpg\n")
    with d2r.open_index(copy) as index:
        assert index.add(tmp_path / "new").added == ["sub/synth_q_0001.jpg",
                                                     "sub/synth_q_0002.jpg"]
        assert index.image_file("sub/synth_q_0002.jpg") == (folder / "synth_q_0002.jpg").resolve()
        assert index.add(listed).added == ["new/sub/synth_q_0001.jpg"]
        assert len(index) == 19
        with pytest.raises(InputError, match=r"is one image: give a list"):
            index.add(folder / "synth_q_0001.jpg")
        with pytest.raises(InputError, match="names and kept_in go with a list"):
            index.add(tmp_path / "new", names=["x.jpg"])


def index_names(path):
    with d2r.open_index(path) as opened:
        return opened.names


def test_bad_inputs_raise_typed_one_line_errors(index, built):
    with pytest.raises(ImageError) as error:
        index.search(b"not an image at all")
    assert str(error.value) == "the 19 bytes: not an image file Pillow can identify"
    with pytest.raises(FeaturelessQueryError) as error:
        index.search(np.zeros((64, 64), np.uint8))
    assert str(error.value).startswith("the numpy array (64, 64) uint8: no local features in "
                                       "the image")
    for bad, message in [(np.zeros((4, 4, 2), np.uint8), "not an image array"),
                         (np.full((8, 8), 2.0), r"float pixels must lie in \[0, 1\]"),
                         (np.zeros((8, 8), np.int32), "pixels must be uint8"),
                         (io.StringIO("x"), "open the image with 'rb'"),
                         (3, "int is not an image")]:
        with pytest.raises(InputError, match=message):
            index.search(bad)
    with pytest.raises(ImageError, match="no-such.jpg"):
        index.search(built / "no-such.jpg")
    with d2r.open_index(built) as closed:
        pass
    with pytest.raises(ClosedIndexError, match="is closed"):
        closed.search(b"x")
    with pytest.raises(ClosedIndexError):
        len(closed)


def test_settings_are_a_copy(index):
    settings = index.settings
    settings.verification.rerank = 0
    assert index.settings.verification.rerank == 8


def test_evaluate_ranks_and_an_index(tiny_dataset, tmp_path, built):
    config = load_config("rootsift-asmk-star", overrides=[f"{k}={v}" for k, v in SMALL.items()])
    pipeline_build(config, ImageSource.from_dataset(tiny_dataset), tmp_path / "bench",
                   show_progress=False)
    table = d2r.evaluate(tiny_dataset, index=tmp_path / "bench", out=tmp_path / "run")
    assert isinstance(table, MetricTable) and table.protocols == ("easy", "medium", "hard")
    assert table.to_dict() == json.loads((tmp_path / "run" / "metrics.json").read_text())
    ranks = np.load(tmp_path / "run" / "ranks.npy")
    assert d2r.evaluate(tiny_dataset, ranks) == table
    assert d2r.evaluate(tiny_dataset, tmp_path / "run" / "ranks.npy")["hard", "mAP"] == \
        table["hard", "mAP"]
    with pytest.raises(InputError, match="one row per query"):
        d2r.evaluate(tiny_dataset, ranks[:2])
    with pytest.raises(InputError, match="either ranks or index"):
        d2r.evaluate(tiny_dataset)
