"""``d2r serve`` left running: who may write and from where, the stored photos across failed
writes, the bounds on bodies and work in flight, error bodies without server paths, and a
server that follows the index changed by ``d2r add`` / ``remove`` / ``compact``.

One real server process on a loopback port over a copy of a small index (writes allowed,
no token: the documented localhost setup), real ``d2r`` subprocesses beside it."""

from __future__ import annotations

import fcntl
import http.client
import io
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
requests = pytest.importorskip("requests")
from PIL import Image  # noqa: E402

from tests._server import Server, free_port, photo_index  # noqa: E402

HOST_NAME = "photos.lan"


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    return photo_index(tiny_dataset, tmp_path_factory.mktemp("hardening"))


@pytest.fixture(scope="module")
def server(built):
    """Writes allowed without a token, 1 MiB uploads, one worker and one waiting request."""
    index = built.with_name("writable")
    shutil.copytree(built, index, symlinks=True)
    with Server(index, "--allow-writes", "--max-upload-mb", "1", "--max-pixels", "1000000",
                "--allowed-host", HOST_NAME, "--workers", "1", "--queue", "1") as running:
        running.index = index
        running.paths = [str(index.resolve()), str(built.parent.resolve()),
                         tempfile.gettempdir() + "/"]
        yield running


@pytest.fixture(scope="module")
def queries(tiny_dataset) -> list[Path]:
    return sorted((tiny_dataset / "jpg").glob("synth_q_*.jpg"))


