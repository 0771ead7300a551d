"""Render docs/benchmarks.md from docs/bench/*.json (every figure with the command that made it).

    python bench/report.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

OUT = common.ROOT / "docs" / "benchmarks.md"
NOTES = common.ROOT / "bench" / "notes.md"


def _load(name: str) -> dict | None:
    p = common.DOCS / f"{name}.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _mmm(s: dict, scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(s[k] * scale) for k in ("min", "median", "max"))


def _cond(d: dict) -> str:
    h = d["host"]
    return (f"`{d['command']}` — {d['date']}, {h['cpus']} CPUs ({h['cpu']}), load average "
            f"{h['load_avg'][0]:.1f} at start, {h.get('load_avg_end', ['?'])[0]} at end")


def _missing(cmd: str) -> list[str]:
    return [f"_Not measured yet: `{cmd}`._", ""]


def matmul_section(d: dict | None) -> list[str]:
    out = ["## The machine's limit: matmul throughput", ""]
    if d is None:
        return out + _missing("python bench/matmul.py")
    out += [_cond(d), "", "| n | JAX f32 GFLOP/s best (median) | JAX bf16 | torch f32 |", "|---|---|---|---|"]
    bf = {r["n"]: r for r in d.get("jax_bfloat16", [])}
    th = {r["n"]: r for r in d.get("torch_float32", [])}
    for r in d["jax_float32"]:
        n = r["n"]

        def cell(x):
            return f"{x['gflops_best']:.0f} ({x['gflops_median']:.0f})" if x else "-"
        out.append(f"| {n} | {cell(r)} | {cell(bf.get(n))} | {cell(th.get(n))} |")
    out += ["", f"Peak JAX float32 (best size, best run): **{d['peak_f32_gflops']:.0f} GFLOP/s** "
            f"(median runs: {d['peak_f32_gflops_median']:.0f}).", ""]
    return out


def decoder_section(d: dict | None, title: str, cmd: str) -> list[str]:
    out = [f"### {title}", ""]
    if d is None:
        return out + _missing(cmd)
    m = d["matmul_reference"]
    out += [_cond(d), "",
            f"Decoder: {d['param_count']:,} parameters, conditions {tuple(d['in_shape'])} -> tokens "
            f"{tuple(d['out_shape'])}; reference: a {m['n']}x{m['n']} float32 matmul timed in the same rounds: "
            f"{m['gflops_best']:.0f} GFLOP/s best, {m['gflops_median']:.0f} median, "
            f"{m.get('gflop_per_cpu_s', 0):.0f} GFLOP per CPU-second.", "",
            "| program | time s (min / median / max) | XLA GFLOP | GFLOP/s best (median) | fraction of matmul: best / median / per CPU-s |",
            "|---|---|---|---|---|"]
    for k, p in d["programs"].items():
        out.append(f"| {k} | {_mmm(p['time_s'], fmt='{:.3f}')} | {p['xla_flops'] / 1e9:.2f} | "
                   f"{p['gflops_best']:.0f} ({p['gflops_median']:.0f}) | {100 * p['fraction_of_matmul_best']:.0f}% / "
                   f"{100 * p['fraction_of_matmul_median']:.0f}% / {100 * p['fraction_of_matmul_per_cpu_s']:.0f}% |")
    out.append("")
    rows = d.get("breakdown_b1")
    if rows:
        out += ["Where the time goes (batch 1; every operation compiled and timed alone, interleaved; ms min):", "",
                "| stage | op | ms (min / median) | GFLOP | GFLOP/s best | as one dot_general over shifted copies (im2col): ms min | plain matmul of the same M, K, N: ms min |",
                "|---|---|---|---|---|---|---|"]
        by = {(r["stage"], r["op"]): r for r in rows}
        diffs = [r["max_abs_diff_over_max"] for r in rows if "max_abs_diff_over_max" in r]
        for r in rows:
            if "time_s" not in r or "im2col" in r["op"] or r["op"].endswith("gemm"):
                continue
            cells = []
            for alt_name in (" im2col dot", " gemm"):
                alt = by.get((r["stage"], r["op"].replace(" conv", alt_name)))
                cells.append(f"{alt['time_s']['min'] * 1e3:.2f}" if alt and r["op"].endswith("conv") else "")
            out.append(f"| {r['stage']} {tuple(r['in'])}->{tuple(r['out'])} | {r['op']} | "
                       f"{r['time_s']['min'] * 1e3:.2f} / {r['time_s']['median'] * 1e3:.2f} | "
                       f"{r['flops'] / 1e9:.3f} | {r.get('gflops_best', 0):.0f} | {cells[0]} | {cells[1]} |")
        parts = [r for r in rows if "time_s" in r and "im2col" not in r["op"] and not r["op"].endswith("gemm")
                 and "grad" not in r["op"] and r["op"] != "whole stage"]
        total = sum(r["time_s"]["min"] for r in parts)
        wholes = [r for r in rows if r["op"] == "whole stage"]
        if wholes:
            per_stage = ", ".join(f"stage {w['stage']}: {sum(r['time_s']['min'] for r in parts if r['stage'] == w['stage']) * 1e3:.1f}"
                                  f" vs {w['time_s']['min'] * 1e3:.1f}" for w in wholes)
            out += ["", f"Each stage's parts summed vs the whole stage compiled as one program (ms, min, same rounds): "
                    f"{per_stage}."]
        fwd = d["programs"]["forward_b1"]["time_s"]["min"]
        out += ["", f"Sum of the parts: {total * 1e3:.1f} ms vs the whole forward {fwd * 1e3:.1f} ms. im2col vs conv "
                f"largest difference / largest value: {max(diffs):.1e}.", ""]
    return out


def xla_section(d: dict | None) -> list[str]:
    out = ["### XLA CPU flags", ""]
    if d is None:
        return out + _missing("python bench/xla_flags.py")
    out += [_cond(d), "", "| variant | XLA_FLAGS | forward b1 s (min / median / max) | fraction of matmul (best) | "
            "output change (max abs diff / max) |", "|---|---|---|---|---|"]
    for k, v in d["variants"].items():
        if "error" in v:
            out.append(f"| {k} | `{v['flags']}` | error: {v['error']} | | |")
            continue
        out.append(f"| {k} | `{v['flags'] or '(none)'}` | {_mmm(v['forward_b1_s'], fmt='{:.3f}')} | "
                   f"{100 * v['fraction_of_matmul_best']:.0f}% | {v['max_abs_diff_over_max']:.1e} |")
    return out + [""]


def cold_section(d: dict | None) -> list[str]:
    out = ["## Cold start: a new `python -m dnd_jax.generate` process to the adapter on disk", ""]
    if d is None:
        return out + _missing("python bench/cold_start.py")
    out += [_cond(d), "", f"Generator: `{d['generator']}` (bench/fixtures.py: the SmolLM2 config's decoder and "
            f"LoRA layout, trained 2 steps on a synthetic zoo), {d['num_prompts']} prompts. Adapters of every run "
            f"byte-identical: {d['identical_adapters']}.", "",
            "| run | wall s | CPU s | peak RSS MB | interpreter + imports s | load s | encode s | decode s | write s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for k, label in (("first", "first (empty caches)"), ("cold", "new process, caches filled")):
        r = d[k]
        out.append(f"| {label} (n={r['wall_s']['n']}; min / median / max) | {_mmm(r['wall_s'])} | {_mmm(r['cpu_s'])} | "
                   f"{_mmm(r['peak_rss_mb'], fmt='{:.0f}')} | {_mmm(r['startup_imports_s'])} | "
                   f"{_mmm(r['stage_load_s'])} | {_mmm(r['stage_encode_s'])} | {_mmm(r['stage_decode_s'])} | "
                   f"{_mmm(r['stage_write_s'])} |")
    w = d["warm"]
    out += ["", f"Warm (same process, after one generation; n={w['wall_s']['n']}): generate + write "
            f"{_mmm(w['wall_s'])} s (encode {_mmm(w['encode_s'])}, decode {_mmm(w['decode_s'])}, write "
            f"{_mmm(w['write_s'])}).", ""]
    sf, sc = d.get("stages_first"), d.get("stages_cold")
    if sf and sc:
        first, cold = dict(sf["stages"]), dict(sc["stages"])
        names = [k for k, _ in sf["stages"]] + [k for k, _ in sc["stages"] if k not in first]
        out += ["Stage by stage (one process each, timed inside it by wrapping the library's own functions; "
                "indented rows are parts of the `(all)` row above them):", "",
                "| stage | first process, empty caches: s | new process, caches filled: s |", "|---|---|---|"]
        for k in names:
            part = k.startswith(("checkpoint:", "encoder:", "decoder:"))
            label = ("&nbsp;&nbsp;" if part else "") + k

            def cell(v):
                return f"{v:.3f}" if v is not None else "-"
            out.append(f"| {label} | {cell(first.get(k))} | {cell(cold.get(k))} |")
        for key, label in (("process_s", "whole process (after the interpreter started)"),
                           ("trace_s", "of which JAX tracing"), ("lower_s", "of which lowering to StableHLO"),
                           ("compile_or_cache_load_s", "of which XLA compile, or load from the compilation cache")):
            out.append(f"| {label} | {sf[key]:.3f} | {sc[key]:.3f} |")
        out += ["", f"Compilation cache: first process {sf['cache_misses']} programs compiled, {sf['cache_hits']} loaded; "
                f"caches filled: {sc['cache_misses']} compiled, {sc['cache_hits']} loaded. Orbax imported: "
                f"{sf['orbax_imported']} / {sc['orbax_imported']}; flax imported: {sf['flax_imported']} / "
                f"{sc['flax_imported']}.", ""]
    imp = d.get("imports_cold", {})
    if imp:
        out += ["Heavy packages imported by a cold process (cumulative import s, one `-X importtime` run): " +
                ", ".join(f"{k} {v:.2f}" for k, v in sorted(imp["imported_s"].items(), key=lambda kv: -kv[1])) +
                "; never imported: " + ", ".join(imp["not_imported"]) + ".", ""]
    return out


def throughput_section(d: dict | None) -> list[str]:
    out = ["## Throughput: `generate_many`", ""]
    if d is None:
        return out + _missing("python bench/throughput.py")
    out += [_cond(d), "", "| prompt sets | adapters/s best (median) | with writing (best) | encode s min | decode s min | "
            "write s min |", "|---|---|---|---|---|---|"]
    for n, s in d["sizes"].items():
        out.append(f"| {n} | {s['adapters_per_s_best']:.2f} ({s['adapters_per_s_median']:.2f}) | "
                   f"{s['adapters_per_s_with_write_best']:.2f} | {s['encode_s']['min']:.2f} | {s['decode_s']['min']:.2f} | "
                   f"{s.get('write_s', {}).get('min', 0):.2f} |")
    return out + [""]


def _speed_cells(r: dict, now_s: float | None) -> tuple[str, str, str, str]:
    hi, lo = r["steps_hi"], r["steps_lo_exclusive"]
    if hi == 0:
        return "0 (base already matches)", "0", "none: no training needed to match", "-"
    if hi is None:
        now = f"> {r['train_s_lo'] / now_s:.0f}x" if now_s else "-"
        return f"> {lo}", f"> {r['train_s_lo']:.0f}", f"> {r['speedup_lo']:.0f}x", now
    now = f"{r['train_s_lo'] / now_s:.1f}x-{r['train_s_hi'] / now_s:.0f}x" if now_s else "-"
    return (f"{lo + 1}-{hi}", f"{r['train_s_lo']:.1f}-{r['train_s_hi']:.0f}",
            f"{r['speedup_lo']:.1f}x-{r['speedup_hi']:.0f}x", now)


def speedup_section(d: dict | None, q: dict | None, curve: dict | None) -> list[str]:
    out = ["## An honest speedup: training time to reach DnD's own accuracy", "",
           "\"Generate vs train the oracle LoRA\" divides by the whole training run. The speedup a user gets is "
           "the LoRA training time needed to reach the *generated* adapter's own accuracy on the target, divided "
           "by the generation time. With only the two end points stored (step 0 = the base model, the last step = "
           "the oracle LoRA) the step is bounded; a zoo's checkpoint curve narrows it. Each training second is the "
           "oracle's wall time per step as stored with the result (measured while the cores were shared); "
           "\"speedup now\" divides by today's cold start (a new `dnd_jax.generate` process, minimum, section "
           "above).", ""]
    for res, label in ((q, "quickstart (`make demo`)"), (d, "the commonsense experiment (`docs/results`)")):
        if res is None:
            continue
        now_s = res.get("cold_start_now_s")
        n = {r.get("n") for r in res["targets"].values()}
        out += [f"### Bounds: {label}", "", _cond(res), "",
                f"From `{res['source']}` ({res['metric']}, n={'/'.join(str(x) for x in sorted(n, key=str))}; "
                f"{res['total_steps']} LoRA steps; generation time as stored with each result)"
                + (f"; today's cold start {now_s:.2f} s." if now_s else "."), "",
                "| target | base | DnD | oracle | steps LoRA training needs to match DnD | training s to match | "
                "speedup (stored generation time) | speedup now | full-run speedup |",
                "|---|---|---|---|---|---|---|---|---|"]
        for t, r in res["targets"].items():
            steps, secs, sp, now = _speed_cells(r, now_s)
            out.append(f"| {t} | {100 * r['base']:.1f} | {100 * r['dnd']:.1f} | {100 * r['oracle']:.1f} | {steps} | "
                       f"{secs} | {sp} | {now} | {r['full_run_speedup']:.0f}x |")
        out.append("")
        if res.get("note"):
            out += [res["note"], ""]
    if curve is not None:
        pts = ", ".join(f"{s}: {100 * a:.0f}" for s, a in curve["curve"])
        out += ["### The oracle LoRA's checkpoint curve (quickstart, ARC-c)", "", _cond(curve), "",
                f"Accuracy ({curve['metric']}, n={curve['limit']}) by LoRA step (step 0 = base model; the zoo keeps "
                f"only its last checkpoints): {pts}. DnD: {100 * curve['dnd_acc']:.0f}. Reading: {curve['reading']}; "
                f"{curve['train_s_per_step']:.1f} training s per step (stored) against {curve['generate_s']:.2f} s "
                f"to generate: " + (f"speedup at least {curve['speedup_lo']:.0f}x." if curve['steps_hi'] is None else
                                    f"speedup {curve.get('speedup_lo', 0):.1f}x-{curve.get('speedup_hi', 0):.0f}x."), ""]
        if curve.get("unscored_steps"):
            out += [f"Checkpoints with no stored score (not evaluated here: each ARC-c evaluation took 3-6 min of the "
                    f"shared machine): steps {', '.join(map(str, curve['unscored_steps']))}; the zoo holds none before "
                    f"step {min(s for s, _ in curve['curve'] if s) if any(s for s, _ in curve['curve']) else '?'}. "
                    "They come from the same command without `--cached_only`:", "",
                    "```bash", "python bench/speedup.py --config configs/quickstart.py --workdir workdir/quickstart "
                    f"--task arc_c --limit 100 --dnd_acc {curve['dnd_acc']}", "```", ""]
    else:
        out += ["_The checkpoint curve is not measured: `python bench/speedup.py --config configs/quickstart.py "
                "--workdir workdir/quickstart --task arc_c --dnd_acc 0.32 --limit 100` (needs `make demo`'s "
                "workdir)._", ""]
    return out + ["Accuracies at n=100-200 carry 95% CIs of about +-6 to +-9 points, so \"reaches\" compares point "
                  "estimates and a DnD one or two points above the oracle means the two are level. Pinning the step "
                  "needs checkpoints from step 1: a zoo collected with `--config.zoo.pretrain_steps=0` keeps every "
                  "step from the first (not run here).", ""]


def scaling_section(d: dict | None) -> list[str]:
    out = ["## How cost grows with the adapter", ""]
    if d is None:
        return out + _missing("python bench/scaling.py")
    out += [_cond(d), "", "| base layout | targets | rank | LoRA params | tokens (shape) | decoder params | "
            "forward GFLOP | forward memory MiB | forward s, batch 1 (min / median / max) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| {r['base'].split('_')[0]} | {r['targets']} | {r['rank']} | {r['lora_params']:,} | {r['tokens']} "
                   f"({r['token_shape'][0]}x{r['token_shape'][1]}) | {r['decoder_params']:,} | "
                   f"{r['forward_flops_xla'] / 1e9:.1f} | {r['memory_total_mb']:.0f} | {_mmm(r['forward_s'], fmt='{:.3f}')} |")
    out += ["", "![cost vs adapter size](bench/scaling.png)", ""]
    cold = _load("cold_start_smollm2_commonsense")
    if cold and "warm" in cold:
        e = cold["warm"]["encode_s"]
        out += [f"Generation time = encoding the prompts + this forward + writing. Encoding does not depend on the "
                f"adapter: {e['min']:.2f} / {e['median']:.2f} / {e['max']:.2f} s for 32 MiniLM prompts (warm, "
                f"cold-start section; the paper-scale config encodes 128 prompts of up to 384 tokens, ~4x the prompts "
                f"and ~10-20x the tokens); writing is 0.02-0.05 s for these sizes.", ""]
    return out


def device_section(d: dict | None) -> list[str]:
    out = ["## On an accelerator (one H200)", "",
           "Three scripts need only jax (with the GPU plugin), numpy and, for the decoder, flax from the working "
           "tree: `bench/device_h200.py` (the paper-scale generator's train step and generation: time, FLOP rate, "
           "XLA's memory estimate against the allocator's peak), `bench/device_h200_decoder.py` (the chip's matmul "
           "rate and both decoders' FLOP rates as fractions of it) and `bench/device_function_loss.py` (the "
           "function-space term's memory on XLA:CPU, XLA:GPU and for real, and its FLOP rate). Each has a CPU smoke "
           "test (`--tiny`); `make bench` runs those. FLOP rates use analytic counts: on a GPU, XLA's cost analysis "
           "leaves out the cuDNN/cuBLAS calls.", ""]
    page = common.ROOT / "docs" / "bench" / "device_h200.md"
    if d is None or not page.is_file():
        return out + ["_No accelerator results in docs/bench/ yet._", ""]
    return out + [f"Results ({d['device_kind']}, `python bench/device_summary.py`): [bench/device_h200.md]"
                  "(bench/device_h200.md).", ""]


def write() -> Path:
    head = ["# Benchmarks", "",
            "Generated by `make bench` (`python bench/run_all.py`, then `python bench/report.py`) from "
            "`docs/bench/*.json`; each section names the command that produced it, when, and how busy the machine "
            "was. Times are min / median / max over repeats. Speed is measured here, never asserted in tests.", ""]
    if NOTES.is_file():
        head += [NOTES.read_text().strip(), ""]
    parts = head + matmul_section(_load("matmul"))
    parts += ["## The decoder against that limit", ""]
    parts += decoder_section(_load("decoder_smollm2_commonsense"), "SmolLM2 config (`configs/smollm2_commonsense.py`)",
                             "python bench/decoder.py --config configs/smollm2_commonsense.py")
    parts += decoder_section(_load("decoder_qwen25_0p5b_commonsense"), "Qwen2.5-0.5B config (paper scale, bfloat16)",
                             "python bench/decoder.py --config configs/qwen25_0p5b_commonsense.py --batch_size 1 "
                             "--nobreakdown")
    parts += xla_section(_load("xla_flags_smollm2_commonsense"))
    parts += cold_section(_load("cold_start_smollm2_commonsense"))
    parts += throughput_section(_load("throughput_smollm2_commonsense"))
    parts += speedup_section(_load("speedup_bounds"), _load("speedup_quickstart"), _load("speedup_quickstart_arc_c"))
    parts += scaling_section(_load("scaling"))
    parts += device_section(_load("device_h200_decoder"))
    OUT.write_text("\n".join(parts).rstrip() + "\n")
    return OUT


if __name__ == "__main__":
    print(f"wrote {write()}")
