"""Resume / verify / extract logic of data/download.py against a local HTTP server."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "download.py"
spec = importlib.util.spec_from_file_location("d2r_data_download", SCRIPT)
download = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = download  # dataclasses look their module up while the class is built
spec.loader.exec_module(download)

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB, spans several chunks


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; can cut the first transfer short."""

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        server = self.server
        server.ranges.append(self.headers.get("Range"))
        if self.path != "/file.bin":
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and server.support_ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:
            self.wfile.write(body[: server.cut_after])
            server.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.ranges, httpd.cut_after, httpd.support_ranges = [], None, True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(httpd, path="/file.bin"):
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def test_interrupted_download_resumes_with_range(server, tmp_path):
    dest = tmp_path / "file.bin"
    server.cut_after = 300_000
    with pytest.raises(download.DownloadError, match="resume"):
        download.fetch(url(server), dest, timeout=10)
    part = tmp_path / "file.bin.part"
    assert part.stat().st_size == 300_000 and not dest.exists()
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    download.fetch(url(server), dest, sha256=sha, timeout=10)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.ranges == [None, "bytes=300000-"]


def test_server_without_ranges_restarts(server, tmp_path):
    server.support_ranges = False
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes")
    download.fetch(url(server), tmp_path / "file.bin", timeout=10)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_complete_part_file_is_accepted_on_416(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD)
    download.fetch(url(server), tmp_path / "file.bin", timeout=10)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_published_checksum_mismatch(server, tmp_path):
    with pytest.raises(download.DownloadError, match="md5 is .* expected 0+"):
        download.fetch(url(server), tmp_path / "file.bin", md5="0" * 32, timeout=10)


def test_checksum_recorded_then_verified(server, tmp_path):
    registry = download.ChecksumRegistry(tmp_path / "checksums.json")
    dest = tmp_path / "file.bin"
    download.fetch(url(server), dest, registry=registry, key="ds/file.bin", timeout=10)
    assert registry.get("ds/file.bin") == hashlib.sha256(PAYLOAD).hexdigest()
    reloaded = download.ChecksumRegistry(tmp_path / "checksums.json")
    download.fetch(url(server), dest, registry=reloaded, key="ds/file.bin")  # verified, no GET
    assert len(server.ranges) == 1
    dest.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(download.DownloadError, match="recorded at first download"):
        download.fetch(url(server), dest, registry=reloaded, key="ds/file.bin")


def test_http_error_and_offline_messages(server, tmp_path):
    with pytest.raises(download.DownloadError, match="HTTP 404"):
        download.fetch(url(server, "/missing"), tmp_path / "x", timeout=10)
    port = server.server_address[1]
    server.shutdown()
    server.server_close()
    with pytest.raises(download.DownloadError, match="offline"):
        download.fetch(f"http://127.0.0.1:{port}/file.bin", tmp_path / "y", timeout=5)


def test_file_url_download(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    dest = download.fetch(src.as_uri(), tmp_path / "out" / "copy.bin")
    assert dest.read_bytes() == b"abc"


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_extract_flat_and_tree(tmp_path):
    archive = tmp_path / "a.tgz"
    _tar(archive, {"paris/eiffel/p1.jpg": b"1", "paris/louvre/p2.jpg": b"2"})
    assert download.extract(archive, tmp_path / "flat", mode="flat") == 2
    assert (tmp_path / "flat" / "p1.jpg").read_bytes() == b"1"
    assert download.extract(archive, tmp_path / "tree", mode="tree") == 2
    assert (tmp_path / "tree" / "paris" / "louvre" / "p2.jpg").read_bytes() == b"2"

    zpath = tmp_path / "u.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("full/ukbench00000.jpg", b"z")
    assert download.extract(zpath, tmp_path / "uk", mode="tree") == 1
    assert (tmp_path / "uk" / "full" / "ukbench00000.jpg").read_bytes() == b"z"


def test_extract_refuses_escapes_and_collisions(tmp_path):
    evil = tmp_path / "evil.tgz"
    _tar(evil, {"../outside.txt": b"x"})
    with pytest.raises(download.DownloadError, match="outside"):
        download.extract(evil, tmp_path / "dest", mode="tree")
    assert not (tmp_path / "outside.txt").exists()
    twins = tmp_path / "twins.tgz"
    _tar(twins, {"a/x.jpg": b"1", "b/x.jpg": b"2"})
    with pytest.raises(download.DownloadError, match="both named"):
        download.extract(twins, tmp_path / "flat", mode="flat")


def test_dataset_table_is_well_formed():
    for spec_ in download.DATASETS.values():
        assert spec_.files or spec_.manual
        for remote in spec_.files:
            assert remote.url.split(":")[0] in ("http", "https", "ftp")
            assert remote.extract in (None, "flat", "tree")
    with pytest.raises(download.DownloadError, match="kaggle"):
        download.download_dataset("glb", Path("/nonexistent"))
    with pytest.raises(download.DownloadError, match="unknown dataset"):
        download.download_dataset("nope", Path("/nonexistent"))
