"""Adapters per second from ``Generator.generate_many`` at 1, 8, 32 and 128 prompt sets.

    python bench/throughput.py --config configs/smollm2_commonsense.py --repeats 3

A warm process (generator loaded, every batch size run once first); distinct prompt sets; per batch
size the wall time of ``generate_many`` (encode + one batched decoder forward + detokenize) and of
writing every adapter, min/median/max over repeats. Writes ``docs/bench/throughput_<config>.json``.
"""
from __future__ import annotations

import shutil
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
_SETS = flags.DEFINE_list("sets", ["1", "8", "32", "128"], "Numbers of prompt sets per call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per size.")
_WRITE = flags.DEFINE_bool("write", True, "Also time writing the adapters.")
_OUT = flags.DEFINE_string("out", str(common.DOCS), "Output folder.")


def prompt_sets(pool: list[str], n_sets: int, per_set: int) -> list[list[str]]:
    """``n_sets`` distinct sets of ``per_set`` prompts (rotations of the pool, numbered)."""
    return [[f"{pool[(s + i) % len(pool)]} ({s})" for i in range(per_set)] for s in range(n_sets)]


def main(argv) -> None:
    del argv
    import os

    config = _CONFIG.value
    cfg_name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    gen_dir = str(fixtures.make_generator(config, common.ROOT / "workdir" / "bench" / f"gen_{cfg_name}"))
    os.environ.setdefault("DND_JAX_RUNTIME_CACHE", tempfile.mkdtemp(prefix="dnd_cache_"))
    from dnd_jax import generate, zoo

    gen = generate.Generator.load(gen_dir)
    pool = zoo.prompts(gen_dir, fixtures.FIXTURE_TASKS[0])
    res = common.Result(f"throughput_{cfg_name}", config=cfg_name, generator=gen_dir, num_prompts=gen.num_prompts,
                        sizes={})
    for n in (int(s) for s in _SETS.value):
        sets = prompt_sets(pool, n, gen.num_prompts)
        gen.generate_many(sets)  # compile this batch size
        rows = []
        for _ in range(_REPEATS.value):
            timings: dict = {}
            t = time.perf_counter()
            adapters = gen.generate_many(sets, timings=timings)
            timings["generate_s"] = time.perf_counter() - t
            if _WRITE.value:
                tmp = Path(tempfile.mkdtemp(prefix="dnd_tp_"))
                t = time.perf_counter()
                for i, a in enumerate(adapters):
                    a.save(tmp / str(i))
                timings["write_s"] = time.perf_counter() - t
                shutil.rmtree(tmp)
            rows.append(timings)
        stats = {k: common.summary([r[k] for r in rows]) for k in rows[0]}
        best_total = min(r["generate_s"] + r.get("write_s", 0.0) for r in rows)
        stats["adapters_per_s_best"] = n / stats["generate_s"]["min"]
        stats["adapters_per_s_median"] = n / stats["generate_s"]["median"]
        stats["adapters_per_s_with_write_best"] = n / best_total
        res["sizes"][str(n)] = stats
        print(f"{n:4d} sets: {stats['adapters_per_s_best']:.2f} adapters/s (best), "
              f"{stats['adapters_per_s_median']:.2f} (median), {stats['adapters_per_s_with_write_best']:.2f} with "
              f"writing; encode {stats['encode_s']['min']:.2f}s decode {stats['decode_s']['min']:.2f}s")
    res.write(_OUT.value)


if __name__ == "__main__":
    app.run(main)
