"""The function-space term on one accelerator: the dry run's memory estimate against real allocation.

    python bench/device_function_loss.py --out "$OUT"                  # on the GPU: Qwen2.5-0.5B and -7B, f32 and bf16
    python bench/device_function_loss.py --tiny --allow_cpu --out /tmp/t  # CPU smoke test (tiny Llama shapes)

What ``train --dry_run`` reports for ``function_loss.weight > 0`` is XLA's compile-time memory
analysis of the step; on XLA:CPU the bfloat16 figures were an upper bound (it converts bf16 dot
operands to f32, docs/scaleout/dry_run.md). This measures, for the term alone (the base LM's
forward and backward to per-row LoRA factors, :func:`dnd_jax.jax_lm.answer_logprob` with remat as
the trainer runs it): the compiled memory analysis on the device, the device's real peak
(``memory_stats()['peak_bytes_in_use']``, one subprocess per case so peaks do not mix), step time
and FLOP rate (:func:`dnd_jax.jax_lm.step_flops` / median time: XLA's cost analysis counts the scan
over layers once and, on a GPU, leaves out cuBLAS calls). Random base weights of the real shapes and random
token ids: compute and memory, not quality. The per-device slice of the dry run's 4x2 mesh at batch
64 is 16 rows; each row has ``examples`` sequences of ``max_len`` tokens (the defaults: 2 x 64),
rank-16 factors on all 7 linears of every layer (the 7B config's LoRA).

Needs jax, numpy and flax (for ``dnd_jax.dry_run``, whose base-model shapes it uses; no optax, orbax or
ml_collections). Writes ``device_function_loss.json`` into ``--out`` after every case.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

def run_case(name: str, dtype_name: str, rows: int, examples: int, max_len: int, rank: int, repeats: int,
             estimate_only: bool = False) -> dict:
    """One case in this process: compile, memory analysis, timed steps, the device's peak.

    The base weights are drawn one leaf per program, so drawing them never needs more than the weights plus
    one leaf's float32 draw: the process's peak is the step's (checked: ``init_peak_bytes`` is reported)."""
    import jax
    import jax.numpy as jnp

    from dnd_jax import dry_run, jax_lm

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    cfg = dry_run.lm_config_of(name)  # the shapes `train --dry_run` uses
    dev = jax.devices()[0]
    abstract = jax_lm.abstract_params(cfg, dtype)
    d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    dims = {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d), "gate_proj": (d, f),
            "up_proj": (d, f), "down_proj": (f, d)}
    lora_sds = {lin: (jax.ShapeDtypeStruct((cfg.num_layers, rows, rank, fin), jnp.float32),
                      jax.ShapeDtypeStruct((cfg.num_layers, rows, fout, rank), jnp.float32))
                for lin, (fin, fout) in dims.items()}
    ints = jax.ShapeDtypeStruct((rows, examples), jnp.int32)
    ids_sds = jax.ShapeDtypeStruct((rows, examples, max_len), jnp.int32)
    max_answer = 16

    def loss(lora, params, ids, lengths, answer_len):
        lp = jax_lm.answer_logprob(cfg, params, ids, lengths, answer_len, lora, scale=2.0, max_answer=max_answer,
                                   remat=True)
        return -jnp.mean(lp / answer_len)

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(lora_sds, abstract, ids_sds, ints, ints).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    est = {k: int(getattr(mem, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    est["peak"] = est["argument"] + est["output"] - est["alias"] + est["temp"]
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else (cost or {})
    flops = jax_lm.step_flops(cfg, rows * examples, max_len, max_answer, rank, remat=True)
    out = {"arch": name, "dtype": dtype_name, "rows": rows, "examples": examples, "max_len": max_len, "rank": rank,
           "max_answer": max_answer, "estimate_bytes": est, "compile_s": compile_s, "analytic_flops": flops,
           "xla_flops": float(cost.get("flops", float("nan"))), "device_kind": dev.device_kind,
           "backend": jax.default_backend(), "jax": jax.__version__}
    if estimate_only:
        return out

    leaves, treedef = jax.tree.flatten(abstract)
    drawn = []
    for i, a in enumerate(leaves):  # one program per leaf: its float32 draw is the only temporary
        draw = jax.jit(lambda k, shape=a.shape, dt=a.dtype: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dt))
        drawn.append(jax.block_until_ready(draw(jax.random.fold_in(jax.random.key(0), i))))
    params = jax.tree.unflatten(treedef, drawn)
    rng = jax.random.key(1)
    lora = {}
    for lin, (sa, sb) in lora_sds.items():
        rng, ka, kb = jax.random.split(rng, 3)
        lora[lin] = (0.01 * jax.random.normal(ka, sa.shape, jnp.float32), 0.01 * jax.random.normal(kb, sb.shape, jnp.float32))
    ids = jax.random.randint(jax.random.key(2), ids_sds.shape, 0, cfg.vocab_size, jnp.int32)
    lengths = jnp.full(ints.shape, max_len, jnp.int32)
    answer_len = jnp.full(ints.shape, 8, jnp.int32)
    jax.block_until_ready((lora, ids, lengths, answer_len))
    before = dev.memory_stats() or {}
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        val, grads = compiled(lora, params, ids, lengths, answer_len)
        jax.block_until_ready((val, grads))
        times.append(time.perf_counter() - t0)
    times = times[1:]  # the first call warms up
    stats = dev.memory_stats() or {}
    real_peak = stats.get("peak_bytes_in_use")
    med = statistics.median(times)
    return out | {
        "base_lm_bytes": int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params))),
        "resident_before_step_bytes": before.get("bytes_in_use"), "init_peak_bytes": before.get("peak_bytes_in_use"),
        "real_peak_bytes": real_peak, "real_peak_over_estimate": (real_peak / est["peak"]) if real_peak else None,
        "step_s": {"min": min(times), "median": med, "max": max(times)}, "tflops_per_s": flops / med / 1e12,
        "loss": float(val), "grad_finite": bool(all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--tiny", action="store_true", help="tiny Llama shapes (a CPU smoke test)")
    ap.add_argument("--allow_cpu", action="store_true", help="run even without a GPU (script check)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--examples", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--case_timeout", type=int, default=150, help="seconds per case before it is killed")
    ap.add_argument("--estimate_only", action="store_true",
                    help="compile only (no allocation): this backend's memory estimate, e.g. XLA:CPU's as the dry run")
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    a = ap.parse_args()
    if a.case:
        name, dtype_name = a.case.split(":")
        print("RESULT " + json.dumps(run_case(name, dtype_name, a.rows, a.examples, a.max_len, a.rank, a.repeats,
                                              a.estimate_only)))
        return 0
    import jax

    if jax.default_backend() == "cpu" and not (a.allow_cpu or a.estimate_only):
        print("no accelerator: nothing measured (use --allow_cpu to check the script)")
        return 0
    cases = [("tiny_llama", "float32"), ("tiny_llama", "bfloat16")] if a.tiny else [
        ("qwen25_7b", "bfloat16"), ("qwen25_7b", "float32"), ("qwen25_0p5b", "bfloat16"), ("qwen25_0p5b", "float32")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fname = "device_function_loss_estimate.json" if a.estimate_only else "device_function_loss.json"
    report = {"command": "python bench/device_function_loss.py " + " ".join(sys.argv[1:]), "cases": []}
    t_all = time.perf_counter()
    for name, dtype_name in cases:
        cmd = [sys.executable, __file__, "--case", f"{name}:{dtype_name}", "--rows", str(a.rows), "--examples",
               str(a.examples), "--max_len", str(a.max_len), "--rank", str(a.rank), "--repeats", str(a.repeats)]
        cmd += ["--estimate_only"] if a.estimate_only else []
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.case_timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            res = json.loads(lines[-1][7:]) if lines else {
                "arch": name, "dtype": dtype_name, "error": (p.stderr or p.stdout).strip().splitlines()[-3:]}
        except subprocess.TimeoutExpired:
            res = {"arch": name, "dtype": dtype_name, "error": f"timed out after {a.case_timeout} s"}
        res["wall_s"] = time.perf_counter() - t0
        report["cases"].append(res)
        print(json.dumps({k: res.get(k) for k in ("arch", "dtype", "real_peak_bytes", "real_peak_over_estimate",
                                                  "step_s", "tflops_per_s", "error")}), flush=True)
        report["wall_s"] = time.perf_counter() - t_all
        tmp = out / (fname + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out / fname)
    print(f"wrote {out / fname} ({time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
