"""Cold and warm generation: a new ``python -m dnd_jax.generate`` process to the adapter on disk.

    python bench/cold_start.py --config configs/smollm2_commonsense.py --repeats 5

Three measurements on a real-shaped generator (``bench/fixtures.py``: the config's decoder and LoRA
shapes, trained 2 steps on a synthetic zoo; speed does not depend on what it learned):

- ``first``: a new process with empty caches (``DND_JAX_RUNTIME_CACHE`` pointed at a fresh folder): the
  first generation on a machine (compiles the encoder and decoder, imports peft once).
- ``cold``: a new process with the caches filled: what every later command-line call costs.
- ``warm``: ``Generator.generate`` + ``Adapter.save`` again in a process that has already generated.

Per process: wall, CPU seconds (user + sys), peak RSS, the verb's own stage timings (load =
checkpoint + decoder, encode = tokenizer + MiniLM, decode, write) and what is left (interpreter
start + module imports). One extra ``-X importtime`` run lists the heavy packages imported. The
adapters of every run must be byte-identical (caches change speed, never output).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import fixtures  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", str(common.ROOT / "configs/smollm2_commonsense.py"),
                                          "Config whose decoder is measured.", lock_config=False)
_GEN = flags.DEFINE_string("generator", "", "Generator workdir (default: a fixture under workdir/bench/).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed new processes (cold) and in-process repeats (warm).")
_FIRST = flags.DEFINE_integer("first_repeats", 2, "New processes with empty caches.")
_NAME = flags.DEFINE_string("name", "", "Result name (default cold_start_<config>).")
_OUT = flags.DEFINE_string("out", str(common.DOCS), "Output folder.")

HEAVY = ("jax", "flax", "orbax", "optax", "tensorstore", "torch", "transformers", "sentence_transformers", "peft",
         "tokenizers", "scipy")


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name in ("adapter_model.safetensors", "adapter_config.json"):
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
json.dump({"wall_s": wall, "cpu_s": u.ru_utime + u.ru_stime, "maxrss_kb": u.ru_maxrss}, open(sys.argv[1], "w"))
sys.exit(rc)
"""


def run_process(gen: str, prompts: str, cache: str, extra: tuple[str, ...] = ()) -> dict:
    """One ``python -m dnd_jax.generate`` process: wall, CPU, peak RSS, stage timings, adapter digest."""
    tmp = Path(tempfile.mkdtemp(prefix="dnd_cold_"))
    out = tmp / "adapter"
    env = dict(os.environ, DND_JAX_RUNTIME_CACHE=cache, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, *extra, "-m", "dnd_jax.generate", "--checkpoint", gen, "--prompts", prompts, "--out",
           str(out), "--json"]
    with open(tmp / "stdout", "w") as fo, open(tmp / "stderr", "w") as fe:
        # A small wrapper process runs generate and reports its child's rusage: a child forked straight
        # from this (large) process would inherit this process's peak RSS at exec.
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(tmp / "usage.json"), *cmd], cwd=common.ROOT,
                              env=env, stdout=fo, stderr=fe)
    stdout, stderr = (tmp / "stdout").read_text(), (tmp / "stderr").read_text()
    if proc.returncode != 0:
        raise SystemExit(f"generate failed ({proc.returncode}):\n{stderr[-3000:]}")
    usage = json.loads((tmp / "usage.json").read_text())
    report = json.loads(stdout[stdout.index("{"):])
    wall = usage["wall_s"]
    return {"wall_s": wall, "cpu_s": usage["cpu_s"], "peak_rss_mb": usage["maxrss_kb"] / 1024,
            "startup_imports_s": wall - report["timings"]["wall_s"], "stages": report["timings"],
            "digest": _digest(out), "stderr": stderr}


