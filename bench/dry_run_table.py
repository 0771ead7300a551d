"""The dry-run table (docs/scaleout/dry_run.md): paper-scale generators on 1, 8, 64 and 256 devices.

    python bench/dry_run_table.py                 # placement numbers for every cell (seconds)
    python bench/dry_run_table.py --compile 0p5b@8,0p5b@1   # + XLA memory/FLOPs for those cells

Each cell runs in its own process with that many simulated CPU devices
(``--xla_force_host_platform_device_count``), mesh data x model with model = 2 up to 64 devices and 4 on
256 (so that the global batch of 64 covers the data axis). Results accumulate in
``docs/scaleout/dry_run.json`` (one entry per cell; a rerun replaces its cells).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"0p5b": "qwen25_0p5b_commonsense", "1p5b": "qwen25_1p5b_lora16", "7b": "qwen25_7b_lora16"}
DEVICES = (1, 8, 64, 256)
MODEL_AXIS = {1: 1, 8: 2, 64: 2, 256: 4}

_CELL = r'''
import importlib, json, sys, time
sys.path.insert(0, {root!r})
import jax
from dnd_jax import dry_run, sharding
cfg = importlib.import_module("configs." + {config!r}).get_config()
ins, outs = dry_run.shapes_for(cfg)
n, m = {n}, {m}
mesh = sharding.make_mesh((("data", n // m), ("model", m)), jax.devices()[:n])
t = time.time()
r = dry_run.estimate(cfg, mesh, ins, outs, compile={compile})
r["seconds"] = time.time() - t
print("RESULT " + json.dumps(r, default=str))
'''


def run_cell(key: str, n: int, compile: bool) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
    code = _CELL.format(root=str(ROOT), config=CONFIGS[key], n=n, m=MODEL_AXIS[n], compile=compile)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"{key}@{n} failed:\n{proc.stderr[-3000:]}")
    return {"generator": key, "config": CONFIGS[key], **json.loads(line[0][7:])}


def markdown(table: dict) -> str:
    """The table of docs/scaleout/dry_run.md from dry_run.json."""
    gib = 2**30
    head = ("| generator (config) | devices | mesh | params | params GiB/dev | Adam GiB/dev | XLA peak GiB/dev "
            "| TFLOP/step | unsplit |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    for key in CONFIGS:
        for n in DEVICES:
            r = table.get(f"{key}@{n}")
            if r is None:
                continue
            mem = r.get("memory_per_device", {}).get("peak")
            flops = r.get("flops_per_step")
            rows.append(f"| {key} (`{r['config']}`) | {n} | {r['mesh']['data']}x{r['mesh']['model']} "
                        f"| {r['params'] / 1e6:.1f}M | {r['param_bytes_per_device'] / gib:.3f} "
                        f"| {r['opt_bytes_per_device'] / gib:.3f} | {f'{mem / gib:.2f}' if mem else '-'} "
                        f"| {f'{flops / 1e12:.1f}' if flops else '-'} | {len(r['unsplit'])} |")
    return head + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table of --out and exit")
    ap.add_argument("--compile", default="", help="cells to compile, e.g. 0p5b@8,7b@256 (default: none)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "scaleout" / "dry_run.json"))
    args = ap.parse_args()
    out = Path(args.out)
    table = json.loads(out.read_text()) if out.is_file() else {}
    if args.markdown:
        print(markdown(table))
        return
    cells = [c for c in args.compile.split(",") if c] or [f"{k}@{n}" for k in CONFIGS for n in DEVICES]
    for cell in cells:
        key, n = cell.split("@")
        t = time.time()
        r = run_cell(key, int(n), bool(args.compile))
        prev = table.get(cell, {})
        if "memory_per_device" in prev and "memory_per_device" not in r:
            r = {**prev, **{k: v for k, v in r.items() if k != "seconds"}}  # keep compiled numbers
        table[cell] = r
        out.write_text(json.dumps(table, indent=1, default=str) + "\n")
        print(f"{cell}: {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
