"""JSON, text and figure writes are atomic: a reader sees the old file or the whole new one.

A write that fails leaves the old file and no temp file; a writer SIGKILLed mid-write (really killed,
a subprocess) leaves the old or the new file whole, never a partial one.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dnd_jax import assets, report

REPO = Path(__file__).resolve().parents[1]


def test_a_failed_json_or_text_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "results.json"
    assets.write_json_atomic(path, {"acc": 0.5})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular"):
        assets.write_json_atomic(path, {"acc": 0.7, "bad": circular})
    assert json.loads(path.read_text()) == {"acc": 0.5}
    text = tmp_path / "results.md"
    assets.write_text_atomic(text, "old\n")
    with pytest.raises(UnicodeEncodeError):
        assets.write_text_atomic(text, "new, half written before a lone surrogate \ud800")
    assert text.read_text() == "old\n"
    blob = tmp_path / "cache.npz"
    assets.write_bytes_atomic(blob, b"old")
    with pytest.raises(TypeError):
        assets.write_bytes_atomic(blob, "not bytes")
    assert blob.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.npz", "results.json", "results.md"]  # no temp file


def test_a_failed_figure_save_keeps_the_old_figure_and_leaves_nothing(tmp_path):
    plt = report.pyplot()
    path = tmp_path / "results.png"
    fig = plt.figure()
    report.save_figure(fig, path)
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG")

    fig = plt.figure()

    def broken_savefig(fname, **kwargs):
        fname.write(b"\x89PNG half")  # part of the figure, then the failure
        raise OSError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(OSError, match="disk full"):
        report.save_figure(fig, path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["results.png"]
    assert not plt.fignum_exists(fig.number)  # closed either way


_WRITER = """
import sys
from dnd_jax import assets
path, n = sys.argv[1], int(sys.argv[2])
payloads = [{"version": v, "rows": [str(v) * 64] * n} for v in ("a", "b")]
i = 0
while True:
    assets.write_json_atomic(path, payloads[i % 2])
    i += 1
"""


def test_a_sigkilled_writer_leaves_the_old_or_the_new_file_whole(tmp_path):
    path, n = tmp_path / "big.json", 200_000  # ~15 MB per write: a kill often lands mid-write
    rng = random.Random(0)
    caught_mid_write = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(n)], cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        data = json.loads(path.read_text())  # parses: never a partial file
        assert data["version"] in ("a", "b") and data["rows"] == [data["version"] * 64] * n
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".big.json.")]
        caught_mid_write += bool(temps)
        for p in temps:  # what a killed writer can leave: its hidden temp file (cleared for the next round)
            os.unlink(p)
    assert caught_mid_write >= 1  # the kills did land inside writes (else this test proves nothing)