_STAGES = r"""
import json, sys, time
T0 = time.perf_counter()
stages, order = {}, []


def add(name, dt):
    if name not in stages:
        order.append(name)
    stages[name] = stages.get(name, 0.0) + dt


def timed(obj, attr, name, block=False):
    fn = getattr(obj, attr)

    def wrapper(*a, **k):
        t = time.perf_counter()
        out = fn(*a, **k)
        if block:
            import jax
            jax.block_until_ready(out)
        add(name, time.perf_counter() - t)
        return out
    setattr(obj, attr, wrapper)


t = time.perf_counter(); import numpy; add("import numpy", time.perf_counter() - t)
t = time.perf_counter(); import jax; add("import jax", time.perf_counter() - t)
t = time.perf_counter()
from dnd_jax import cache, checkpoint, conditions, encoder, generator  # noqa: E401
from dnd_jax.weights import peft_io
add("import dnd_jax modules", time.perf_counter() - t)
events, durations = [], {}
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: durations.__setitem__(name, durations.get(name, 0.0) + secs))
timed(checkpoint, "verify", "checkpoint: verify sha256 of every file")
timed(checkpoint, "load_from", "checkpoint: Orbax restore (weights not cached yet)")
timed(cache, "load_arrays", "checkpoint: weights from the runtime cache")
timed(checkpoint, "_model", "checkpoint: build the decoder (imports flax)")
timed(encoder.BertEncoder, "load", "encoder: load MiniLM (safetensors + tokenizer)")
timed(encoder.BertEncoder, "token_ids", "encoder: tokenize")
timed(generator.Adapter, "save", "write adapter (safetensors + config + card)")
t = time.perf_counter(); cache.enable_compilation_cache(); add("enable compilation cache", time.perf_counter() - t)
t = time.perf_counter(); jax.devices(); add("JAX CPU backend start", time.perf_counter() - t)
t = time.perf_counter()
gen = generator.Generator.load(sys.argv[1])
add("Generator.load (all)", time.perf_counter() - t)
fwd = encoder.BertEncoder._forward
n_calls = []


def enc_forward(self, ids, mask):
    t = time.perf_counter()
    out = fwd(self, ids, mask)
    add("encoder: first call (trace, compile or cache load, run)" if not n_calls else "encoder: later calls", time.perf_counter() - t)
    n_calls.append(1)
    return out


encoder.BertEncoder._forward = enc_forward
apply = gen._apply


def dec(*a):
    t = time.perf_counter()
    out = jax.block_until_ready(apply(*a))
    add("decoder: first call (trace, compile or cache load, run)", time.perf_counter() - t)
    return out


gen._apply = dec
prompts = [line.strip() for line in open(sys.argv[2]) if line.strip()]
t = time.perf_counter()
adapter = gen.generate(prompts)
add("generate (all)", time.perf_counter() - t)
adapter.save(sys.argv[3])
print(json.dumps({"process_s": time.perf_counter() - T0, "stages": [[k, stages[k]] for k in order],
                  "cache_hits": events.count("/jax/compilation_cache/cache_hits"),
                  "cache_misses": events.count("/jax/compilation_cache/cache_misses"),
                  "trace_s": durations.get("/jax/core/compile/jaxpr_trace_duration", 0.0),
                  "lower_s": durations.get("/jax/core/compile/jaxpr_to_mlir_module_duration", 0.0),
                  "compile_or_cache_load_s": durations.get("/jax/core/compile/backend_compile_duration", 0.0),
                  "orbax_imported": "orbax.checkpoint" in sys.modules, "flax_imported": "flax" in sys.modules}))
"""


def stage_profile(gen: str, prompts: str, cache: str) -> dict:
    """One process timed stage by stage (wrappers around the library's own functions; JAX's monitoring
    events for tracing, lowering, compiling or loading from the compilation cache)."""
    tmp = Path(tempfile.mkdtemp(prefix="dnd_stages_"))
    env = dict(os.environ, DND_JAX_RUNTIME_CACHE=cache, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", _STAGES, gen, prompts, str(tmp / "adapter")], cwd=common.ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"stage profile failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_measured(gen: str, prompts: str, cache: str) -> dict:
    row = run_process(gen, prompts, cache)
    row.pop("stderr")
    return row


def import_profile(gen: str, prompts: str, cache: str) -> dict:
    """Cumulative import seconds of the heavy top-level packages (absent = never imported)."""
    row = run_process(gen, prompts, cache, ("-X", "importtime"))
    found = {}
    for line in row["stderr"].splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)$", line)
        if m and m.group(3) in HEAVY and m.group(3) not in found:
            found[m.group(3)] = int(m.group(1)) / 1e6
    return {"imported_s": found, "not_imported": [h for h in HEAVY if h not in found]}


