"""Weight tokens: exact layout round trips (property tests), normalization, peft adapter IO and CLI."""
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.common import LLAMA_ALL_LINEAR
from dnd_jax import base_model
from dnd_jax.errors import UserError
from dnd_jax.weights import check, normalization, peft_io
from dnd_jax.weights import layout as layout_lib
from dnd_jax.weights.layout import LayoutMismatchError, WeightLayout

ROOT = Path(__file__).resolve().parents[1]
PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _zero_pad_key(key: str) -> str:
    """Independent natural-order key: zero-pad every digit run."""
    return re.sub(r"\d+", lambda m: m.group().zfill(12), key)


@st.composite
def lora_shapes(draw):
    """A peft-like {key: shape}: random layers, modules, rank, features, plus odd extra tensors."""
    r = draw(st.integers(1, 8))
    layers = draw(st.lists(st.integers(0, 23), min_size=1, max_size=4, unique=True))
    mods = draw(st.lists(st.sampled_from(MODULES), min_size=1, max_size=4, unique=True))
    shapes = {}
    for i in layers:
        for mod in mods:
            fin, fout = draw(st.integers(1, 40)), draw(st.integers(1, 40))
            prefix = f"base_model.model.model.layers.{i}.{mod}"
            shapes[f"{prefix}.lora_A.weight"] = (r, fin)
            shapes[f"{prefix}.lora_B.weight"] = (fout, r)
    for j in range(draw(st.integers(0, 2))):
        shapes[f"base_model.model.extra{j}.scale"] = tuple(draw(st.lists(st.integers(1, 6), max_size=3)))
    keys = draw(st.permutations(sorted(shapes)))  # insertion order must not matter
    return {k: shapes[k] for k in keys}


token_shapes = st.tuples(st.integers(1, 8), st.integers(1, 16))


