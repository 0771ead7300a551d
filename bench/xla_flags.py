"""XLA CPU flags against the decoder: forward time, fraction of the matmul rate, and output change.

    python bench/xla_flags.py --config configs/smollm2_commonsense.py --repeats 5

Each variant runs ``bench/decoder.py`` (forward only) in a fresh process with ``XLA_FLAGS`` set; the
batch-1 outputs are compared with the default's (largest absolute difference over the largest
value). Writes ``docs/bench/xla_flags_<config>.json``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/smollm2_commonsense.py", "Config file.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per variant.")
_OUT = flags.DEFINE_string("out", str(common.DOCS), "Output folder.")
VARIANTS = {
    "default": "",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "onednn": "--xla_cpu_use_onednn=true",
    "no_xnnpack": "--xla_cpu_use_xnnpack=false",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_thunk_runtime": "--xla_cpu_use_thunk_runtime=false",
}


def main(argv) -> None:
    del argv
    tmp = Path(tempfile.mkdtemp(prefix="dnd_xla_flags_"))
    name = Path(_CONFIG.value).stem
    res = common.Result(f"xla_flags_{name}", config=name, variants={})
    ref = None
    for key, xla_flags in VARIANTS.items():
        env = dict(os.environ, XLA_FLAGS=xla_flags)
        out = tmp / f"{key}.npy"
        cmd = [sys.executable, str(common.ROOT / "bench/decoder.py"), "--config", _CONFIG.value, "--notrain",
               "--nobreakdown", f"--repeats={_REPEATS.value}", "--name", key, "--out", str(tmp),
               "--save_output", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=common.ROOT)
        if proc.returncode != 0:
            res["variants"][key] = {"flags": xla_flags, "error": proc.stderr.strip().splitlines()[-1][:300]}
            continue
        d = json.loads((tmp / f"{key}.json").read_text())
        y = np.load(out).astype(np.float64)
        ref = y if ref is None else ref
        p = d["programs"]["forward_b1"]
        res["variants"][key] = {"flags": xla_flags, "forward_b1_s": p["time_s"], "gflops_best": p["gflops_best"],
                                "fraction_of_matmul_best": p["fraction_of_matmul_best"],
                                "matmul_gflops_best": d["matmul_reference"]["gflops_best"],
                                "max_abs_diff_over_max": float(np.abs(y - ref).max() / np.abs(ref).max())}
        print(key, json.dumps(res["variants"][key]))
    res.write(_OUT.value)


if __name__ == "__main__":
    app.run(main)
