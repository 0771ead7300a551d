"""``python -m dnd_jax.serve`` as a real process: exact adapters under concurrency, clear 4xx, kill -9."""
import http.client
import json
import signal
import threading

import numpy as np
import pytest

from configs import tiny
from dnd_jax import base_model, testing, trainer
from dnd_jax import generator as generator_lib
from dnd_jax.serving import client

LIMITS = ("--max_body_bytes", "65536", "--max_prompts", "64", "--max_prompt_chars", "1000", "--max_new_tokens", "32")


def _prompts(i, n=5):
    words = ("river", "stone", "lamp", "cloud", "bread", "violin", "maple", "copper")
    return [f"Request {i}: why does the {words[(i + k) % len(words)]} {k} behave this way?" for k in range(n)]


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    """A tiny generator (synthetic zoo, 10 steps) and a tiny Llama base for completions."""
    w = tmp_path_factory.mktemp("serve")
    testing.make_synthetic_zoo(w, tasks=("arc_e", "piqa", "boolq"), num_ckpts=3, num_prompts=16)
    config = tiny.get_config()
    config.total_steps, config.ckpt_steps, config.eval_steps = 10, 10, 10
    trainer.train_and_evaluate(config, w / "generator")
    base = base_model.build_tiny_llama(w / "base")
    return w / "generator", base


@pytest.fixture(scope="module")
def server(generator, tmp_path_factory):
    gen_dir, base = generator
    store = tmp_path_factory.mktemp("store") / "adapters"
    srv = client.start_server(gen_dir, store, extra=(*LIMITS, "--max_batch", "8", "--batch_wait_ms", "100",
                                                     "--base_model", str(base)))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def direct(generator):
    return generator_lib.Generator.load(generator[0])


