"""The command line as a careless or hostile user meets it (issue 28), through real ``d2r``
subprocesses: featureless images never enter the index, ``--top`` means the same as in the
HTTP API, a full disk and Ctrl-C are one line and leave the index answering as before,
and every other mistake is one line ``d2r <command>: error: ...`` with exit status 2."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli_errors import SMALL, assert_user_error, d2r

PARSED_COMMANDS = ("build-index", "query", "evaluate", "extract", "demo", "learn", "shards",
                   "add", "remove", "compact", "serve", "check", "synthetic")
"""Commands whose parser is :class:`d2r.cli.arguments.Parser` (every command)."""


@pytest.fixture(scope="module")
def photos(tiny_dataset, tmp_path_factory) -> Path:
    """The 16 database photos of the tiny benchmark, as a folder."""
    folder = tmp_path_factory.mktemp("hardening") / "photos"
    folder.mkdir()
    for path in sorted((tiny_dataset / "jpg").glob("synth_db_*.jpg")):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def index(photos) -> Path:
    """An index of ``photos`` (names are the file names)."""
    out = photos.parent / "index"
    built = d2r("build-index", "--images", photos, "--out", out, *SMALL)
    assert built.returncode == 0, built.stderr
    return out


@pytest.fixture(scope="module")
def new_photos(photos) -> Path:
    """Four photos under names the index does not hold."""
    folder = photos.parent / "new"
    folder.mkdir()
    for path in sorted(photos.glob("*.jpg"))[:4]:
        shutil.copy(path, folder / f"new_{path.name}")
    return folder


@pytest.fixture(scope="module")
def updated_index(index, new_photos) -> Path:
    """``index`` with a segment added (something for ``compact`` to do)."""
    out = index.parent / "updated"
    shutil.copytree(index, out, symlinks=True)
    added = d2r("add", "--index", out, "--images", new_photos)
    assert added.returncode == 0, added.stderr
    return out


def copy_index(index: Path, where: Path) -> Path:
    out = where / "index"
    shutil.copytree(index, out, symlinks=True)
    return out


def answers(index: Path, image: Path) -> list[dict]:
    """What the index answers for ``image`` (every result, re-ranked)."""
    proc = d2r("query", "--index", index, "--image", image, "--top", "0", "--rerank", "100",
               "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def blank(path: Path, size: int = 200) -> Path:
    Image.new("RGB", (size, size), (128, 128, 128)).save(path, format="PNG")
    return path


def entries(index: Path) -> list[str]:
    return sorted(p.name for p in index.iterdir())


# ---------------------------------------------------------------- featureless images (11)

def test_a_featureless_replacement_is_refused_and_the_original_kept(index, photos, tmp_path):
    out = copy_index(index, tmp_path)
    name = "synth_db_000003.jpg"
    before, listing = answers(out, photos / name), entries(out)
    folder = tmp_path / "upload"
    folder.mkdir()
    blank(folder / name)
    proc = d2r("add", "--index", out, "--images", folder, "--replace")
    assert_user_error(proc, "add", rf"{re.escape(name)}: no local features in the image .*not "
                                   rf"added; the indexed image of that name is kept")
    assert answers(out, photos / name) == before and before[0]["name"] == name
    assert entries(out) == listing  # nothing committed, the new generation removed


def test_featureless_images_of_a_folder_are_left_out_and_listed(index, new_photos, tmp_path):
    out = copy_index(index, tmp_path)
    folder = tmp_path / "mixed"
    shutil.copytree(new_photos, folder)
    blank(folder / "blank.png")
    proc = d2r("add", "--index", out, "--images", folder)
    assert proc.returncode == 0, proc.stderr
    assert "added 4 images" in proc.stdout
    assert "1 without features left out (e.g. blank.png)" in proc.stdout
    manifest = json.loads((out / "index.json").read_text())
    assert manifest["num_images"] == 20
    generation = manifest["segments"][-1]["data"][0]
    assert (out / generation / "features" / "skipped.tsv").read_text().splitlines()[1] == \
        "blank.png\tno features (blank image?): left out, no query could find it"


# ---------------------------------------------------------------- --top (12)

@pytest.mark.parametrize("top, expected", [(0, 16), (10, 10)])
def test_top_is_honoured_beyond_search_top_k(index, photos, top, expected):
    proc = d2r("query", "--index", index, "--image", photos / "synth_db_000000.jpg",
               "--top", top, "--set", "search.top_k=5", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == expected


def test_top_rule_is_in_the_help():
    text = " ".join(d2r("query", "--help").stdout.split())
    assert ("--top N results to print (default 20; 0: every image in the index); the search "
            "goes max(N, search.top_k) deep") in text, text


# ---------------------------------------------------------------- a full disk (14)

@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 16 MiB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "--lazy", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` up to ``leave`` free bytes."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))


def assert_disk_full(proc: subprocess.CompletedProcess, command: str, target: Path) -> None:
    assert_user_error(proc, command, rf"^d2r {command}: error: no space left on device writing "
                                     rf"{re.escape(str(target))} \(")


@pytest.mark.parametrize("command", ["add", "compact"])
def test_an_update_on_a_full_disk_is_one_line_and_the_index_answers_as_before(
        command, updated_index, new_photos, photos, small_disk):
    out = copy_index(updated_index, small_disk)
    query = photos / "synth_db_000001.jpg"
    before, listing = answers(out, query), entries(out)
    fill(small_disk, leave=256 << 10)
    if command == "add":
        folder = small_disk.parent / "more"
        shutil.copytree(new_photos, folder)
        for path in folder.iterdir():
            path.rename(folder / f"more_{path.name}")
        proc = d2r("add", "--index", out, "--images", folder)
    else:
        proc = d2r("compact", "--index", out)
    assert_disk_full(proc, command, out)
    assert "the index is unchanged" in proc.stderr
    assert entries(out) == listing
    assert answers(out, query) == before


def test_results_on_a_full_disk_are_one_line(index, photos, small_disk):
    fill(small_disk, leave=0)
    proc = d2r("query", "--index", index, "--image", photos / "synth_db_000001.jpg",
               "--out", small_disk / "results")
    assert_disk_full(proc, "query", small_disk / "results")


# ---------------------------------------------------------------- tracebacks (15)

def test_one_photo_is_refused_before_any_work(photos, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(photos / "synth_db_000000.jpg", folder)
    out = tmp_path / "index"
    proc = d2r("build-index", "--images", folder, "--out", out)
    assert_user_error(proc, "build-index", r"codebook\.num_words=1024 but 1 image give at most "
                                           r"1000 descriptors .*--set codebook\.num_words=N")
    assert not out.exists()


def test_a_few_photos_keep_their_features_for_a_rerun_with_fewer_words(photos, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    shutil.copy(photos / "synth_db_000000.jpg", folder)
    for i in range(3):
        blank(folder / f"blank{i}.png")
    out = tmp_path / "index"
    proc = d2r("build-index", "--images", folder, "--out", out, *SMALL,
               "--set", "codebook.num_words=200")
    assert_user_error(proc, "build-index", r"codebook\.num_words=200 but the 4 indexed images "
                                           r"have only 80 descriptors: run the same command with "
                                           r"fewer words \(--set codebook\.num_words=N, N <= 80\)")
    assert entries(out) == [".d2r-writer.lock", "features"]  # no half-built index
    rerun = d2r("build-index", "--images", folder, "--out", out, *SMALL)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 of 4 images already extracted" in rerun.stderr


def test_query_out_on_a_file_is_refused_before_searching(index, photos, tmp_path):
    taken = tmp_path / "results"
    taken.write_text("mine\n")
    proc = d2r("query", "--index", index, "--image", photos / "synth_db_000000.jpg",
               "--out", taken)
    assert_user_error(proc, "query", rf"--out {re.escape(str(taken))}: .* is a file, not a "
                                     rf"directory")
    assert proc.stdout == "" and taken.read_text() == "mine\n"


@pytest.mark.parametrize("where", ["missing/results.json", "."])
def test_json_path_is_checked_before_searching(index, photos, tmp_path, where):
    proc = d2r("query", "--index", index, "--image", photos / "synth_db_000000.jpg",
               "--json", tmp_path / where)
    assert_user_error(proc, "query", r"--json .*(does not exist|is a directory)")
    assert proc.stdout == "" and "extract" not in proc.stderr


def test_ctrl_c_during_build_is_one_line_and_the_build_resumes(photos, tmp_path):
    out = tmp_path / "index"
    command = [sys.executable, "-m", "d2r", "build-index", "--images", photos, "--out", out,
               "--set", "codebook.num_words=32", "--progress-interval", "0.01"]
    build = subprocess.Popen(list(map(str, command)), stderr=subprocess.PIPE, text=True)
    for line in build.stderr:  # full-size RootSIFT: extraction lasts a second or more
        if re.search(r"extract: \d+/16 img", line):
            build.send_signal(signal.SIGINT)
            break
    rest = build.stderr.read()
    assert build.wait(timeout=120) == 130, rest
    assert "Traceback" not in rest
    assert rest.splitlines()[-1] == ("d2r build-index: interrupted; run the same command "
                                     "again to resume")
    assert not (out / "index.json").exists()
    rerun = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert re.search(r"features: [1-9]\d* of 16 images already extracted", rerun.stderr)


def test_a_damaged_feature_shard_met_while_re_ranking_is_named(index, photos, tmp_path):
    out = copy_index(index, tmp_path)
    shard = out / "features" / "shards" / "000000.h5"
    with open(shard, "r+b") as f:
        f.seek(shard.stat().st_size // 2)
        f.write(os.urandom(4096))
    proc = d2r("query", "--index", out, "--image", photos / "synth_db_000000.jpg",
               "--rerank", "100")
    assert_user_error(proc, "query", r"shards/000000\.h5.*`d2r check .*` checks every file")


def test_more_assignments_than_words_is_refused(index, photos):
    proc = d2r("query", "--index", index, "--image", photos / "synth_db_000000.jpg",
               "--set", "aggregation.num_assignments_query=1000000")
    assert_user_error(proc, "query", r"aggregation\.num_assignments_query=1000000 is more than "
                                     r"the codebook size \(32 words\)")


def test_more_words_than_descriptors_is_refused_before_any_work(photos, tmp_path):
    out = tmp_path / "index"
    proc = d2r("build-index", "--images", photos, "--out", out, *SMALL,
               "--set", "codebook.num_words=100000")
    assert_user_error(proc, "build-index", r"codebook\.num_words=100000 but 16 images give at "
                                           r"most 1280 descriptors")
    assert not out.exists()


def test_a_pixel_limit_no_image_meets_names_the_reason(photos, tmp_path):
    proc = d2r("build-index", "--images", photos, "--out", tmp_path / "index", *SMALL,
               "--set", "images.max_pixels=10")
    assert_user_error(proc, "build-index", r"none of the 16 images could be read \(e\.g\. "
                                           r"synth_db_000000\.jpg: image has \d+x\d+ = \d+ "
                                           r"pixels, more than the limit 10")


def test_a_benchmark_of_other_images_is_refused(index, tiny_dataset, tmp_path):
    proc = d2r("query", "--index", index, "--dataset-dir", tiny_dataset, "--out", tmp_path)
    assert_user_error(proc, "query", r"holds 16 images that are not in the database of "
                                     r"benchmark .*: query the index with the benchmark it was "
                                     r"built from")


def _benchmark_with_ground_truth(tiny_dataset: Path, tmp_path: Path, content: bytes):
    """A copy of the tiny benchmark whose ground truth is ``content``, and a ranks file."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "gnd_synth.pkl").write_bytes(content)
    ranks = tmp_path / "ranks.npy"
    np.save(ranks, np.zeros((4, 16), np.int64))
    return data, ranks