def _stage_summary(rows: list[dict]) -> dict:
    keys = ["wall_s", "cpu_s", "peak_rss_mb", "startup_imports_s"]
    out = {k: common.summary([r[k] for r in rows]) for k in keys if all(k in r for r in rows)}
    for k in rows[0]["stages"]:
        out[f"stage_{k}"] = common.summary([r["stages"][k] for r in rows])
    return out


def warm(gen: str, prompt_list: list[str], repeats: int, cache: str) -> dict:
    os.environ["DND_JAX_RUNTIME_CACHE"] = cache
    from dnd_jax import generate

    g = generate.Generator.load(gen)
    g.generate(prompt_list).save(Path(tempfile.mkdtemp()) / "a")  # first call: compile / load programs
    rows = []
    for _ in range(repeats):
        timings: dict = {}
        t = time.perf_counter()
        adapter = g.generate_many([prompt_list], timings=timings)[0]
        t1 = time.perf_counter()
        adapter.save(Path(tempfile.mkdtemp(prefix="dnd_warm_")) / "a")
        timings["write_s"] = time.perf_counter() - t1
        timings["wall_s"] = time.perf_counter() - t
        rows.append(timings)
    return {k: common.summary([r[k] for r in rows]) for k in rows[0]}


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    cfg_name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    gen = _GEN.value or str(fixtures.make_generator(config, common.ROOT / "workdir" / "bench" / f"gen_{cfg_name}"))
    from dnd_jax import zoo

    prompt_list = zoo.prompts(gen, fixtures.FIXTURE_TASKS[0])[: int(config.conditions.num_prompts)]
    prompts = Path(tempfile.mkdtemp(prefix="dnd_prompts_")) / "prompts.txt"
    prompts.write_text("\n".join(prompt_list) + "\n")
    res = common.Result(_NAME.value or f"cold_start_{cfg_name}", config=cfg_name, generator=gen,
                        num_prompts=len(prompt_list), versions=common.versions("jax", "jaxlib", "flax", "orbax-checkpoint"))

    first = [run_measured(gen, str(prompts), tempfile.mkdtemp(prefix="dnd_cache_empty_")) for _ in range(_FIRST.value)]
    cache = tempfile.mkdtemp(prefix="dnd_cache_")
    run_measured(gen, str(prompts), cache)  # fill this cache
    cold = [run_measured(gen, str(prompts), cache) for _ in range(_REPEATS.value)]
    res["imports_cold"] = import_profile(gen, str(prompts), cache)
    res["stages_first"] = stage_profile(gen, str(prompts), tempfile.mkdtemp(prefix="dnd_cache_empty_"))
    res["stages_cold"] = stage_profile(gen, str(prompts), cache)
    res["first"] = {"runs": first, **_stage_summary(first)}
    res["cold"] = {"runs": cold, **_stage_summary(cold)}
    res["warm"] = warm(gen, prompt_list, _REPEATS.value, cache)
    digests = {r["digest"] for r in first + cold}
    res["identical_adapters"] = len(digests) == 1
    if len(digests) != 1:
        raise SystemExit(f"adapters differ between runs: {digests}")
    res.write(_OUT.value)
    brief = {k: {s: round(v["min"], 3) for s, v in res[k].items() if isinstance(v, dict) and "min" in v}
             for k in ("first", "cold")}
    print(json.dumps({**brief, "warm_min": {k: round(v["min"], 3) for k, v in res["warm"].items()}}, indent=1))


if __name__ == "__main__":
    app.run(main)
