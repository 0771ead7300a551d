"""``train --dry_run``: abstract estimate vs what a real step allocates (tiny config, 8 CPU devices)."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from dnd_jax import dry_run, models, sharding, testing, trainer

REPO = Path(__file__).resolve().parents[1]


def _config():
    c = tiny.get_config()
    c.min_shard_size = 256
    c.sharding = ((r".*/kernel", "shard_dim(axis='model', dim=-1)|fsdp(axis='data')"), (r".*", "fsdp(axis='data')"))
    c.mesh = (("data", 4), ("model", 2))
    return c


def test_estimate_matches_real_allocation_on_8_devices():
    config = _config()
    in_shape, out_shape = dry_run.shapes_for(config)
    assert in_shape == (4, 16, 384)
    mesh = sharding.make_mesh(config.mesh)
    est = dry_run.estimate(config, mesh, in_shape, out_shape)
    # Build the real state on the mesh, exactly as train does, and count device 0's bytes.
    model = models.build(config.model_name, config.model, in_shape, out_shape)
    tx, _ = trainer.make_optimizer(config)

    def init_state(key):
        params = model.init(key, jnp.zeros((1, *in_shape), jnp.float32))
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    placement = sharding.place(mesh, jax.eval_shape(init_state, jax.random.key(0)), sharding.config_rules(config),
                               config.min_shard_size)
    state = jax.jit(init_state, out_shardings=placement.shardings)(jax.random.key(0))
    dev0 = jax.devices()[0]

    def on_dev0(tree):
        return sum(s.data.nbytes for a in jax.tree.leaves(tree) for s in a.addressable_shards if s.device == dev0)

    assert est["param_bytes_per_device"] == on_dev0(state["params"])
    assert est["opt_bytes_per_device"] == on_dev0(state["opt_state"])
    assert est["param_bytes_per_device"] < est["param_bytes"] / 4  # FSDP x TP really divides it
    # XLA's argument size = the state's shard + the batch shards + the replicated weight map.
    b = config.batch_size // 4
    batch_bytes = 4 * (b * int(np.prod(in_shape)) + b * int(np.prod(out_shape)) + int(np.prod(out_shape)))
    state_bytes = on_dev0(state)
    assert est["memory_per_device"]["argument"] == state_bytes + batch_bytes
    assert est["memory_per_device"]["alias"] == state_bytes  # donated: the new state reuses it
    assert est["flops_per_step"] > 3 * est["flops_per_example_model"] * config.batch_size * 0.5
    assert est["unsplit"] == []


def test_cli_dry_run_trains_nothing(tmp_path):
    env = testing.subprocess_env(8)
    proc = subprocess.run(
        [sys.executable, "-m", "dnd_jax.train", "--config", str(REPO / "configs/tiny.py"), "--workdir",
         str(tmp_path / "w"), "--dry_run", "--config.mesh=(('data', 4), ('model', 2))", "--config.min_shard_size=256"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "FLOPs/step" in out and "per-device memory" in out
    result = json.loads(out[out.index("\n{") + 1:])
    assert result["mesh"] == {"data": 4, "model": 2} and result["lora_shapes_from"] == "arch tiny_llama"
    assert not (tmp_path / "w" / trainer.CKPT_DIR).exists()


def test_function_loss_joins_the_estimate(tiny_base):
    """With function_loss on, the base LM (placed by config.sharding's rules over base_lm/... paths: this
    config's FSDP catch-all splits it over 'data') and the examples are arguments of the compiled step."""
    from dnd_jax import jax_lm

    config = _config()
    in_shape, out_shape = dry_run.shapes_for(config)
    mesh = sharding.make_mesh(config.mesh)
    plain = dry_run.estimate(config, mesh, in_shape, out_shape)
    config.function_loss.weight = 1.0
    config.function_loss.examples, config.function_loss.max_len = 2, 24
    # The abstract base model is exactly what jax_lm.load builds from the real tiny checkpoint.
    cfg, params = jax_lm.load(tiny_base.path)
    assert dry_run.lm_config(config) == dataclasses.replace(cfg, rms_norm_eps=1e-6)
    abstract = jax_lm.abstract_params(cfg)
    assert jax.tree.structure(abstract) == jax.tree.structure(params)
    assert all(a.shape == p.shape for a, p in zip(jax.tree.leaves(abstract), jax.tree.leaves(params), strict=True))

    def per_device(itemsize: int) -> int:  # fsdp over data=4: leaves of >= 256 elements with a dim that divides
        return sum(p.size * itemsize // (4 if p.size >= 256 and any(d % 4 == 0 for d in p.shape) else 1)
                   for p in jax.tree.leaves(params))

    b = config.batch_size // 4
    example_bytes = 4 * (b * 2 * 24 + 2 * b * 2) + 4  # ids, lengths, answer lengths, the scalar base
    for dtype, itemsize in (("float32", 4), ("bfloat16", 2)):
        config.function_loss.dtype = dtype
        est = dry_run.estimate(config, mesh, in_shape, out_shape)
        f = est["function_loss"]
        assert f["base_lm_dtype"] == dtype and f["base_lm_bytes"] == sum(p.size for p in jax.tree.leaves(params)) * itemsize
        assert f["base_lm_bytes_per_device"] == per_device(itemsize) < f["base_lm_bytes"] / 3
        assert est["memory_per_device"]["argument"] == plain["memory_per_device"]["argument"] + per_device(itemsize) \
            + example_bytes
        assert est["flops_per_step"] > plain["flops_per_step"]
        # XLA counts the base LM's scan body once; the dry run adds the whole term's count (tested in test_jax_lm).
        assert f["flops_per_step_analytic"] == jax_lm.step_flops(cfg, config.batch_size * 2, 24, 23, int(config.lora.r))
        assert "FLOPs/step" in dry_run.summary(est) and "analytic" in dry_run.summary(est)
        # On XLA:CPU a bfloat16 program's temporaries are float32 copies: the summary says so (measured on an H200).
        assert est["bfloat16_compute"] == (dtype == "bfloat16") and est["platform"] == "cpu"
        assert ("overstate a GPU's" in dry_run.summary(est)) == (dtype == "bfloat16")
    # The default rules replicate the base LM: every device holds all of it.
    config.sharding = ((r".*/kernel", "shard_dim(axis='model', dim=-1)"), (r".*", "replicate"))
    config.function_loss.dtype = "float32"
    assert dry_run.estimate(config, mesh, in_shape, out_shape, compile=True)["function_loss"][
        "base_lm_bytes_per_device"] == sum(p.nbytes for p in jax.tree.leaves(params))