def test_a_truncated_ground_truth_is_one_line(tiny_dataset, tmp_path):
    whole = (tiny_dataset / "gnd_synth.pkl").read_bytes()
    data, ranks = _benchmark_with_ground_truth(tiny_dataset, tmp_path, whole[:len(whole) // 2])
    proc = d2r("evaluate", "--dataset-dir", data, "--ranks", ranks)
    assert_user_error(proc, "evaluate", r"gnd_synth\.pkl: not a complete, readable pickle")


class _Reconstructed:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, "b")``, optionally with a state."""

    def __init__(self, shape, state=None):
        self.shape, self.state = shape, state

    def __reduce__(self):
        reconstruct = np.empty(0).__reduce__()[0]
        call = (reconstruct, (np.ndarray, self.shape, b"b"))
        return call if self.state is None else (*call, self.state)


@pytest.mark.parametrize("value, pattern", [
    (_Reconstructed((10**11,)), r"an array of shape \(100000000000,\) would take 100000000000 "
                                r"bytes, more than the 268435456 a ground truth may hold"),
    (_Reconstructed((0,), (1, (10,), np.dtype(object), False, [1, 2])),
     r"an object array of shape \(10,\) holds 2 values"),
])
def test_a_ground_truth_asking_for_a_huge_or_broken_array_is_refused(tiny_dataset, tmp_path,
                                                                     value, pattern):
    data, ranks = _benchmark_with_ground_truth(tiny_dataset, tmp_path,
                                               pickle.dumps({"gnd": value}, protocol=2))
    proc = d2r("evaluate", "--dataset-dir", data, "--ranks", ranks)
    assert_user_error(proc, "evaluate", rf"gnd_synth\.pkl: {pattern}")


# ---------------------------------------------------------------- messages (16)

def test_results_whose_images_moved_warn_once_with_the_hint(photos, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    out = tmp_path / "index"
    assert d2r("build-index", "--images", folder, "--out", out, *SMALL).returncode == 0
    moved = folder.rename(tmp_path / "moved")
    proc = d2r("query", "--index", out, "--image", moved / "synth_db_000000.jpg",
               "--out", tmp_path / "res", "--report", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    hint = "3 of the 3 result images could not be read"
    warnings = [line for line in proc.stderr.splitlines() if hint in line]
    assert len(warnings) == 1 and "give their folder with --images DIR" in warnings[0]
    assert (tmp_path / "res" / "report" / "index.html").read_text().count(hint) == 1


def test_a_one_pixel_query_exits_2(index, tmp_path):
    proc = d2r("query", "--index", index, "--image", blank(tmp_path / "dot.png", size=1))
    assert_user_error(proc, "query", r"dot\.png: no local features in the image")


@pytest.mark.parametrize("command", PARSED_COMMANDS)
def test_a_usage_mistake_is_one_line_and_a_pointer_to_help(command):
    proc = d2r(command, "--no-such-option")
    assert proc.returncode == 2
    first, second = proc.stderr.splitlines()
    assert first.startswith(f"d2r {command}: error: ") and "usage:" not in proc.stderr
    assert second == f"(d2r {command} --help for usage)"


# ---------------------------------------------------------------- help and page text (17)

@pytest.mark.parametrize("command", PARSED_COMMANDS)
def test_help_is_plain_text_and_every_option_says_what_it_does(command):
    proc = d2r(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"``|:(mod|func|class|meth|data|attr):`", proc.stdout), proc.stdout
    lines = proc.stdout.splitlines()
    bare = [line for i, line in enumerate(lines)
            if re.fullmatch(r"  (-\w, )?--?[\w-]+( \S+)*", line)
            and not (i + 1 < len(lines) and re.match(r"\s{8,}\S", lines[i + 1]))]
    assert bare == [], bare


def test_shards_takes_index_like_every_command(index, tmp_path):
    for args, out in ((["--index", index], tmp_path / "a"), ([index], tmp_path / "b")):
        proc = d2r("shards", *args, "--shards", "2", "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("16 images in 2 inverted shards")


def test_verify_takes_index_like_every_command(index):
    for args in (["--index", index], [index]):
        proc = d2r("verify", *args)
        assert (proc.returncode, proc.stdout) == (0, f"OK: {index}\n"), proc.stderr


def test_the_page_states_the_re_ranked_depth(index, photos, tmp_path):
    proc = d2r("query", "--index", index, "--image", photos / "synth_db_000000.jpg",
               "--rerank", "100", "--top", "3", "--out", tmp_path, "--report")
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "The top 16 were spatially verified" in page


def test_json_and_csv_carry_the_decision_and_its_score(index, photos):
    """Every row says ``verified``; the re-ranked head also its inliers and -log10 NFA, in
    the same order in JSON, CSV and the table, whose header counts the verified."""
    query = ("query", "--index", index, "--image", photos / "synth_db_000000.jpg",
             "--rerank", "4", "--top", "6")
    printed = d2r(*query, "--format", "json")
    assert printed.returncode == 0, printed.stderr
    rows = json.loads(printed.stdout)
    assert [sorted(row) for row in rows] == \
        [["inliers", "name", "rank", "score", "verification_score", "verified"]] * 4 \
        + [["name", "rank", "score", "verified"]] * 2
    assert rows[0]["verified"] is True and rows[0]["verification_score"] > 12
    assert [row["verified"] for row in rows[4:]] == [False, False]
    written = d2r(*query, "--format", "csv")
    assert written.returncode == 0, written.stderr
    lines = written.stdout.splitlines()
    assert lines[0] == "rank,score,inliers,verification_score,verified,name"
    cells = [line.split(",") for line in lines[1:]]
    assert [c[4] for c in cells] == [str(row["verified"]).lower() for row in rows]
    assert [c[2] for c in cells] == [str(row.get("inliers", "")) for row in rows]
    assert float(cells[0][3]) == pytest.approx(rows[0]["verification_score"], rel=1e-5)
    assert cells[5][3] == ""
    table = d2r(*query)
    assert table.returncode == 0, table.stderr
    verified = sum(row["verified"] for row in rows)
    assert (f"the top 4 were spatially verified; {verified} verified (a-contrario, -log10 NFA "
            f">= 3: at most 1 false in 1,000 unrelated pairs expected) come first (highest "
            f"score first), the others checked follow by inliers, then search order"
            == table.stdout.splitlines()[0][len("# re-ranked: "):])