def _assert_same_adapter(served: dict, expected: dict):
    assert served.keys() == expected.keys()
    for k, v in expected.items():
        np.testing.assert_allclose(served[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_concurrent_requests_are_batched_and_every_adapter_is_exact(server, direct):
    n, workers = 24, 8
    sets = [_prompts(i) for i in range(20)] + [_prompts(i) for i in range(4)]  # 4 repeats: same ids
    results: dict[int, tuple] = {}
    barrier = threading.Barrier(workers)

    def worker(w):
        barrier.wait()
        for i in range(w, n, workers):
            results[i] = client.request(server.url, "POST", "/v1/adapters", {"prompts": sets[i]})

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(n))
    assert all(status in (200, 201) for status, _ in results.values()), results
    ids = [results[i][1]["id"] for i in range(n)]
    assert len(set(ids)) == 20 and ids[20:] == ids[:4]
    for i in range(20):
        files = client.fetch_zip(server.url, ids[i])
        client.check_files(files, results[i][1])
        _assert_same_adapter(client.adapter_tensors(files), direct.generate(sets[i]).state_dict)
        assert "PeftModel.from_pretrained" in files["README.md"].decode()
    _, metrics = client.request(server.url, "GET", "/metrics")
    sizes = {int(k): v for k, v in metrics["batches"]["sizes"].items()}
    assert sum(k * v for k, v in sizes.items()) == metrics["counters"]["adapters_generated"] == 20
    assert max(sizes) > 1  # concurrent requests shared decoder forwards
    assert metrics["latency"]["/v1/adapters"]["p99_s"] >= metrics["latency"]["/v1/adapters"]["p50_s"] > 0


def _chunked(n):
    for _ in range(n):
        yield b"x" * 8192


BAD = [
    ("POST", "/v1/adapters", b"{not json", 400, "malformed JSON"),
    ("POST", "/v1/adapters", '{"prompts": ["caf\xe9"]}'.encode("latin-1"), 400, "not valid UTF-8"),
    ("POST", "/v1/adapters", b"", 400, "empty request body"),
    ("POST", "/v1/adapters", json.dumps({"prompts": ["x" * 900] * 80}).encode(), 413, "exceeds the limit of 65536"),
    ("POST", "/v1/adapters", _chunked, 413, "exceeds the limit of 65536"),
    ("POST", "/v1/adapters", b'["a list"]', 422, "expected a JSON object"),
    ("POST", "/v1/adapters", b'{"prompts": "one string"}', 422, "'prompts' must be a list of strings"),
    ("POST", "/v1/adapters", b'{"prompts": ["ok", 3]}', 422, "prompts[1] must be a string, got int"),
    ("POST", "/v1/adapters", b'{"prompts": []}', 422, "'prompts' is empty"),
    ("POST", "/v1/adapters", b'{"prompts": ["ok", "   "]}', 422, "prompts[1] is empty"),
    ("POST", "/v1/adapters", json.dumps({"prompts": ["q"] * 65}).encode(), 422, "65 prompts; the limit is 64"),
    ("POST", "/v1/adapters", json.dumps({"prompts": ["q" * 1001]}).encode(), 422, "the limit is 1000"),
    ("POST", "/v1/adapters", b'{"prompts": ["ok"], "seed": "7"}', 422, "'seed' must be an integer"),
    ("POST", "/v1/adapters", b'{"prompts": ["ok"], "seed": -1}', 422, "'seed' must be in"),
    ("POST", "/v1/adapters", b'{"prompts": ["ok"], "temperature": 1}', 422, "unknown field(s) ['temperature']"),
    ("GET", "/v1/adapters/0123456789abcdef0123456789abcdef", None, 404, "unknown adapter id"),
    ("GET", "/v1/adapters/not-an-id", None, 404, "ids are 32 hex digits"),
    ("GET", "/v1/adapters/0123456789abcdef0123456789abcdef/files/x", None, 404, "unknown adapter id"),
    ("DELETE", "/v1/adapters", None, 405, "method not allowed"),
    ("GET", "/v2/anything", None, 404, "no such route"),
    ("POST", "/v1/completions", b'{"adapter_id": "0123456789abcdef0123456789abcdef", "prompt": "hi"}', 404,
     "unknown adapter id"),
    ("POST", "/v1/completions", b'{"prompt": "hi", "max_new_tokens": 100000}', 422, "'max_new_tokens' must be in"),
    ("POST", "/v1/completions", b'{"adapter_id": 5, "prompt": "hi"}', 422, "'adapter_id' must be a string or null"),
]


@pytest.mark.parametrize("method,path,body,status,message", BAD, ids=[f"{b[3]}-{b[4][:24]}" for b in BAD])
def test_bad_requests_get_a_clear_4xx_and_serving_continues(server, method, path, body, status, message):
    import http.client
    import urllib.parse

    u = urllib.parse.urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    if callable(body):  # chunked upload without Content-Length
        conn.request(method, path, body=body(20), encode_chunked=True)
    else:
        conn.request(method, path, body=body)
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    conn.close()
    assert resp.status == status and payload["status"] == status
    assert message in payload["error"] and "\n" not in payload["error"]
    ok, body_ok = client.request(server.url, "POST", "/v1/adapters", {"prompts": _prompts(99)})
    assert ok in (200, 201) and len(body_ok["id"]) == 32
    assert client.request(server.url, "GET", "/healthz")[0] == 200


def test_completions_apply_the_adapter_as_peft_does(server, generator, tmp_path):
    import torch
    from peft import PeftModel

    _, base_dir = generator
    status, body = client.request(server.url, "POST", "/v1/adapters", {"prompts": _prompts(7)})
    assert status in (200, 201)
    files = client.fetch_zip(server.url, body["id"])
    folder = tmp_path / "adapter"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    ref = base_model.BaseModelRef("tiny", str(base_dir), "")
    base, tok = base_model.load(ref)
    enc = tok(["Question: why is the sky blue?"], return_tensors="pt")
    texts = {}
    with torch.inference_mode():
        texts[None] = tok.decode(base.generate(**enc, max_new_tokens=12, do_sample=False,
                                               pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:],
                                 skip_special_tokens=True)
        model = PeftModel.from_pretrained(base, str(folder)).eval()
        texts[body["id"]] = tok.decode(model.generate(**enc, max_new_tokens=12, do_sample=False,
                                                      pad_token_id=tok.pad_token_id)[0, enc["input_ids"].shape[1]:],
                                       skip_special_tokens=True)
    for aid in (body["id"], None, body["id"]):  # adapter, then the base alone, then the adapter again
        status, out = client.request(server.url, "POST", "/v1/completions",
                                     {"adapter_id": aid, "prompt": "Question: why is the sky blue?",
                                      "max_new_tokens": 12})
        assert status == 200 and out["text"] == texts[aid]


def test_kill9_loses_nothing_acknowledged(generator, tmp_path, direct):
    gen_dir, _ = generator
    store = tmp_path / "store"
    srv = client.start_server(gen_dir, store, extra=("--max_batch", "4", "--batch_wait_ms", "20"))
    acked: dict[str, dict] = {}
    failed: list[list[str]] = []
    refused: list = []
    lock = threading.Lock()
    enough = threading.Event()

    def worker(w):
        i = 0
        while True:
            ps = _prompts(1000 * (w + 1) + i, n=3)
            i += 1
            try:
                status, body = client.request(srv.url, "POST", "/v1/adapters", {"prompts": ps}, timeout=60)
            except (OSError, http.client.HTTPException):  # the server died under this request (or before it)
                with lock:
                    failed.append(ps)
                return
            if status not in (200, 201):
                refused.append((status, body))
                return
            with lock:
                acked[body["id"]] = dict(body, prompts=ps)
                if len(acked) >= 12:
                    enough.set()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    assert enough.wait(300), "the server acknowledged too few requests"
    srv.stop(signal.SIGKILL)
    for t in threads:
        t.join()
    assert not refused
    assert len(failed) == 6  # every client had a request cut off (in flight, or refused after the kill)

    again = client.start_server(gen_dir, store)
    try:
        assert not list((store / ".staging").iterdir())  # unfinished writes are gone, never served
        for aid, ack in acked.items():
            files = client.fetch_zip(again.url, aid)
            client.check_files(files, ack)  # byte for byte what was acknowledged
        for ps in failed[:2]:  # a cut-off request simply succeeds when sent again
            status, body = client.request(again.url, "POST", "/v1/adapters", {"prompts": ps})
            assert status in (200, 201)
            _assert_same_adapter(client.adapter_tensors(client.fetch_zip(again.url, body["id"])),
                                 direct.generate(ps).state_dict)
        _, health = client.request(again.url, "GET", "/healthz")
        assert health["stored_adapters"] >= len(acked)
    finally:
        again.stop()
