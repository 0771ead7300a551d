"""Why the test suite compiles at -O0: XLA:CPU compile time of the tiny generator, and what it changes.

    python bench/compile_level.py

At XLA's default level and at ``dnd_jax.testing.TEST_XLA_FLAGS`` (-O0), each in a fresh process: the
compile time of the tiny config's ``init_state`` (the generator's parameters and optimizer state, as
``trainer`` builds them: threefry random numbers per parameter shape) and of a plain ``jax.random.normal``
over the same parameter shapes. Then a 6-step ``dnd_jax.train`` run on a synthetic zoo at each level:
the largest relative difference of the logged losses, gradient norms and validation loss
(``tests/test_train.py`` asserts rtol 1e-5). Writes ``docs/bench/compile_level.json``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from dnd_jax import testing  # noqa: E402  (jax-free)

LEVELS = {"default": "", "O0": testing.TEST_XLA_FLAGS}

_CHILD = """
import json, time
import jax, jax.numpy as jnp
from configs import tiny
from dnd_jax import models, trainer
c = tiny.get_config()
in_shape, out_shape = (int(c.conditions.num_prompts), int(c.conditions.max_len), 384), (64, *c.layout.token_shape)
model = models.build(c.model_name, c.model, in_shape, out_shape)
tx, _ = trainer.make_optimizer(c)
def init_state(key):
    params = model.init(key, jnp.zeros((1, *in_shape), jnp.float32))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
shapes = [x.shape for x in jax.tree.leaves(jax.eval_shape(init_state, jax.random.key(0))["params"])]
def normal(key):
    return [jax.random.normal(k, s) for k, s in zip(jax.random.split(key, len(shapes)), shapes)]
out = {"param_shapes": len(shapes)}
for name, fn in (("init_state", init_state), ("random_normal", normal)):
    lowered = jax.jit(fn).lower(jax.random.key(0))
    t = time.perf_counter()
    lowered.compile()
    out[name + "_compile_s"] = round(time.perf_counter() - t, 3)
print(json.dumps(out))
"""


def _compile_times(flags: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True,
                          cwd=common.ROOT, env=testing.subprocess_env() | {"XLA_FLAGS": flags})
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_history(flags: str, zoo: Path, workdir: Path) -> list[dict]:
    from dnd_jax import trainer

    subprocess.run([sys.executable, "-m", "dnd_jax.train", "--config", str(common.ROOT / "configs/tiny.py"),
                    "--workdir", str(workdir), f"--config.zoo_workdir={zoo}", "--config.total_steps=6",
                    "--config.log_steps=1", "--config.eval_steps=6", "--config.ckpt_steps=6"],
                   capture_output=True, text=True, check=True, cwd=common.ROOT,
                   env=testing.subprocess_env() | {"XLA_FLAGS": flags})
    return trainer.read_metrics(workdir)


def main() -> None:
    result = common.Result("compile_level", levels=LEVELS, compile={n: _compile_times(f) for n, f in LEVELS.items()})
    with tempfile.TemporaryDirectory() as tmp:
        zoo = testing.make_synthetic_zoo(Path(tmp) / "zoo", tasks=("arc_e", "piqa", "boolq"))
        hist = {n: _train_history(f, zoo, Path(tmp) / n) for n, f in LEVELS.items()}
    diffs = [abs(a[k] - b[k]) / abs(b[k]) for a, b in zip(hist["O0"], hist["default"], strict=True)
             for k in ("loss", "grad_norm", "val_loss") if k in b]
    result["train_6_steps"] = {"values_compared": len(diffs), "bit_identical": sum(d == 0 for d in diffs),
                               "max_rel_diff": max(diffs)}
    print(json.dumps(result["compile"], indent=1), result["train_6_steps"])
    result.write()


if __name__ == "__main__":
    main()
