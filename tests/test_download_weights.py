"""Model weights in data/download.py: fake release archives served from a loopback HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import random
import socket
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "download.py"
spec = importlib.util.spec_from_file_location("d2r_data_download_weights", SCRIPT)
download = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = download  # dataclasses look their module up while the class is built
spec.loader.exec_module(download)

DELF = "delf_gld_20190411"
FRCNN = "d2r_frcnn_20190411"
MNETSSD = "d2r_mnetssd_20190411"

# Same member layout as the released archives, tiny contents. The saved_model.pb
# holds 60 kB of incompressible bytes so that a transfer can be cut in its middle.
DELF_MEMBERS = {
    f"{DELF}/": None,
    f"{DELF}/model/": None,
    f"{DELF}/model/saved_model.pb": b"delf graph" + random.Random(0).randbytes(60_000),
    f"{DELF}/model/variables/variables.index": b"index",
    f"{DELF}/model/variables/variables.data-00000-of-00001": b"weights",
    f"{DELF}/pca/mean.datum": b"mean",
    f"{DELF}/pca/pca_proj_mat.datum": b"projection",
    f"{DELF}/pca/pca_variances.datum": b"variances",
}
FRCNN_MEMBERS = {
    f"{FRCNN}/": None,
    f"{FRCNN}/saved_model.pb": b"frcnn graph",
    f"{FRCNN}/variables/": None,  # empty in the exported detectors
}


def make_tar(members: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` (path -> bytes) with Range support; can cut one transfer short."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if server.cut_after is not None:
            self.wfile.write(body[start:start + server.cut_after])
            server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])


@pytest.fixture()
def server(monkeypatch):
    """A loopback server holding the fake releases; WEIGHTS point at it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.cut_after = [], None
    httpd.files = {
        f"/delf/{DELF}.tar.gz": make_tar(DELF_MEMBERS),
        f"/delf/{FRCNN}.tar.gz": make_tar(FRCNN_MEMBERS),
    }
    base = f"http://127.0.0.1:{httpd.server_address[1]}/delf"
    for name in (DELF, FRCNN, MNETSSD):
        monkeypatch.setitem(download.WEIGHTS, name, dataclasses.replace(
            download.WEIGHTS[name], url=f"{base}/{name}.tar.gz"))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run(capsys, *argv):
    rc = download.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_download_unpacks_into_the_layout_d2r_loads(server, tmp_path, capsys):
    root = tmp_path / "parameters"
    rc, out, err = run(capsys, DELF, FRCNN, "--root", str(root))
    assert rc == 0, err
    delf = root / DELF
    for name, data in DELF_MEMBERS.items():
        path = root / name
        assert path.is_dir() if data is None else path.read_bytes() == data, name
    assert (root / FRCNN / "saved_model.pb").read_bytes() == b"frcnn graph"
    assert (root / FRCNN / "variables").is_dir()  # empty folders are kept, as tar -x does
    assert (delf / f".done-{DELF}.tar.gz").is_file()
    assert (root / "_downloads" / f"{DELF}.tar.gz").is_file()
    # the settings that use them, with the exact paths
    assert (f"--set features.delf.model_path={delf / 'model'} "
            f"--set features.delf.pca_path={delf / 'pca'}") in out
    assert f"--set regions.detector_path={root / FRCNN}" in out
    # sha256 recorded on first download (no published checksum)
    record = json.loads((root / "checksums.json").read_text())
    assert record[f"{DELF}/{DELF}.tar.gz"] == hashlib.sha256(
        server.files[f"/delf/{DELF}.tar.gz"]).hexdigest()
    assert record[f"{FRCNN}/{FRCNN}.tar.gz"] == hashlib.sha256(
        server.files[f"/delf/{FRCNN}.tar.gz"]).hexdigest()


def test_printed_settings_are_valid_for_the_presets_that_use_them():
    pytest.importorskip("yaml")
    from d2r.config import load_config

    root = Path("parameters")
    for w in download.WEIGHTS.values():
        assert w.name not in download.DATASETS
        assert w.archive == f"{w.name}.tar.gz"
        assert w.url.startswith("http://storage.googleapis.com/delf/")
        overrides = [opt.removeprefix("--set ") for opt in w.set_options(root)]
        assert w.presets
        for preset in w.presets:
            config = load_config(preset, overrides=overrides)
            if w.name == DELF:
                assert config.features.backend == "delf"
                assert config.features.delf.model_path == f"parameters/{DELF}/model"
                assert config.features.delf.pca_path == f"parameters/{DELF}/pca"
            elif "codebook" in w.name:
                k = w.name.rsplit("_", 1)[1]
                assert config.codebook.path == f"parameters/{w.name}/k{k}_codebook_tfckpt/codebook"
            else:
                assert config.regions.source == "detector"
                assert config.regions.detector_path == f"parameters/{w.name}"


def test_rerun_skips_finished_work_and_repairs_removed_files(server, tmp_path, capsys):
    root = tmp_path / "parameters"
    assert run(capsys, DELF, "--root", str(root))[0] == 0
    assert len(server.requests) == 1
    index = root / DELF / "model" / "variables" / "variables.index"
    index.write_bytes(b"left alone")
    rc, out, err = run(capsys, DELF, "--root", str(root))
    assert rc == 0 and "--set features.delf.model_path=" in out
    assert err == ""  # neither fetched, verified nor unpacked again
    assert index.read_bytes() == b"left alone"
    assert len(server.requests) == 1
    # a required file removed since: unpacked again from the kept (verified) archive
    (root / DELF / "pca" / "mean.datum").unlink()
    rc, _, err = run(capsys, DELF, "--root", str(root))
    assert rc == 0, err
    assert (root / DELF / "pca" / "mean.datum").read_bytes() == b"mean"
    assert len(server.requests) == 1