def _random_sd(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# --------------------------------------------------------------------------------------------- layout


@PROPS
@given(shapes=lora_shapes(), token_shape=token_shapes, batch=st.integers(1, 3))
def test_roundtrip_exact(shapes, token_shape, batch):
    layout = layout_lib.build_layout(shapes, token_shape)
    sds = [_random_sd(shapes, seed) for seed in range(batch)]
    tokens, mask = layout_lib.tokenize(layout, sds[0])
    assert tokens.dtype == np.float32 and tokens.shape == (layout.num_tokens, *token_shape)
    assert not tokens[~mask].any()  # padding is exactly zero
    back = layout_lib.detokenize(layout, tokens)
    assert list(back) == layout.keys
    for k, v in sds[0].items():
        assert _bits_equal(back[k], v), k
    stacked, bmask = layout_lib.tokenize_batch(layout, sds)
    assert stacked.shape == (batch, *layout.grid_shape) and np.array_equal(bmask, mask)
    bback = layout_lib.detokenize(layout, stacked)
    for i, sd in enumerate(sds):
        for k, v in sd.items():
            assert _bits_equal(bback[k][i], v)


@PROPS
@given(shapes=lora_shapes(), token_shape=token_shapes)
def test_layout_structure(shapes, token_shape):
    layout = layout_lib.build_layout(shapes, token_shape)
    h, w = token_shape
    assert layout.keys == sorted(shapes, key=_zero_pad_key)
    mask = layout.mask()
    assert mask.shape == layout.grid_shape and mask.dtype == bool
    assert int(mask.sum()) == layout.num_params == sum(int(np.prod(s)) for s in shapes.values())
    owners = layout_lib.token_owners(layout)
    assert owners.shape == (layout.num_tokens,) and np.all(np.diff(owners) >= 0)
    for i, e in enumerate(layout.entries):
        assert int(mask[e.token_slice].sum()) == e.numel == int(np.prod(shapes[e.key]))
        assert e.num_tokens == -(-e.numel // (h * w)) and np.all(owners[e.token_slice] == i)
        assert e.transpose == e.key.endswith("lora_A.weight")
        if e.num_tokens > 1:  # only an entry's last token may hold padding
            assert mask[e.offset:e.offset + e.num_tokens - 1].all()
    # real elements of every token are a prefix of it (row-major)
    flat = mask.reshape(layout.num_tokens, -1)
    assert np.array_equal(flat, np.arange(h * w)[None] < flat.sum(1, keepdims=True))
    assert layout.padding_fraction == pytest.approx(1 - layout.num_params / (layout.num_tokens * h * w))
    assert WeightLayout.from_json(layout.to_json()) == layout
    assert WeightLayout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    assert hash(WeightLayout.from_json(layout.to_json())) == hash(layout)


@PROPS
@given(shapes=lora_shapes(), token_shape=token_shapes)
def test_orientation_rank_last(shapes, token_shape):
    """Each matrix sits rank-last, row-major, in its own tokens: lora_A transposed, lora_B as is."""
    layout = layout_lib.build_layout(shapes, token_shape)
    sd = _random_sd(shapes)
    flat = layout_lib.tokenize(layout, sd)[0].reshape(-1)
    size = layout.token_size
    for e in layout.entries:
        v = sd[e.key]
        stored = v.T if e.key.endswith("lora_A.weight") else v
        seg = flat[e.offset * size:(e.offset + e.num_tokens) * size]
        assert np.array_equal(seg[:e.numel], stored.reshape(-1))
        assert not seg[e.numel:].any()


def test_token_is_block_of_rows():
    """token_shape (k, r): a token is k consecutive feature rows of the rank-last matrix."""
    r, fin, fout = 4, 24, 16
    shapes = {"m.layers.0.q.lora_A.weight": (r, fin), "m.layers.0.q.lora_B.weight": (fout, r)}
    sd = _random_sd(shapes)
    layout = layout_lib.build_layout(shapes, (8, r))
    tokens, _ = layout_lib.tokenize(layout, sd)
    a_t = sd["m.layers.0.q.lora_A.weight"].T
    assert layout.num_tokens == fin // 8 + fout // 8
    for j in range(fin // 8):
        assert np.array_equal(tokens[j], a_t[8 * j:8 * j + 8])
    assert np.array_equal(tokens[fin // 8], sd["m.layers.0.q.lora_B.weight"][:8])


def test_natural_order_layers_then_modules():
    shapes = {f"base_model.model.model.layers.{i}.{m}.lora_{ab}.weight": (2, 3) if ab == "A" else (3, 2)
              for i in (10, 2, 1) for m in ("self_attn.q_proj", "mlp.down_proj") for ab in "BA"}
    keys = layout_lib.build_layout(shapes, (2, 2)).keys
    assert [re.search(r"layers\.(\d+)", k).group(1) for k in keys[::4]] == ["1", "2", "10"]
    assert [k.split(".")[-3:-1] for k in keys[:4]] == [["down_proj", "lora_A"], ["down_proj", "lora_B"],
                                                        ["q_proj", "lora_A"], ["q_proj", "lora_B"]]


def test_accepts_torch_and_jax_values():
    import jax.numpy as jnp

    shapes = {"x.lora_A.weight": (3, 5), "x.lora_B.weight": (7, 3)}
    sd = _random_sd(shapes)
    layout = layout_lib.build_layout(shapes, (2, 3))
    ref, _ = layout_lib.tokenize(layout, sd)
    for conv in (torch.from_numpy, jnp.asarray):
        tokens, _ = layout_lib.tokenize(layout, {k: conv(v) for k, v in sd.items()})
        assert _bits_equal(tokens, ref)
    back = layout_lib.detokenize(layout, jnp.asarray(ref))
    assert all(_bits_equal(back[k], sd[k]) for k in sd)
    bf16 = {k: torch.from_numpy(v).bfloat16() for k, v in sd.items()}  # no numpy bf16: converted in torch
    tokens, _ = layout_lib.tokenize(layout, bf16)
    assert np.array_equal(layout_lib.detokenize(layout, tokens)["x.lora_B.weight"], bf16["x.lora_B.weight"].float().numpy())


@PROPS
@given(shapes=lora_shapes(), token_shape=token_shapes, data=st.data())
def test_mismatch_names_key_and_shapes(shapes, token_shape, data):
    layout = layout_lib.build_layout(shapes, token_shape)
    sd = _random_sd(shapes)
    key = data.draw(st.sampled_from(sorted(shapes)))
    kind = data.draw(st.sampled_from(["missing", "shape", "rank", "unexpected"]))
    bad = dict(sd)
    if kind == "missing":
        del bad[key]
    elif kind == "shape":
        bad[key] = np.zeros((*shapes[key][:-1], shapes[key][-1] + 1) if shapes[key] else (2,), np.float32)
    elif kind == "rank":
        bad[key] = np.zeros((*shapes[key], 1), np.float32)
    else:
        key = "base_model.model.zzz.unexpected.weight"
        bad[key] = np.zeros((2, 2), np.float32)
    with pytest.raises(LayoutMismatchError) as err:
        layout_lib.tokenize(layout, bad)
    msg = str(err.value)
    assert f"'{key}'" in msg
    if kind in ("shape", "rank"):
        assert str(tuple(shapes[key])) in msg and str(tuple(bad[key].shape)) in msg
    assert isinstance(err.value, ValueError)


def test_bad_layout_inputs():
    with pytest.raises(ValueError, match="token_shape"):
        layout_lib.build_layout({"a": (2, 2)}, (0, 4))
    with pytest.raises(ValueError, match="empty"):
        layout_lib.build_layout({}, (2, 2))
    layout = layout_lib.build_layout({"a": (2, 2)}, (2, 2))
    with pytest.raises(LayoutMismatchError, match="grid"):
        layout_lib.detokenize(layout, np.zeros((2, 2, 2), np.float32))
    d = layout.to_dict()
    d["entries"][0]["numel"] = 5
    with pytest.raises(ValueError, match="inconsistent"):
        WeightLayout.from_dict(d)


# -------------------------------------------------------------------------------------- normalization


@PROPS
@given(shapes=lora_shapes(), token_shape=token_shapes, s=st.integers(1, 5),
       mode=st.sampled_from(normalization.MODES), scale=st.floats(1e-4, 10.0))
def test_normalizer_roundtrip(shapes, token_shape, s, mode, scale):
    layout = layout_lib.build_layout(shapes, token_shape)
    tokens, mask = layout_lib.tokenize_batch(layout, [_random_sd(shapes, i) for i in range(s)])
    tokens = tokens * np.float32(scale) + np.float32(0.3 * scale) * mask
    norm = normalization.Normalizer.fit(tokens, mask, mode)
    y = norm.normalize(tokens)
    assert y.dtype == np.float32 and y.shape == tokens.shape
    assert np.all(y[:, ~mask] == 0)
    back = norm.denormalize(y)
    assert np.all(back[:, ~mask] == 0)
    np.testing.assert_allclose(back, tokens, rtol=2e-6, atol=2e-6 * scale)
    for restored in (normalization.Normalizer.from_json(norm.to_json()),
                     normalization.Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))):
        assert restored.mode == mode and np.array_equal(restored.mask, mask)
        assert np.array_equal(restored.mean, norm.mean) and np.array_equal(restored.std, norm.std)
    if mode == "per_token" and s > 1:  # standardized per token over its real elements
        counts = mask.sum((1, 2))
        mean = y.sum((0, 2, 3)) / (s * counts)
        var = (y ** 2).sum((0, 2, 3)) / (s * counts) - mean ** 2
        np.testing.assert_allclose(mean, 0, atol=1e-4)
        ok = norm.std.reshape(-1) > 1e-5
        np.testing.assert_allclose(var[ok], 1, rtol=1e-3)


def test_normalizer_jax_and_npz(tmp_path):
    import jax
    import jax.numpy as jnp

    shapes = {"l.0.q.lora_A.weight": (4, 10), "l.0.q.lora_B.weight": (6, 4)}
    layout = layout_lib.build_layout(shapes, (3, 4))
    tokens, mask = layout_lib.tokenize_batch(layout, [_random_sd(shapes, i) for i in range(4)])
    for mode in ("per_token", "per_element"):
        norm = normalization.Normalizer.fit(tokens, mask, mode)
        y_np = norm.normalize(tokens)
        y_jax = jax.jit(norm.normalize)(jnp.asarray(tokens))
        assert isinstance(y_jax, jax.Array) and y_jax.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(y_jax), y_np, rtol=1e-5, atol=1e-5)
        back = jax.jit(norm.denormalize)(y_jax)
        np.testing.assert_allclose(np.asarray(back), tokens, rtol=1e-5, atol=1e-6)
        assert not np.asarray(back)[:, ~mask].any()
        restored = normalization.Normalizer.load(norm.save(tmp_path / f"{mode}.npz"))
        assert restored.mode == mode and np.array_equal(restored.std, norm.std) and np.array_equal(restored.mask, mask)
    with pytest.raises(ValueError, match="unknown normalization mode"):
        normalization.Normalizer.fit(tokens, mask, "per_matrix")


def test_normalizer_constant_tokens_floor():
    mask = np.ones((2, 2, 2), bool)
    mask[1, 1] = False
    tokens = np.zeros((3, 2, 2, 2), np.float32)
    tokens[:, 0] = 0.5  # constant over the zoo: std floored, normalizes to exactly 0
    norm = normalization.Normalizer.fit(tokens, mask)
    assert np.all(norm.std >= norm.eps)
    assert not norm.normalize(tokens).any()
    np.testing.assert_array_equal(norm.denormalize(norm.normalize(tokens)), tokens)


# ------------------------------------------------------------------------------------------- peft IO

R, ALPHA = 4, 8


@pytest.fixture(scope="module")
def peft_adapter(tiny_base, tmp_path_factory):
    """A real peft LoRA (r=4, all 7 Llama linears) on the tiny base with random non-zero lora_B."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    model, _ = base_model.load(tiny_base)
    cfg = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(LLAMA_ALL_LINEAR), lora_dropout=0.0,
                     bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.eval()
    sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
    peft_dir = tmp_path_factory.mktemp("peft_saved") / "adapter"
    peft_model.save_pretrained(peft_dir)  # peft's own writer, for comparison
    return {"sd": sd, "peft_dir": peft_dir, "peft_model": peft_model, "ref": tiny_base}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_real_peft_roundtrip_and_load(peft_adapter, tmp_path):
    from peft import PeftModel

    sd, ref = peft_adapter["sd"], peft_adapter["ref"]
    assert len(sd) == 2 * len(LLAMA_ALL_LINEAR) * 2  # 2 layers x 7 modules x (A, B)
    layout = layout_lib.build_layout({k: tuple(v.shape) for k, v in sd.items()}, (8, R))
    tokens, mask = layout_lib.tokenize(layout, sd)
    assert int(mask.sum()) == sum(v.numel() for v in sd.values())
    back = layout_lib.detokenize(layout, tokens)
    assert all(_bits_equal(back[k], sd[k].numpy()) for k in sd)

    out = peft_io.write_adapter(tmp_path / "adapter", back, r=R, lora_alpha=ALPHA, target_modules=LLAMA_ALL_LINEAR,
                                base_model_name_or_path=ref.path, extra_files={"README.md": "# hi\n"})
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert not list(tmp_path.glob(".adapter*"))
    # Same tensor keys and config as peft's own save_pretrained.
    from safetensors import safe_open

    with safe_open(str(out / peft_io.ADAPTER_WEIGHTS), "pt") as f, \
            safe_open(str(peft_adapter["peft_dir"] / peft_io.ADAPTER_WEIGHTS), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys()) and f.metadata() == g.metadata()
    ours = json.loads((out / peft_io.ADAPTER_CONFIG).read_text())
    theirs = json.loads((peft_adapter["peft_dir"] / peft_io.ADAPTER_CONFIG).read_text())
    for cfg in (ours, theirs):
        cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg.pop("base_model_name_or_path")
    assert ours == theirs
    assert ours["peft_type"] == "LORA" and ours["task_type"] == "CAUSAL_LM" and ours["inference_mode"] is True

    read_sd, config = peft_io.read_adapter(out)
    assert list(read_sd) == layout.keys and all(_bits_equal(read_sd[k], sd[k].numpy()) for k in sd)
    lcfg = peft_io.lora_config_from_adapter(out)
    assert lcfg.r == R and lcfg.lora_alpha == ALPHA and set(lcfg.target_modules) == set(LLAMA_ALL_LINEAR)

    fresh, _ = base_model.load(ref)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(fresh, str(out))
    assert not [w for w in caught if "missing adapter keys" in str(w.message) or "unexpected" in str(w.message).lower()]
    result = loaded.load_adapter(str(out), adapter_name="check")
    assert not result.missing_keys and not result.unexpected_keys
    loaded.set_adapter("default")
    loaded.eval()

    # Hand computation: a base model with every targeted W replaced by W + (alpha / r) B A.
    scale = ALPHA / R
    merged, _ = base_model.load(ref)
    with torch.no_grad():
        for name, module in merged.named_modules():
            if name.split(".")[-1] in LLAMA_ALL_LINEAR:
                a = torch.from_numpy(read_sd[f"base_model.model.{name}.lora_A.weight"])
                b = torch.from_numpy(read_sd[f"base_model.model.{name}.lora_B.weight"])
                module.weight += scale * b @ a
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    got, want = _logits(loaded, ids), _logits(merged, ids)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert (got - _logits(base_model.load(ref)[0], ids)).abs().max() > 1e-3  # the adapter does something
    assert torch.allclose(got, _logits(peft_adapter["peft_model"], ids), atol=1e-6)

    # Single layer: layer 0 q_proj of the loaded PeftModel is x (W + s B A)^T.
    layer = loaded.base_model.model.model.layers[0].self_attn.q_proj
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    w_eff = layer.base_layer.weight + scale * torch.from_numpy(read_sd[f"{key}.lora_B.weight"]) @ torch.from_numpy(
        read_sd[f"{key}.lora_A.weight"])
    x = torch.randn(5, w_eff.shape[1], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ w_eff.T, atol=1e-5)


def test_write_bf16_and_config_errors(peft_adapter, tmp_path):
    sd, ref = peft_adapter["sd"], peft_adapter["ref"]
    kw = dict(r=R, lora_alpha=ALPHA, target_modules=LLAMA_ALL_LINEAR, base_model_name_or_path=ref.path)
    out = peft_io.write_adapter(tmp_path / "bf16", sd, dtype="bfloat16", **kw)
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(str(out / peft_io.ADAPTER_WEIGHTS)).values()} == {torch.bfloat16}
    read_sd, _ = peft_io.read_adapter(out)
    k = next(iter(sd))
    assert np.array_equal(read_sd[k], sd[k].bfloat16().float().numpy())
    named = {k.replace("lora_A.weight", "lora_A.default.weight"): v for k, v in sd.items()}
    with pytest.raises(peft_io.AdapterFormatError, match="adapter name 'default'"):
        peft_io.write_adapter(tmp_path / "named", named, **kw)
    with pytest.raises(peft_io.AdapterFormatError, match=r"lora_A\.weight' has shape"):
        peft_io.write_adapter(tmp_path / "wrong_r", sd, **{**kw, "r": R + 1})
    with pytest.raises(ValueError, match="extra file"):
        peft_io.write_adapter(tmp_path / "bad_extra", sd, extra_files={"../x": ""}, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16"]


def test_write_refuses_existing_and_cleans_up(peft_adapter, tmp_path, monkeypatch):
    import safetensors.torch

    sd, ref = peft_adapter["sd"], peft_adapter["ref"]
    kw = dict(r=R, lora_alpha=ALPHA, target_modules=LLAMA_ALL_LINEAR, base_model_name_or_path=ref.path)
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        peft_io.write_adapter(target, sd, **kw)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]

    def boom(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.numpy

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    monkeypatch.setattr(safetensors.numpy, "save_file", boom)  # float32 is written with safetensors.numpy
    with pytest.raises(OSError, match="disk full"):
        peft_io.write_adapter(tmp_path / "new", sd, **kw)
    # overwrite replaces only an adapter folder: a folder holding a user's file is refused
    with pytest.raises(OSError, match="not an adapter folder.*keep.txt"):
        peft_io.write_adapter(target, sd, overwrite=True, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folders, no partial "new"
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    monkeypatch.undo()
    adapter = peft_io.write_adapter(tmp_path / "adapter2", sd, **kw)
    before = (adapter / "adapter_model.safetensors").read_bytes()
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        peft_io.write_adapter(adapter, sd, overwrite=True, **kw)
    assert (adapter / "adapter_model.safetensors").read_bytes() == before  # a failed overwrite keeps the old one
    monkeypatch.undo()
    peft_io.write_adapter(adapter, sd, overwrite=True, **kw)
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "adapter2"]


def test_read_adapter_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        peft_io.read_adapter(tmp_path / "nope")
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="pickled weights are not read"):
        peft_io.read_adapter(tmp_path / "pickled")


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_inspect_and_roundtrip(peft_adapter, tmp_path):
    src = peft_adapter["peft_dir"]
    out = check.inspect(src, check.parse_token_shape("8,4"))
    assert re.search(r"matrices\s+28\b", out) and "q_proj" in out and "down_proj" in out
    n_params = sum(v.numel() for v in peft_adapter["sd"].values())
    assert f"{n_params:,}" in out and "padding fraction" in out

    dst = tmp_path / "rt"
    assert "max abs diff 0.0e+00" in check.roundtrip(src, dst, check.parse_token_shape("8x4"))
    a, ca = peft_io.read_adapter(src)
    b, cb = peft_io.read_adapter(dst)
    assert list(a) == list(b) and all(_bits_equal(a[k], b[k]) for k in a)
    for cfg in (ca, cb):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    assert ca == cb

    # bad input: a user error naming the problem, nothing written
    with pytest.raises(UserError, match="already exists"):
        check.roundtrip(src, dst)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check.roundtrip(tmp_path / "missing", tmp_path / "o1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no adapter_model.safetensors"):
        check.inspect(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        check.roundtrip(tmp_path / "empty", tmp_path / "o2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "rt"]
    for bad in ("8", "0,4", "a,b"):
        with pytest.raises(UserError, match="token shape"):
            check.parse_token_shape(bad)


def test_cli_module_entry_point(peft_adapter, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dnd_jax.weights", "inspect", str(peft_adapter["peft_dir"])],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "token shape      8 x 128" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "dnd_jax.weights", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "error:" in proc.stderr and not proc.stdout
    for args in (["inspect", str(tmp_path / "missing")], ["inspect", str(peft_adapter["peft_dir"]), "--token-shape", "8"],
                 ["roundtrip", str(peft_adapter["peft_dir"])], ["frobnicate", str(tmp_path)], ["inspect"]):
        proc = subprocess.run([sys.executable, "-m", "dnd_jax.weights", *args], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.splitlines()) == 1, args
    proc = subprocess.run([sys.executable, "-m", "dnd_jax.weights", "inspect", str(peft_adapter["peft_dir"]),
                           "--token_shape", "8,4"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0 and "token shape      8 x 4" in proc.stdout, proc.stderr


# ------------------------------------------------------------------------------------------ LoRA math


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_math_is_what_peft_applies(rslora):
    """dnd_jax.weights.lora: scaling, dW = s B A, stacking merges and Gram products, against peft's merge
    and dense numpy (the one place every module takes its LoRA math from)."""
    from peft import LoraConfig, get_peft_model

    from dnd_jax.weights import lora

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(6, 5, bias=False)

    torch.manual_seed(0)
    base = Tiny()
    w = base.proj.weight.detach().numpy().copy()
    cfg = {"r": 3, "lora_alpha": 7.0, "use_rslora": rslora}
    model = get_peft_model(base, LoraConfig(r=3, lora_alpha=7.0, target_modules=["proj"], use_rslora=rslora,
                                            init_lora_weights=False))
    layer = model.base_model.model.proj
    a = layer.lora_A["default"].weight.detach().numpy().copy()
    b = layer.lora_B["default"].weight.detach().numpy().copy()
    s = lora.lora_scaling(cfg)
    assert s == pytest.approx(layer.scaling["default"]) and s == pytest.approx(7.0 / (np.sqrt(3) if rslora else 3))
    merged = model.merge_and_unload().proj.weight.detach().numpy()
    np.testing.assert_allclose(merged, w + lora.delta(a, b, s), rtol=0, atol=1e-6)
    assert lora.lora_scaling({"r": 9, "lora_alpha": lora.alpha_for_scaling(s, 9, rslora), "use_rslora": rslora}) \
        == pytest.approx(s)

    rng = np.random.default_rng(0)
    sds = [{"m.lora_A.weight": rng.normal(size=(r, 6)).astype(np.float32),
            "m.lora_B.weight": rng.normal(size=(5, r)).astype(np.float32)} for r in (3, 2)]
    stacked = lora.stack_factors(sds, [0.25, 0.75])
    assert stacked["m.lora_A.weight"].shape == (5, 6)
    want = sum(c * sd["m.lora_B.weight"] @ sd["m.lora_A.weight"] for c, sd in zip([0.25, 0.75], sds, strict=True))
    np.testing.assert_allclose(stacked["m.lora_B.weight"] @ stacked["m.lora_A.weight"], want, rtol=1e-5, atol=1e-5)
    factors = [lora.lora_factors(sd, sc) for sd, sc in zip(sds, (2.0, 0.5), strict=True)]
    dense = [sc * sd["m.lora_B.weight"].astype(np.float64) @ sd["m.lora_A.weight"]
             for sd, sc in zip(sds, (2.0, 0.5), strict=True)]
    np.testing.assert_allclose(lora.update_gram(factors), [[np.sum(x * y) for y in dense] for x in dense], rtol=1e-6)
    assert lora.module_path("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight") == "model.layers.0.mlp.up_proj"
