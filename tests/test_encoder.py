"""The JAX BERT encoder (dnd_jax.encoder) against sentence-transformers on the embedded MiniLM."""
import numpy as np
import pytest

from dnd_jax import assets, conditions, encoder

PROMPTS = [
    "Which gas do plants absorb from the air?",
    "Why does ice float on water?",
    "  leading and trailing spaces, ÜNICODE café 東京, emoji 🙂  ",
    "a somewhat longer prompt that will be truncated " * 20,
    "x",
    "Question: A student measures the mass of a rock; which result is most likely?\nAnswer:",
    "Tabs\tand\nnew lines, numbers 3.14159 and punctuation!?;:",
]


@pytest.fixture(scope="module")
def minilm():
    path = assets.minilm_dir()
    if not encoder.supports(path):
        pytest.fail(f"the embedded MiniLM at {path} should be a supported BERT folder")
    return path


@pytest.fixture(scope="module")
def st_model(minilm):
    import torch
    from sentence_transformers import SentenceTransformer

    with torch.inference_mode():
        return SentenceTransformer(str(minilm), device="cpu")


def _st_token_embeddings(model, prompts, max_len):
    import torch

    model.max_seq_length = max_len
    with torch.inference_mode():
        out = model.encode(list(prompts), output_value="token_embeddings", batch_size=4, show_progress_bar=False,
                           convert_to_numpy=False)
    return [t.float().numpy() for t in out]


@pytest.mark.parametrize("max_len", [8, 32, 128])
def test_matches_sentence_transformers(minilm, st_model, max_len):
    enc = encoder.BertEncoder.load(minilm)
    emb, counts = enc(PROMPTS, max_len, batch_size=4)
    ref = _st_token_embeddings(st_model, PROMPTS, max_len)
    assert emb.shape == (len(PROMPTS), max_len, 384) and emb.dtype == np.float32
    for i, r in enumerate(ref):
        assert counts[i] == r.shape[0], (i, counts[i], r.shape)
        np.testing.assert_allclose(emb[i, :counts[i]], r, atol=2e-5, rtol=0)
        assert not emb[i, counts[i]:].any()  # zeros past the prompt


def test_token_lengths_match_the_hf_tokenizer(minilm, st_model):
    class Cfg:  # the fields conditions.token_lengths reads
        class encoder:  # noqa: N801
            kind, path = "minilm", ""

    ours = conditions.token_lengths(PROMPTS, Cfg)
    theirs = [len(ids) for ids in st_model.tokenizer(PROMPTS, verbose=False)["input_ids"]]
    assert ours == theirs and max(ours) > 128


def test_batching_and_order_do_not_change_values(minilm):
    enc = encoder.BertEncoder.load(minilm)
    together, _ = enc(PROMPTS, 32, batch_size=64)
    alone = np.concatenate([enc([p], 32)[0] for p in PROMPTS])
    np.testing.assert_allclose(together, alone, atol=2e-5, rtol=0)
    rev, _ = enc(PROMPTS[::-1], 32, batch_size=2)
    np.testing.assert_allclose(together, rev[::-1], atol=2e-5, rtol=0)


def test_unsupported_folder_is_refused(tmp_path):
    (tmp_path / "modules.json").write_text('[{"idx": 0, "name": "0", "path": "", "type": "x.Transformer"}]')
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert not encoder.supports(tmp_path)
    with pytest.raises(ValueError, match="not a BERT"):
        encoder.BertEncoder.load(tmp_path)