def test_tampered_archive_is_refused(server, tmp_path, capsys):
    root = tmp_path / "parameters"
    assert run(capsys, FRCNN, "--root", str(root))[0] == 0
    # the kept archive changed on disk
    archive = root / "_downloads" / f"{FRCNN}.tar.gz"
    archive.write_bytes(make_tar({**FRCNN_MEMBERS, f"{FRCNN}/saved_model.pb": b"evil"}))
    (root / FRCNN / f".done-{FRCNN}.tar.gz").unlink()
    rc, _, err = run(capsys, FRCNN, "--root", str(root))
    assert rc == 1 and "recorded at first download" in err
    assert (root / FRCNN / "saved_model.pb").read_bytes() == b"frcnn graph"  # not unpacked
    # the file changed upstream
    archive.unlink()
    server.files[f"/delf/{FRCNN}.tar.gz"] = make_tar(
        {**FRCNN_MEMBERS, f"{FRCNN}/saved_model.pb": b"changed"})
    rc, _, err = run(capsys, FRCNN, "--root", str(root))
    assert rc == 1 and "recorded at first download" in err
    assert (root / FRCNN / "saved_model.pb").read_bytes() == b"frcnn graph"


def test_interrupted_download_resumes(server, tmp_path, capsys):
    root = tmp_path / "parameters"
    server.cut_after = 40_000
    assert len(server.files[f"/delf/{DELF}.tar.gz"]) > 50_000
    rc, _, err = run(capsys, DELF, "--root", str(root))
    assert rc == 1 and "resume" in err
    part = root / "_downloads" / f"{DELF}.tar.gz.part"
    assert part.stat().st_size == 40_000
    assert not (root / DELF).exists()
    rc, _, err = run(capsys, DELF, "--root", str(root))
    assert rc == 0, err
    assert server.requests[-1] == (f"/delf/{DELF}.tar.gz", "bytes=40000-")
    assert (root / DELF / "model" / "saved_model.pb").read_bytes() == (
        DELF_MEMBERS[f"{DELF}/model/saved_model.pb"])
    assert not part.exists()


def test_broken_layout_gives_one_line_error(server, tmp_path, capsys):
    root = tmp_path / "parameters"
    broken = {k: v for k, v in DELF_MEMBERS.items() if not k.endswith("pca_proj_mat.datum")}
    server.files[f"/delf/{DELF}.tar.gz"] = make_tar(broken)
    rc, _, err = run(capsys, DELF, "--root", str(root))
    assert rc == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {DELF}: {root / DELF / 'pca' / 'pca_proj_mat.datum'} missing")
    assert "features.delf.pca_path" in line and "saved_model.pb" not in line
    assert not (root / DELF / f".done-{DELF}.tar.gz").exists()
    # a detector archive without its SavedModel
    server.files[f"/delf/{FRCNN}.tar.gz"] = make_tar({f"{FRCNN}/model.ckpt": b"x"})
    rc, _, err = run(capsys, FRCNN, "--root", str(root))
    assert rc == 1 and f"{root / FRCNN / 'saved_model.pb'} missing" in err


def test_archive_without_top_folder_is_unpacked_into_its_own(server, tmp_path, capsys):
    root = tmp_path / "parameters"
    server.files[f"/delf/{MNETSSD}.tar.gz"] = make_tar({"./saved_model.pb": b"ssd"})
    rc, out, err = run(capsys, MNETSSD, "--root", str(root))
    assert rc == 0, err
    assert (root / MNETSSD / "saved_model.pb").read_bytes() == b"ssd"
    assert f"--set regions.detector_path={root / MNETSSD}" in out


def test_offline_message(monkeypatch, tmp_path, capsys):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(download.WEIGHTS, DELF, dataclasses.replace(
        download.WEIGHTS[DELF], url=f"http://127.0.0.1:{port}/delf/{DELF}.tar.gz"))
    rc, out, err = run(capsys, DELF, "--root", str(tmp_path))
    assert rc == 1 and out == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot reach 127.0.0.1:{port} (")
    assert line.endswith("are you offline?")
    assert not (tmp_path / DELF).exists()


def test_list_shows_weights_sizes_and_settings(server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("D2R_PARAMETERS", raising=False)
    monkeypatch.delenv("D2R_DATA", raising=False)
    rc, out, _ = run(capsys, "--list")
    assert rc == 0 and "roxford5k" in out
    section = out[out.index("Model weights"):]
    assert "into parameters/<name>" in section
    for name in (DELF, FRCNN, MNETSSD):
        assert name in section
    assert "size unknown" in section
    assert (f"--set features.delf.model_path=parameters/{DELF}/model "
            f"--set features.delf.pca_path=parameters/{DELF}/pca") in section
    assert f"--set regions.detector_path=parameters/{FRCNN}" in section
    assert "delf-d2r-r-asmk-star" in section
    # a downloaded archive shows its size
    root = tmp_path / "p"
    assert run(capsys, FRCNN, "--root", str(root))[0] == 0
    size = len(server.files[f"/delf/{FRCNN}.tar.gz"])
    _, out, _ = run(capsys, "--list", "--root", str(root))
    assert f"{size} B (downloaded)" in out


def test_unknown_name_lists_both_groups(capsys):
    rc, _, err = run(capsys, "delf_gld_2019")
    assert rc == 2 and "model weights: delf_gld_20190411" in err and "roxford5k" in err
