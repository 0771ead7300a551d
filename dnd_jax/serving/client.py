"""A small standard-library client for ``python -m dnd_jax.serve`` (used by the tests and the load bench).

    srv = start_server(checkpoint, store, port)    # a real server process, ready when this returns
    status, body = request(srv.url, "POST", "/v1/adapters", {"prompts": [...]})
    tensors = adapter_tensors(fetch_zip(srv.url, body["id"]))
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, method: str, path: str, body=None, *, raw: bytes | None = None, headers: dict | None = None,
            timeout: float = 300.0) -> tuple[int, object]:
    """(status, parsed JSON or raw bytes). ``body`` is sent as JSON; ``raw`` as is."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        if resp.getheader("content-type", "").startswith("application/json"):
            return resp.status, json.loads(payload)
        return resp.status, payload
    finally:
        conn.close()


def fetch_zip(url: str, aid: str) -> dict[str, bytes]:
    status, payload = request(url, "GET", f"/v1/adapters/{aid}")
    if status != 200:
        raise RuntimeError(f"GET /v1/adapters/{aid}: {status} {payload}")
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def check_files(files: dict[str, bytes], manifest: dict) -> None:
    """Every file the manifest lists arrived whole (sha256 and size)."""
    for name, info in manifest["files"].items():
        if name not in files:
            raise AssertionError(f"{name} missing from the download")
        if len(files[name]) != info["size"] or hashlib.sha256(files[name]).hexdigest() != info["sha256"]:
            raise AssertionError(f"{name} does not match its sha256 in the manifest")


def adapter_tensors(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(files["adapter_model.safetensors"])


@dataclasses.dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path
    ready_s: float

    def stop(self, sig: int | None = None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(checkpoint: str | Path, store: str | Path, port: int | None = None, *, log: str | Path | None = None,
                 extra: tuple[str, ...] = (), timeout: float = 600.0) -> Server:
    """Start ``python -m dnd_jax.serve`` and wait until ``/healthz`` answers (raises with the log if it dies)."""
    port = port or free_port()
    log = Path(log or Path(store).with_name(Path(store).name + ".log"))
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dnd_jax.serve", "--checkpoint", str(checkpoint), "--store", str(store),
           "--port", str(port), *extra]
    t0 = time.perf_counter()
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status, _ = request(url, "GET", "/healthz", timeout=2)
            if status == 200:
                return Server(proc, url, log, time.perf_counter() - t0)
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise TimeoutError(f"server not ready after {timeout} s:\n{log.read_text()[-3000:]}")
