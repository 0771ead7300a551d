"""Serve a trained generator over HTTP: ``python -m dnd_jax.serve --checkpoint GEN_DIR --store DIR``.

    python -m dnd_jax.serve --checkpoint workdir/smollm2/generators/arc_c --store served --port 8000
    curl -s localhost:8000/v1/adapters -d '{"prompts": ["Why does ice float?", "What do plants need?"]}'
    curl -s -o adapter.zip localhost:8000/v1/adapters/<id>

The generator, the sentence encoder and one compiled decoder per batch-size bucket are loaded before
the port opens, so no request pays a cold start. Concurrent requests are batched into one decoder
forward (``--max_batch``, waiting at most ``--batch_wait_ms`` for company). Adapters are written
atomically and fsync'd into ``--store`` before a request is answered; a restarted server serves
every adapter it ever acknowledged. Routes, limits and errors: :mod:`dnd_jax.serving.app`; measured
throughput and the fault tests: ``docs/serve.md``.
"""
from __future__ import annotations

import sys
import time

from absl import flags

from dnd_jax import cli


def define_flags() -> dict:
    return {
        "checkpoint": flags.DEFINE_string("checkpoint", None, "Generator workdir (the one given to dnd_jax.train)."),
        "step": flags.DEFINE_integer("step", None, "Generator checkpoint step (default: latest)."),
        "store": flags.DEFINE_string("store", None, "Folder of served adapters (created; kept across restarts)."),
        "host": flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on."),
        "port": flags.DEFINE_integer("port", 8000, "Port to listen on."),
        "max_batch": flags.DEFINE_integer("max_batch", 16, "Most adapter requests decoded in one forward."),
        "batch_wait_ms": flags.DEFINE_float("batch_wait_ms", 5.0, "How long a request waits for others to batch with."),
        "max_body_bytes": flags.DEFINE_integer("max_body_bytes", 1 << 20, "Largest request body (413 above)."),
        "max_prompts": flags.DEFINE_integer("max_prompts", 512, "Most prompts per adapter request (422 above)."),
        "max_prompt_chars": flags.DEFINE_integer("max_prompt_chars", 8192, "Longest prompt in characters (422 above)."),
        "max_queue": flags.DEFINE_integer("max_queue", 1024, "Queued adapter requests before answering 503."),
        "max_new_tokens": flags.DEFINE_integer("max_new_tokens", 64, "Largest max_new_tokens for /v1/completions."),
        "base_model": flags.DEFINE_string("base_model", None, "Base model HF folder for /v1/completions (default: the "
                                          "one the generator's zoo was collected on)."),
    }


def main(fl: dict) -> None:
    import uvicorn

    from dnd_jax.errors import InputError
    from dnd_jax.generator import Generator
    from dnd_jax.serving import app as app_lib
    from dnd_jax.serving.metrics import Metrics
    from dnd_jax.serving.requests import Limits
    from dnd_jax.serving.service import AdapterService
    from dnd_jax.serving.store import AdapterStore

    for name in ("max_batch", "max_body_bytes", "max_prompts", "max_prompt_chars", "max_queue", "max_new_tokens"):
        if fl[name].value < 1:
            raise InputError(f"--{name} must be >= 1, got {fl[name].value}")
    if fl["batch_wait_ms"].value < 0:
        raise InputError(f"--batch_wait_ms must be >= 0, got {fl['batch_wait_ms'].value}")
    t0 = time.perf_counter()
    gen = Generator.load(fl["checkpoint"].value, fl["step"].value)
    store = AdapterStore(fl["store"].value)
    service = AdapterService(gen, store, Metrics(), max_batch=fl["max_batch"].value,
                             base_model_path=fl["base_model"].value)
    warm_s = service.warm_up()
    limits = Limits(max_body_bytes=fl["max_body_bytes"].value, max_prompts=fl["max_prompts"].value,
                    max_prompt_chars=fl["max_prompt_chars"].value, max_new_tokens=fl["max_new_tokens"].value,
                    max_queue=fl["max_queue"].value)
    app = app_lib.build_app(service, limits, max_batch=fl["max_batch"].value,
                            max_wait_s=fl["batch_wait_ms"].value / 1000.0)
    print(f"[serve] generator {gen.workdir} step {gen.step} loaded in {gen.load_time_s:.1f} s, warmed up in "
          f"{warm_s:.1f} s; {len(store.ids())} stored adapters in {store.root}; ready in "
          f"{time.perf_counter() - t0:.1f} s on http://{fl['host'].value}:{fl['port'].value}", flush=True)
    uvicorn.run(app, host=fl["host"].value, port=fl["port"].value, log_level="warning", access_log=False,
                timeout_graceful_shutdown=10)
    sys.stdout.flush()


def cli_main() -> None:
    """Console script ``dnd-serve`` (= ``python -m dnd_jax.serve``)."""
    cli.run(define_flags, main, required=("checkpoint", "store"))


if __name__ == "__main__":
    cli_main()
