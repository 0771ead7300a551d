"""docs/bench/device_h200.md from the device runs' JSON (one NVIDIA H200) and XLA:CPU's estimates.

    python bench/device_summary.py          # reads docs/bench/device_*.json, writes docs/bench/device_h200.md

FLOP rates use analytic counts (:func:`dnd_jax.models.hyperconv.flops_per_example`,
:func:`dnd_jax.jax_lm.step_flops`) over the measured times: on a GPU, XLA's cost analysis leaves out the
cuDNN/cuBLAS custom calls that convolutions and large dots become (the JSON keeps its counts as
``xla_flops``), and everywhere it counts a ``lax.scan`` body once. Rates are compared with the same
run's measured 8192^3 matmul rate in the matching precision.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30


def _load(name: str) -> dict:
    return json.loads((ROOT / "docs" / "bench" / name).read_text())


def decoder_rows(dec: dict, gen: dict) -> list[str]:
    from dnd_jax.models import hyperconv

    peaks = {k: v["tflops_best"] for k, v in dec["matmul"].items()}
    rows = []
    for name, d in dec["decoders"].items():
        model = hyperconv.HyperConv(out_shape=tuple(d["out_shape"]), hidden_shapes=tuple(map(tuple, d["hidden_shapes"])),
                                    kernel_size=3)
        fwd = hyperconv.flops_per_example(model, tuple(d["in_shape"]))
        ref = peaks[d["reference_matmul"]]
        for prog, r in d["programs"].items():
            batch = int(prog.rsplit("_b", 1)[1])
            flops = fwd * batch * (3 if prog.startswith("train") else 1)
            t = r["time_s"]["median"]
            rows.append(f"| {name} ({d['dtype']}) | {prog.replace('_', ' ')} | {1e3 * t:.2f} | {flops / 1e9:.1f} | "
                        f"{flops / t / 1e12:.0f} | {100 * flops / t / 1e12 / ref:.0f}% |")
    tr, shapes = gen["train"], gen["shapes"]
    model = hyperconv.HyperConv(out_shape=tuple(shapes["out"]), hidden_shapes=tuple(map(tuple, shapes["hidden"])),
                                kernel_size=shapes["kernel"])
    flops = 3 * hyperconv.flops_per_example(model, tuple(shapes["in"])) * tr["batch_size"]
    t = tr["median_step_s"]
    rows.append(f"| {gen['generator']} generator, standalone (`device_h200.py`, bf16) | train step b{tr['batch_size']} "
                f"| {1e3 * t:.1f} | {flops / 1e9:.0f} | {flops / t / 1e12:.0f} | {100 * flops / t / 1e12 / peaks['bfloat16']:.0f}% |")
    return rows


def function_loss_rows(fl: dict, cpu: dict) -> tuple[list[str], list[tuple]]:
    from dnd_jax import dry_run, jax_lm

    cpu_by = {(c["arch"], c["dtype"]): c for c in cpu["cases"]}
    mem, speed = [], []
    for c in fl["cases"]:
        if "error" in c:
            mem.append(f"| {c['arch']} | {c['dtype']} | error: {c['error']} |||||")
            continue
        est, cest = c["estimate_bytes"], cpu_by[(c["arch"], c["dtype"])]["estimate_bytes"]
        held = c["real_peak_bytes"] - est["peak"]
        mem.append(f"| {c['arch']} | {c['dtype']} | {c['base_lm_bytes'] / GIB:.2f} | {cest['peak'] / GIB:.2f} "
                   f"(temp {cest['temp'] / GIB:.2f}) | {est['peak'] / GIB:.2f} (temp {est['temp'] / GIB:.2f}) | "
                   f"{c['real_peak_bytes'] / GIB:.2f} | {held / GIB:+.2f} (outputs {est['output'] / GIB:.2f}) |")
        flops = jax_lm.step_flops(dry_run.lm_config_of(c["arch"]), c["rows"] * c["examples"], c["max_len"], c["max_answer"],
                                  c["rank"], remat=True)
        t = c["step_s"]["median"]
        ref = "bfloat16" if c["dtype"] == "bfloat16" else "float32_default"
        speed.append((c["arch"], c["dtype"], t, flops, ref))
    return mem, speed


def main() -> int:
    gen, dec, fl, cpu = (_load(n) for n in ("device_h200.json", "device_h200_decoder.json", "device_function_loss.json",
                                             "device_function_loss_estimate.json"))
    peaks = {k: v["tflops_best"] for k, v in dec["matmul"].items()}
    mem, speed = function_loss_rows(fl, cpu)
    g = gen["train"]
    lines = [
        "# On one NVIDIA H200 (the device machine)", "",
        f"Measured {gen['device_kind']}, jax {gen['jax']} (this machine's JAX is 0.10.2). Commands, run from the "
        "repository root on the device machine with `XLA_PYTHON_CLIENT_PREALLOCATE=false` (so the allocator's "
        "peak is what the programs hold):", "",
        "```bash", "python bench/device_h200.py --repeats 5 --out $OUT", dec["command"].replace("/root/out", "$OUT"),
        fl["command"].replace("/root/out", "$OUT"),
        "python bench/device_function_loss.py --estimate_only --out docs/bench   # here: XLA:CPU's estimates",
        "python bench/device_summary.py                                          # this page", "```", "",
        "## Matmul reference (8192^3, best of 5)", "",
        "| precision | TFLOP/s |", "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in peaks.items()], "",
        "## Generator (hyper-convolutional decoder): time and FLOP rate", "",
        "Analytic FLOPs (convolutions; a train step is 3x the forward). XLA's GPU cost analysis reports "
        "almost none of them (cuDNN calls), so its counts in the JSON are not rates.", "",
        "| decoder | program | median ms | GFLOP | TFLOP/s | of matmul peak |", "|---|---|---|---|---|---|",
        *decoder_rows(dec, gen), "",
        f"**Paper-scale (Qwen2.5-0.5B) generator, batch {g['batch_size']}:** real peak "
        f"{g['device_after']['peak_bytes_in_use'] / GIB:.1f} GiB against XLA:GPU's compiled estimate "
        f"{g['memory_analysis']['peak_estimate'] / GIB:.1f} GiB (x{g['real_peak_over_estimate']:.2f}); generating one "
        f"adapter (batch 1) peaks at {gen['generate_batch1']['device_after']['peak_bytes_in_use'] / GIB:.2f} GiB "
        f"in {1e3 * gen['generate_batch1']['median_s']:.1f} ms. Compile {g['compile_s']:.0f} s.", "",
        "## The function-space term (base LM forward + backward to per-row LoRA factors)", "",
        "Per-device slice of the dry run's setting: 16 rows x 2 examples x 64 tokens, rank-16 factors on all 7 "
        "linears, remat per layer; random weights of the real shapes. *XLA:CPU estimate* is what "
        "`train --dry_run` computes here; *XLA:GPU estimate* the same program compiled on the H200; *real* the "
        "allocator's peak over the run (base weights drawn one leaf per program, so drawing them peaks lower). "
        "The loop keeps the previous step's outputs (the LoRA gradients) alive while the next step runs, which "
        "accounts for all but 0.1-0.4 GiB of the real-minus-estimate column.", "",
        "| base LM | dtype | weights GiB | XLA:CPU estimate GiB | XLA:GPU estimate GiB | real peak GiB | "
        "real - GPU estimate GiB |", "|---|---|---|---|---|---|---|", *mem, "",
        "| base LM | dtype | median step s | TFLOP (`jax_lm.step_flops`) | TFLOP/s | of matmul peak |",
        "|---|---|---|---|---|---|",
        *[f"| {a} | {d} | {t:.4f} | {f / 1e12:.1f} | {f / t / 1e12:.0f} | {100 * f / t / 1e12 / peaks[r]:.0f}% "
          f"({r}) |" for a, d, t, f, r in speed], "",
    ]
    out = ROOT / "docs" / "bench" / "device_h200.md"
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