def _error(server, response, status: int, *words: str) -> str:
    """The one-line error of ``response``: its status, its words, no path of the server."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    for path in server.paths:
        assert path not in message, message
    for word in words:
        assert word in message, message
    return message


def _search(server, data: bytes, filename: str = "q.jpg", **kwargs):
    return requests.post(server.url + "/search", files={"image": (filename, data)},
                         timeout=120, **kwargs)


def _add(server, data: bytes, name: str, filename: str = "photo.jpg", replace: bool = False,
         **kwargs):
    return requests.post(server.url + "/images", files={"image": (filename, data)},
                         data={"name": name, "replace": str(replace).lower()}, timeout=120,
                         **kwargs)


def _top(server, data: bytes) -> str:
    response = _search(server, data)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["name"]


def _images(server) -> int:
    return requests.get(server.url + "/health", timeout=10).json()["images"]


def _uploads(server) -> list[str]:
    folder = server.index / "uploads"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _png(width: int, height: int, value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (value,) * 3).save(out, "PNG")
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels (its data is one empty row)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def _d2r(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "d2r", *args], capture_output=True, text=True,
                          timeout=300)


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(head.encode())
    return sock


def _response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


# ------------------------------------------------------------------ who may call what

def test_cross_site_writes_and_searches_are_refused(server, queries):
    before, photo = _images(server), queries[0].read_bytes()
    own = f"http://127.0.0.1:{server.port}"
    for headers in ({"Origin": "http://evil.example"},
                    {"Origin": "null"},
                    {"Origin": f"http://localhost:{server.port}"},
                    {"Origin": f"http://127.0.0.1:{free_port()}"},
                    {"Referer": "http://evil.example/page.html"},
                    {"Sec-Fetch-Site": "cross-site"}):
        _error(server, _add(server, photo, "forged.jpg", headers=headers), 403,
               "only pages of this server may send it")
        _error(server, _search(server, photo, headers=headers), 403, "refused")
    _error(server, requests.delete(server.url + "/images/synth_db_000001.jpg", timeout=60,
                                   headers={"Origin": "http://evil.example"}), 403, "refused")
    assert _images(server) == before and "forged.jpg" not in _uploads(server)
    assert _search(server, photo, headers={"Origin": own, "Referer": own + "/"}).ok
    added = _add(server, photo, "same-origin.jpg", headers={"Origin": own,
                                                            "Sec-Fetch-Site": "same-origin"})
    assert added.status_code == 201, added.text
    assert requests.delete(server.url + "/images/same-origin.jpg", timeout=60).ok
    assert _images(server) == before and "same-origin.jpg" not in _uploads(server)


def test_host_names_other_than_the_servers_are_refused(server):
    """DNS rebinding: a foreign name resolving to 127.0.0.1 carries that name in Host."""
    for host in (f"evil.example:{server.port}", "evil.example", "127.0.0.1.evil.example"):
        _error(server, requests.get(server.url + "/health", headers={"Host": host},
                                    timeout=10), 403, "not a name of this server",
               "--allowed-host")
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}",
                 f"{HOST_NAME}:{server.port}", HOST_NAME.upper()):
        assert requests.get(server.url + "/health", headers={"Host": host}, timeout=10).ok


def test_writes_on_a_public_address_need_a_token(built):
    run = _d2r("serve", "--index", str(built), "--host", "0.0.0.0", "--port", str(free_port()),
               "--allow-writes")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        "d2r serve: error: --allow-writes on 0.0.0.0 needs --token (or $D2R_TOKEN): anyone who "
        "reaches the port could change the index")
    assert "serving" not in run.stdout


def test_a_busy_port_is_one_line(built):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = _d2r("serve", "--index", str(built), "--port", str(port))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == (
        f"d2r serve: error: port {port} on 127.0.0.1 is in use (another d2r serve?); choose "
        f"another with --port")
    assert "serving" not in run.stdout and "Errno" not in run.stderr
    assert "swigfaiss" not in run.stderr  # faiss's loader says nothing at INFO


# ------------------------------------------------------------------ stored photos

def test_a_failed_replace_keeps_the_stored_photo(server, queries):
    first, second = queries[0].read_bytes(), queries[1].read_bytes()
    added = _add(server, first, "kept.jpg")
    assert added.status_code == 201, added.text
    thumb = requests.get(server.url + "/images/kept.jpg", timeout=10).content
    count, uploads = _images(server), _uploads(server)
    assert uploads == ["kept.jpg"] and _top(server, first) == "kept.jpg"

    def unchanged():
        assert (server.index / "uploads" / "kept.jpg").read_bytes() == first
        assert _uploads(server) == uploads and _images(server) == count
        assert requests.get(server.url + "/images/kept.jpg", timeout=10).content == thumb
        assert _top(server, first) == "kept.jpg"

    truncated = first[:len(first) // 2]
    _error(server, _add(server, truncated, "kept.jpg", "broken.jpg", replace=True), 400,
           "kept.jpg", "truncated")
    unchanged()
    lock = os.open(server.index / ".d2r-writer.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        busy = _add(server, second, "kept.jpg", replace=True)
        _error(server, busy, 409, "being built or updated by another d2r process")
        assert busy.headers["Retry-After"] == "5"
        _error(server, requests.delete(server.url + "/images/kept.jpg", timeout=60), 409,
               "another d2r process")
    finally:
        os.close(lock)
    unchanged()
    _error(server, _add(server, truncated, "new.jpg", "broken.jpg"), 400, "new.jpg")
    unchanged()

    replaced = _add(server, second, "kept.jpg", replace=True)
    assert replaced.status_code == 201, replaced.text
    assert (server.index / "uploads" / "kept.jpg").read_bytes() == second
    assert _uploads(server) == uploads and _images(server) == count
    assert requests.get(server.url + "/images/kept.jpg", timeout=10).content != thumb
    assert _top(server, second) == "kept.jpg"
    assert requests.delete(server.url + "/images/kept.jpg", timeout=60).ok
    assert _uploads(server) == [] and _images(server) == count - 1


def test_a_featureless_image_is_refused_and_the_original_kept(server, queries):
    photo = queries[2].read_bytes()
    assert _add(server, photo, "blank-target.jpg").status_code == 201
    count = _images(server)
    _error(server, _add(server, _png(64, 64, 255), "blank-target.jpg", "blank.png",
                        replace=True), 400, "blank-target.jpg", "no local features")
    _error(server, _add(server, _png(64, 64, 255), "blank-new.jpg", "blank.png"), 400,
           "blank-new.jpg", "no local features")
    assert (server.index / "uploads" / "blank-target.jpg").read_bytes() == photo
    assert _uploads(server) == ["blank-target.jpg"] and _images(server) == count
    assert _top(server, photo) == "blank-target.jpg"
    assert requests.delete(server.url + "/images/blank-target.jpg", timeout=60).ok


def test_an_uploads_symlink_is_refused(server, queries, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    uploads = server.index / "uploads"
    uploads.mkdir(exist_ok=True)
    uploads.rename(server.index / "uploads.real")
    uploads.symlink_to(outside, target_is_directory=True)
    try:
        _error(server, _add(server, queries[0].read_bytes(), "escape.jpg"), 409,
               "symbolic link", "only inside the index")
        run = _d2r("serve", "--index", str(server.index), "--port", str(free_port()),
                   "--allow-writes")
        assert run.returncode == 2 and "symbolic link" in run.stderr.strip().splitlines()[-1]
    finally:
        uploads.unlink()
        (server.index / "uploads.real").rename(uploads)
    assert list(outside.iterdir()) == [] and "escape.jpg" not in _uploads(server)


def test_names_are_counted_in_bytes(server, queries):
    photo = queries[0].read_bytes()
    _error(server, _add(server, photo, "€" * 200), 400, "600 bytes in UTF-8",
           "limit of 255")
    longest = "€" * 85  # 255 bytes
    assert _add(server, photo, longest).status_code == 201
    assert _uploads(server) == [longest]
    assert requests.delete(server.url + "/images/" + longest, timeout=60).ok
    assert _uploads(server) == []


# ------------------------------------------------------------------ limits

def test_a_declared_large_body_is_refused_before_it_is_read(server):
    sock = _raw_request(server.port, f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     f"Content-Type: multipart/form-data; boundary=b\r\n"
                                     f"Content-Length: {400 << 20}\r\n\r\n")
    with sock:
        response = _response(sock)
        assert response.status == 413
        assert "larger than the 1.1 MiB limit" in response.read().decode()


def test_a_chunked_body_is_cut_at_the_limit(server):
    sock = _raw_request(server.port, "POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Content-Type: multipart/form-data; boundary=b\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n")
    part = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    chunks = [part] + [b"x" * (64 << 10)] * 1024  # 64 MiB in all
    sent = 0
    with sock:
        sock.setblocking(False)
        for chunk in chunks:
            readable, writable, _ = select.select([sock], [sock], [], 20)
            if readable:
                break
            data = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            while data:
                _, writable, _ = select.select([sock], [sock], [], 20)
                if not writable:
                    break
                n = sock.send(data)
                sent, data = sent + n, data[n:]
        sock.setblocking(True)
        response = _response(sock)
        assert response.status == 413 and "larger than" in response.read().decode()
    assert sent < 32 << 20


def test_every_part_of_a_multipart_body_counts(server, queries):
    """Two form fields of 700 KiB, each under the upload limit of 1 MiB, pass it together."""
    field = "1" * (700 << 10)
    _error(server, requests.post(server.url + "/search", timeout=60,
                                 files={"image": ("q.jpg", queries[0].read_bytes())},
                                 data={"box": field, "note": field}), 413, "larger than")


def test_a_full_queue_answers_503_with_retry_after(server, queries):
    """One worker and one waiting request: two requests whose bodies never finish hold
    both places; the next is 503 at once, /health still answers."""
    head = ("POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            "boundary=b\r\nContent-Length: 1000\r\n\r\n--b\r\n")
    held = [_raw_request(server.port, head) for _ in range(2)]
    try:
        for _ in range(50):
            busy = _search(server, queries[0].read_bytes())
            if busy.status_code == 503:
                break
        _error(server, busy, 503, "the server is busy", "try again")
        assert busy.headers["Retry-After"] == "1"
        assert requests.get(server.url + "/health", timeout=10).ok
    finally:
        for sock in held:
            sock.close()
    for _ in range(100):
        answer = _search(server, queries[0].read_bytes())
        if answer.status_code != 503:
            break
    assert answer.status_code == 200, answer.text


# ------------------------------------------------------------------ answers

def test_error_bodies_name_the_upload_not_the_server(server, queries):
    assert _error(server, _search(server, _png(64, 64, 255), "blank.png"), 400).startswith(
        "blank.png: no local features in the image")
    _error(server, _search(server, queries[0].read_bytes()[:2000], "cut.jpg"), 400, "cut.jpg",
           "truncated")
    _error(server, _search(server, b"GIF89a-not-really", "odd.gif"), 400, "odd.gif",
           "not an image")
    _error(server, _search(server, _png_header(20000, 20000), "huge.png"), 413,
           "huge.png has 20000x20000 pixels, more than the limit of 1000000")
    _error(server, _search(server, _png_header(8000, 6000), "48mp.png"), 413,
           "8000x6000 pixels")


def test_unknown_routes_and_methods_answer_error_bodies(server):
    missing = requests.get(server.url + "/nope", timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "Not Found: GET /nope"}
    wrong = requests.put(server.url + "/search", timeout=10)
    assert wrong.status_code == 405 and wrong.json() == {
        "error": "Method Not Allowed: PUT /search"}
    assert wrong.headers["Allow"] == "POST"


def test_the_server_follows_the_index_changed_from_the_command_line(server, queries, tmp_path,
                                                                     tiny_dataset):
    name = "synth_db_000003.jpg"
    photo = (tiny_dataset / "jpg" / name).read_bytes()
    count = _images(server)
    assert _top(server, photo) == name
    removed = _d2r("remove", "--index", str(server.index), "--names", name)
    assert removed.returncode == 0, removed.stderr
    assert _images(server) == count - 1
    assert name not in [r["name"] for r in _search(server, photo).json()["results"]]
    _error(server, requests.get(server.url + "/images/" + name, timeout=10), 404, name)

    again = _add(server, photo, name)
    assert again.status_code == 201, again.text
    assert _images(server) == count and _top(server, photo) == name
    assert requests.get(server.url + "/images/" + name, timeout=10).ok

    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copy(queries[3], folder / "from-cli.jpg")
    added = _d2r("add", "--index", str(server.index), "--images", str(folder))
    assert added.returncode == 0, added.stderr
    assert _images(server) == count + 1
    assert _top(server, queries[3].read_bytes()) == "from-cli.jpg"
    before = [r["name"] for r in _search(server, photo).json()["results"]]
    compacted = _d2r("compact", "--index", str(server.index))
    assert compacted.returncode == 0, compacted.stderr
    assert [r["name"] for r in _search(server, photo).json()["results"]] == before
    assert requests.get(server.url + "/images/" + name, timeout=10).ok
    assert requests.get(server.url + "/images/from-cli.jpg", timeout=10).ok
