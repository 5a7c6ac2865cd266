"""A real Orthanc PACS for integration tests: a subprocess on free loopback ports with a generated config.

:func:`start_orthanc` writes ``config.json`` (tmp storage, HTTP without authentication on loopback only, DICOM
AE title ``ORTHANC``, the node as a DICOM modality), starts ``Orthanc config.json`` with ``TCP_NODELAY=1`` and
waits for its REST API; :class:`Orthanc` wraps the few REST calls the tests need (urllib only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.net import free_port

ORTHANC_BINARY = "Orthanc"
ORTHANC_AE = "ORTHANC"


def orthanc_binary() -> str | None:
    """The path of the ``Orthanc`` executable, or None when it is not installed."""
    return shutil.which(ORTHANC_BINARY) or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


@dataclass
class Orthanc:
    """A running Orthanc subprocess and its REST API."""

    process: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json", timeout: float = 60.0) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            data: bytes = response.read()
            return data

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def post_json(self, path: str, payload: Any, timeout: float = 120.0) -> Any:
        return json.loads(self.request("POST", path, json.dumps(payload).encode(), timeout=timeout))

    def upload(self, dicom_file: Path) -> dict[str, Any]:
        """POST /instances: store one DICOM file; returns Orthanc's answer (ID, ParentStudy, Status...)."""
        answer: dict[str, Any] = json.loads(
            self.request("POST", "/instances", dicom_file.read_bytes(), "application/dicom"))
        return answer

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(folder: Path, http_port: int, dicom_port: int, modalities: dict[str, tuple[str, str, int]]) -> Path:
    config = {
        "Name": "ainode-integration",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,  # loopback only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {name: list(entry) for name, entry in modalities.items()},
        "DicomScuTimeout": 30,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def start_orthanc(folder: Path, modalities: dict[str, tuple[str, str, int]],
                  startup_timeout_s: float = 60.0) -> Orthanc:
    """Start Orthanc with its own config in ``folder``; returns once GET /system answers (or raises)."""
    binary = orthanc_binary()
    if binary is None:
        raise FileNotFoundError("the Orthanc binary is not installed (apt-get install orthanc)")
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config = write_config(folder, http_port, dicom_port, modalities)
    env = {**os.environ, "TCP_NODELAY": "1"}
    with (folder / "orthanc.log").open("ab") as log:
        process = subprocess.Popen([binary, str(config)], cwd=folder, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    orthanc = Orthanc(process, http_port, dicom_port, folder)
    deadline = time.monotonic() + startup_timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with status {process.returncode}:\n{orthanc.log[-4000:]}")
        try:
            orthanc.get_json("/system")
            return orthanc
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() > deadline:
            orthanc.stop()
            raise TimeoutError(f"Orthanc's REST API did not answer within {startup_timeout_s:g} s:\n"
                               f"{orthanc.log[-4000:]}")
        time.sleep(0.2)
