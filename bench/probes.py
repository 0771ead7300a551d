"""Hostile-user probes (issue 16): every verb fed bad input, damaged files and races, on the tiny config.

    nice -n 5 .venv/bin/python bench/probes.py [--out docs/reliability.md] [--keep DIR]

Builds a tiny zoo (real LoRAs on a tiny random Llama), a tiny generator and an adapter in a temp
workdir, then runs each probe as a subprocess (``python -m dnd_jax.<verb> ...``) and records the exit
code, the first line of stderr that says ``error:`` (or the last line), the wall time, and whether
the outcome is the expected one (exit 0 for cases that must work; exit 2 with a one-line error and no
traceback for user errors; plus a check that nothing was written or deleted where that matters).
Writes a Markdown table and a JSON file beside it. Takes about 10 minutes on 2 shared CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
TINY = str(REPO / "configs/tiny.py")


def sh(args: list[str], timeout: int = 600) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def first_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    if lines:
        return lines[0]
    rest = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("I1", "W1", "WARNING", "  "))]
    return rest[-1] if rest else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "reliability.md"))
    ap.add_argument("--keep", default="", help="keep the probe workdir here")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="dnd_probes_"))
    root.mkdir(parents=True, exist_ok=True)
    W, G = root / "w", root / "w" / "gen"

    # --- setup: zoo, generator, adapter ------------------------------------------------------------------
    for cmd in ([PY, "-m", "dnd_jax.collect", "--config", TINY, "--workdir", W],
                [PY, "-m", "dnd_jax.train", "--config", TINY, "--workdir", G, "--config.total_steps=20",
                 "--config.ckpt_steps=10"]):
        rc, _, err, _ = sh(cmd)
        assert rc == 0, err[-3000:]
    prompts = root / "prompts.txt"
    prompts.write_text("Which gas do plants absorb?\nWhy does ice float?\nWhat is 2+2?\nName a mammal.\n")
    rc, _, err, _ = sh([PY, "-m", "dnd_jax.generate", "--checkpoint", G, "--prompts", prompts, "--out", root / "adapter"])
    assert rc == 0, err[-3000:]
    adapter = root / "adapter"

    def copy_gen(name: str) -> Path:
        d = root / name
        shutil.copytree(G, d)
        (d / ".dnd_lock").unlink(missing_ok=True)
        return d

    def largest(d: Path) -> Path:
        return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)

    def meta_file(d: Path) -> Path:
        return next(p for p in (d / "generator" / "20" / "meta").rglob("*") if p.is_file())

    probes: list[dict] = []

    def probe(case: str, cmd: list, expect: int, check=None, setup=None) -> None:
        if setup:
            setup()
        rc, out, err, wall = sh(cmd)
        ok = rc == expect and "Traceback" not in err
        if expect == 2:
            ok = ok and sum(ln.startswith("error: ") for ln in err.splitlines()) == 1
        extra = ""
        if check is not None:
            c = check()
            ok, extra = ok and c is True, "" if c is True else f" [check failed: {c}]"
        shown = " ".join(str(a) for a in cmd[1:]).replace(str(root), "$T").replace(str(REPO) + "/", "")
        probes.append({"case": case, "command": shown, "exit": rc, "expected": expect, "ok": ok, "wall_s": round(wall, 1),
                       "stderr": (first_error(err) if rc else first_error(err) or "(none)") + extra})
        print(f"[{'ok' if ok else 'FAIL'}] {case}: exit {rc} in {wall:.1f}s: {probes[-1]['stderr'][:150]}", flush=True)

    gen = [PY, "-m", "dnd_jax.generate", "--checkpoint"]

    # --- generate ----------------------------------------------------------------------------------------
    probe("generate: no generator at --checkpoint", gen + [root / "nothing", "--prompts", prompts, "--out", root / "o1"], 2)
    probe("generate: prompt file missing", gen + [G, "--prompts", root / "missing.txt", "--out", root / "o2"], 2)
    (root / "empty.txt").write_text("\n  \n")
    probe("generate: blank prompt file", gen + [G, "--prompts", root / "empty.txt", "--out", root / "o3"], 2)
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    probe("generate: non-UTF-8 prompts", gen + [G, "--prompts", root / "latin1.txt", "--out", root / "o4"], 2)
    (root / "null.jsonl").write_text('{"prompt": null}\n')
    probe('generate: {"prompt": null}', gen + [G, "--prompts", root / "null.jsonl", "--out", root / "o5"], 2)
    (root / "num.jsonl").write_text('{"prompt": 42}\n')
    probe('generate: {"prompt": 42}', gen + [G, "--prompts", root / "num.jsonl", "--out", root / "o6"], 2)
    (root / "upper.JSONL").write_text('{"prompt": "Why is the sky blue?"}\n')
    probe("generate: .JSONL suffix is JSON Lines", gen + [G, "--prompts", root / "upper.JSONL", "--out", root / "o7"], 0,
          check=lambda: (root / "o7" / "adapter_model.safetensors").is_file() or "no adapter")
    probe("generate: --out exists, no --overwrite", gen + [G, "--prompts", prompts, "--out", adapter], 2)
    mine = root / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    probe("generate: --overwrite on a folder with user files", gen + [G, "--prompts", prompts, "--out", mine,
          "--overwrite"], 2, check=lambda: ((mine / "notes.txt").is_file() and (mine / "sub").is_dir()) or "user files gone")
    probe("generate: --overwrite on an adapter folder", gen + [G, "--prompts", prompts, "--out", root / "o7",
          "--overwrite"], 0)
    ro = root / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    probe("generate: --out under a read-only folder", gen + [G, "--prompts", prompts, "--out", ro / "a"], 2 if os.geteuid()
          else 0)
    bad = copy_gen("gen_flipped")
    f = largest(bad / "generator" / "20" / "params")
    data = bytearray(f.read_bytes())
    data[100:500] = bytes(b ^ 0xFF for b in data[100:500])
    f.write_bytes(bytes(data))
    probe("generate: 400 flipped bytes in the generator", gen + [bad, "--prompts", prompts, "--out", root / "o8"], 2,
          check=lambda: not (root / "o8").exists() or "wrote an adapter")
    bad = copy_gen("gen_deleted")
    largest(bad / "generator" / "20" / "params").unlink()
    probe("generate: a deleted Orbax file", gen + [bad, "--prompts", prompts, "--out", root / "o9"], 2)
    bad = copy_gen("gen_truncated")
    f = largest(bad / "generator" / "20" / "params")
    f.write_bytes(f.read_bytes()[:100])
    probe("generate: a truncated Orbax file", gen + [bad, "--prompts", prompts, "--out", root / "o10"], 2)
    bad = copy_gen("gen_meta")
    m = meta_file(bad)
    m.write_text(m.read_text().replace('"lora_alpha"', '"lora_alpha_x"'))
    probe("generate: edited metadata", gen + [bad, "--prompts", prompts, "--out", root / "o11"], 2)
    bad = copy_gen("gen_meta_nosums")
    (bad / "generator" / "20" / "dnd_checksums.json").unlink()
    m = meta_file(bad)
    doc = json.loads(m.read_text())
    doc["out_shape"][0] += 3
    m.write_text(json.dumps(doc))
    probe("generate: edited metadata, checksums deleted", gen + [bad, "--prompts", prompts, "--out", root / "o12"], 2)
    probe("generate: --step that does not exist", gen + [G, "--step", "7", "--prompts", prompts, "--out", root / "o13"], 2)
    probe("generate: unknown --task", gen + [G, "--task", "nope", "--out", root / "o14"], 2)
    probe("generate: stray positional argument", gen + [G, "--prompts", prompts, "--out", root / "o15", "extra"], 2)
    probe("generate: unknown flag", gen + [G, "--prompt", prompts, "--out", root / "o16"], 2)
    (root / "huge.txt").write_text("word " * 1_000_000 + "\n")
    probe("generate: a 5 MB prompt (cut before tokenizing)", gen + [G, "--prompts", root / "huge.txt", "--out",
          root / "o17"], 0)

    # --- train ------------------------------------------------------------------------------------------------
    tr = [PY, "-m", "dnd_jax.train", "--config"]
    probe("train: unknown holdout task", tr + [TINY + ":holdout=nope", "--workdir", root / "t1"], 2)
    probe("train: batch_size=0", tr + [TINY, "--workdir", root / "t2", "--config.batch_size=0"], 2)
    probe("train: config file missing", tr + [str(REPO / "configs/nope.py"), "--workdir", root / "t3"], 2)
    probe("train: finished run, other cross_domain", tr + [TINY, "--workdir", G, "--config.total_steps=20",
          "--config.ckpt_steps=10", "--config.experiment.cross_domain=('boolq',)"], 2)
    g2 = copy_gen("gen_restart")
    probe("train: same with --start_over", tr + [TINY, "--workdir", g2, "--config.total_steps=20", f"--config.zoo_workdir={W}",
          "--config.ckpt_steps=10", "--config.experiment.cross_domain=('boolq',)", "--start_over"], 0,
          check=lambda: bool(list(g2.glob("replaced-*/generator"))) or "old run not kept")
    holder = subprocess.Popen([PY, "-c", "import sys, time\nfrom dnd_jax import locking\n"
                               f"with locking.workdir_lock({str(root / 't4')!r}, 'train'):\n"
                               "    print('held', flush=True); time.sleep(300)"], cwd=REPO, env=ENV, stdout=subprocess.PIPE)
    holder.stdout.readline()
    probe("train: a second writer on a locked workdir", tr + [TINY, "--workdir", root / "t4"], 2)
    probe("collect: a second writer on a locked workdir", [PY, "-m", "dnd_jax.collect", "--config", TINY, "--workdir",
          root / "t4"], 2)
    holder.kill()
    holder.wait()
    holder.stdout.close()
    probe("train: the lock of a killed holder is stale", tr + [TINY, "--workdir", root / "t4",
          f"--config.zoo_workdir={W}", "--config.total_steps=2", "--config.ckpt_steps=2"], 0)
    z2 = root / "z2"
    shutil.copytree(W / "zoo", z2 / "zoo")
    ck = sorted((z2 / "zoo" / "piqa").glob("ckpt_*"))[1] / "adapter_model.safetensors"
    ck.write_bytes(ck.read_bytes()[:-16])
    probe("train: a zoo with a truncated checkpoint", tr + [TINY, "--workdir", root / "t5", f"--config.zoo_workdir={z2}"], 2)

    # --- collect ------------------------------------------------------------------------------------------------
    co = [PY, "-m", "dnd_jax.collect", "--config"]
    probe("collect: unknown task", co + [TINY, "--workdir", root / "c1", "--tasks", "nope"], 2)
    probe("collect: recipe changed on an existing zoo", co + [TINY, "--workdir", W, "--config.zoo.lr=0.1"], 2)

    # --- evaluate -----------------------------------------------------------------------------------------------
    ev = [PY, "-m", "dnd_jax.evaluate", "--config", TINY, "--workdir", W, "--task", "arc_e", "--baselines="]
    probe("evaluate: --limit -1", ev + ["--adapter", adapter, "--limit=-1"], 2)
    probe("evaluate: unknown metric", ev + ["--adapter", adapter, "--metrics", "f1"], 2)
    from safetensors.numpy import load_file, save_file

    def variant(name: str, change) -> Path:
        d = root / name
        shutil.copytree(adapter, d)
        sd = load_file(str(d / "adapter_model.safetensors"))
        sd = change(sd)
        save_file(sd, str(d / "adapter_model.safetensors"))
        return d

    import numpy as np

    nan = variant("nan_adapter", lambda sd: {k: (v * np.nan if i == 0 else v) for i, (k, v) in enumerate(sd.items())})
    probe("evaluate: a NaN adapter", ev + ["--adapter", nan], 2)
    wide = variant("wide_adapter", lambda sd: {k: (np.zeros((v.shape[0], 2 * v.shape[1]), v.dtype) if ".lora_A." in k
                                                   else v) for k, v in sd.items()})
    probe("evaluate: an adapter for another base model", ev + ["--adapter", wide], 2)
    full = variant("full_model", lambda sd: {"model.layers.0.mlp.up_proj.weight": np.zeros((4, 4), np.float32)})
    probe("evaluate: a non-LoRA safetensors", ev + ["--adapter", full], 2)
    pkl = root / "pickled"
    pkl.mkdir()
    (pkl / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    shutil.copy(adapter / "adapter_config.json", pkl)
    probe("evaluate: a pickled adapter", ev + ["--adapter", pkl], 2)
    probe("evaluate: --out under a read-only folder", ev + ["--adapter", adapter, "--out", ro / "r"],
          2 if os.geteuid() else 0)
    probe("evaluate: a generated adapter, 4 examples", ev + ["--adapter", adapter, "--limit", "4", "--out",
          root / "eval"], 0)

    # --- weights ------------------------------------------------------------------------------------------------
    wt = [PY, "-m", "dnd_jax.weights"]
    probe("weights: inspect a missing folder", wt + ["inspect", root / "missing"], 2)
    probe("weights: roundtrip a NaN adapter", wt + ["roundtrip", nan, "--out", root / "rt1", "--token-shape", "4,16"], 2,
          check=lambda: not (root / "rt1").exists() or "--out written")
    rank = root / "rank_adapter"
    shutil.copytree(adapter, rank)
    cfg = json.loads((rank / "adapter_config.json").read_text())
    cfg["r"] = 16
    (rank / "adapter_config.json").write_text(json.dumps(cfg))
    probe("weights: inspect, config rank != tensors", wt + ["inspect", rank, "--token-shape", "4,16"], 2)
    probe("weights: inspect a non-LoRA safetensors", wt + ["inspect", full], 2)
    probe("weights: bad --token-shape", wt + ["inspect", adapter, "--token-shape", "8"], 2)
    probe("weights: roundtrip a generated adapter", wt + ["roundtrip", adapter, "--out", root / "rt2", "--token-shape",
          "4,16"], 0)
    probe("weights: no subcommand", wt + [adapter], 2)
    probe("weights: roundtrip without --out", wt + ["roundtrip", adapter], 2)
    probe("weights: inspect with --token_shape (absl spelling)", wt + ["inspect", adapter, "--token_shape", "4,16"], 0)

    # --- zoo_import, geometry, serve ------------------------------------------------------------------------
    probe("zoo_import: --src does not exist", [PY, "-m", "dnd_jax.zoo_import", "--src", root / "missing", "--workdir",
          root / "zi"], 2, check=lambda: not (root / "zi" / "zoo").exists() or "zoo written")
    probe("geometry: a config without held-out targets", [PY, "-m", "dnd_jax.geometry", "--config", TINY, "--workdir",
          W], 2, check=lambda: not (W / "geometry").exists() or "report written")
    probe("geometry: a workdir without a zoo", [PY, "-m", "dnd_jax.geometry", "--config", TINY, "--workdir",
          root / "g1", "--config.experiment.holdouts=('arc_e',)"], 2,
          check=lambda: not (root / "g1" / "geometry").exists() or "report written")
    probe("serve: no generator at --checkpoint", [PY, "-m", "dnd_jax.serve", "--checkpoint", root / "nothing",
          "--store", root / "store"], 2)
    probe("collect: --shard out of range", co + [TINY, "--workdir", root / "c2", "--shard", "2/2"], 2)

    # --- experiment ---------------------------------------------------------------------------------------------
    probe("experiment: --only a task that is no target", [PY, "-m", "dnd_jax.experiment", "--config", TINY, "--workdir",
          root / "e1", "--only", "nope"], 2)

    ro.chmod(0o755)
    ok = sum(p["ok"] for p in probes)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Hostile-user probes", "",
             f"`nice -n 5 .venv/bin/python bench/probes.py` on the tiny config ({time.strftime('%Y-%m-%d')}): "
             f"**{ok} of {len(probes)} as expected**. Expected = exit 0 where the input is fine; exit 2 with exactly "
             "one `error:` line and no traceback for a user error (plus the listed check: nothing written, nothing "
             "deleted). `$T` is the probe's temp folder (a tiny zoo in `$T/w`, a generator in `$T/w/gen`, an "
             "adapter in `$T/adapter`).", "",
             "| case | command | exit | as expected | first line of stderr | wall (s) |", "|---|---|---|---|---|---|"]
    for p in probes:
        err = p["stderr"].replace("|", "\\|")
        lines.append(f"| {p['case']} | `{p['command']}` | {p['exit']} | {'yes' if p['ok'] else '**no**'} | {err} | "
                     f"{p['wall_s']} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(probes, indent=1) + "\n")
    print(f"{ok}/{len(probes)} as expected -> {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
