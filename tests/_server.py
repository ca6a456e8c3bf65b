"""A real ``d2r serve`` process on a loopback port, for the API and web-page tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from d2r.config import load_config
from d2r.pipeline.build import build_index
from d2r.pipeline.sources import ImageSource

SMALL = ["features.rootsift.max_features=200", "codebook.num_words=32"]


def photo_index(dataset: Path, work: Path) -> Path:
    """An ASMK* index of the synthetic benchmark's database photos (a folder of JPEGs)."""
    photos = work / "photos"
    photos.mkdir(parents=True)
    for image in sorted((dataset / "jpg").glob("synth_db_*.jpg")):
        shutil.copy(image, photos)
    config = load_config("rootsift-asmk-star", overrides=SMALL)
    return build_index(config, ImageSource.from_directory(photos), work / "index",
                       show_progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``d2r serve --index INDEX ARGS`` on 127.0.0.1, started and stopped with ``with``."""

    def __init__(self, index: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "d2r", "serve", "--index", str(index),
                        "--port", str(self.port), *args]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        self.log = open(os.devnull if not os.environ.get("D2R_SERVER_LOG") else
                        os.environ["D2R_SERVER_LOG"], "w")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"d2r serve exited with {self.process.returncode}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError("d2r serve did not answer /health within 120 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
