"""Load test of ``python -m dnd_jax.serve``: a real server process, many concurrent clients, every adapter checked.

    python bench/load_test_serve.py --requests 500 --concurrency 32                # SmolLM2-shaped generator
    python bench/load_test_serve.py --fixture tiny --requests 200 --concurrency 16 # tiny generator
    python bench/load_test_serve.py --checkpoint W/generators/arc_c                # any trained generator

The generator is the real-shaped fixture of ``bench/fixtures.py`` (synthetic zoo with SmolLM2's LoRA
shapes, the real decoder and MiniLM encoder; quality does not change speed) unless ``--checkpoint`` is
given. Each request is 32 (``--prompts_per_request``) distinct ARC-Easy test prompts. Phases:

1. sequential: ``--sequential`` requests one at a time (warm single-request latency);
2. load: ``--requests`` requests from ``--concurrency`` client threads;
3. check (not timed): every acknowledged adapter is downloaded, its files checked against the sha256
   the POST returned, and its tensors compared with ``Generator.generate`` on the same prompts in this
   process.

Writes ``--out`` (JSON: latency percentiles, adapters/s, decoder batch sizes from ``/metrics``,
failures, mismatches) and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def _generator(args) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from bench import fixtures

    if args.fixture == "tiny":
        from configs import tiny

        return fixtures.make_generator(tiny.get_config(), ROOT / "workdir/bench/serve_gen_tiny", arch="tiny_llama")
    from configs import smollm2_commonsense

    return fixtures.make_generator(smollm2_commonsense.get_config(), ROOT / "workdir/bench/serve_gen_smollm2")


def _prompt_sets(n: int, k: int, seed: int) -> list[list[str]]:
    from dnd_jax import tasks

    pool = [e.prompt for e in tasks.load_examples("arc_e", "test")]
    rng = np.random.default_rng(seed)
    return [[pool[j] for j in rng.choice(len(pool), size=k, replace=False)] for _ in range(n)]


def _pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, np.float64), q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="", help="generator workdir (default: a fixture, see --fixture)")
    ap.add_argument("--fixture", default="smollm2", choices=["smollm2", "tiny"])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sequential", type=int, default=10)
    ap.add_argument("--prompts_per_request", type=int, default=32)
    ap.add_argument("--max_batch", type=int, default=16)
    ap.add_argument("--batch_wait_ms", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs/bench/serve_load.json"))
    args = ap.parse_args()

    from dnd_jax import generate
    from dnd_jax.serving import client

    gen_dir = _generator(args)
    sets = _prompt_sets(args.sequential + args.requests, args.prompts_per_request, args.seed)
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        store = Path(tmp) / "store"
        srv = client.start_server(gen_dir, store, log=Path(tmp) / "server.log",
                                  extra=("--max_batch", str(args.max_batch), "--batch_wait_ms", str(args.batch_wait_ms)))
        print(f"[load] server ready in {srv.ready_s:.1f} s (load + warm-up of every batch bucket)", flush=True)
        try:
            def post(ps):
                t0 = time.perf_counter()
                try:
                    status, body = client.request(srv.url, "POST", "/v1/adapters", {"prompts": ps}, timeout=600)
                except OSError as e:
                    return time.perf_counter() - t0, None, str(e)
                return time.perf_counter() - t0, status, body

            seq = [post(ps) for ps in sets[:args.sequential]]
            _, m0 = client.request(srv.url, "GET", "/metrics")
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                load = list(pool.map(post, sets[args.sequential:]))
            wall = time.perf_counter() - t0
            _, metrics = client.request(srv.url, "GET", "/metrics")

            print(f"[load] {args.requests} requests in {wall:.1f} s; checking every adapter", flush=True)
            import warnings

            warnings.simplefilter("ignore")  # truncation notices, once per checked adapter
            gen = generate.Generator.load(gen_dir)
            failures, mismatches, checked, max_err = [], [], 0, 0.0
            for ps, (_lat, status, body) in zip(sets, seq + load):
                if status not in (200, 201):
                    failures.append({"status": status, "body": str(body)[:200]})
                    continue
                try:
                    files = client.fetch_zip(srv.url, body["id"])
                    client.check_files(files, body)
                    served = client.adapter_tensors(files)
                    ref = gen.generate(ps).state_dict
                    if served.keys() != ref.keys():
                        raise AssertionError("tensor names differ")
                    for k, v in ref.items():
                        err = float(np.max(np.abs(served[k] - v) / (1e-5 + 1e-4 * np.abs(v))))
                        max_err = max(max_err, err)
                        if err > 1.0:
                            raise AssertionError(f"{k}: beyond atol 1e-5 + rtol 1e-4")
                    checked += 1
                except AssertionError as e:
                    mismatches.append({"id": body["id"], "error": str(e)})
        finally:
            srv.stop()

    lat_seq = [x[0] for x in seq if x[1] in (200, 201)]
    lat_load = [x[0] for x in load if x[1] in (200, 201)]
    sizes = {int(k): v for k, v in metrics["batches"]["sizes"].items()}
    sizes0 = {int(k): v for k, v in m0["batches"]["sizes"].items()}
    load_sizes = {k: v - sizes0.get(k, 0) for k, v in sizes.items() if v - sizes0.get(k, 0)}
    forwards = sum(load_sizes.values())
    result = {
        "command": "python bench/load_test_serve.py " + " ".join(sys.argv[1:]),
        "generator": str(gen_dir), "decoder_params": int(gen.meta.get("param_count", 0)),
        "adapter_params": int(sum(int(np.prod(e.shape)) for e in gen.layout.entries)),
        "prompts_per_request": args.prompts_per_request, "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms, "server_ready_s": srv.ready_s,
        "sequential": {"n": len(lat_seq), "p50_s": _pct(lat_seq, 50), "p99_s": _pct(lat_seq, 99)},
        "load": {"requests": args.requests, "concurrency": args.concurrency, "ok": len(lat_load), "wall_s": wall,
                 "adapters_per_s": len(lat_load) / wall, "p50_s": _pct(lat_load, 50), "p90_s": _pct(lat_load, 90),
                 "p99_s": _pct(lat_load, 99), "max_s": max(lat_load, default=float("nan")),
                 "decoder_forwards": forwards, "batch_sizes": {str(k): v for k, v in sorted(load_sizes.items())},
                 "mean_batch": (sum(k * v for k, v in load_sizes.items()) / forwards) if forwards else 0.0,
                 "server_stage_s": metrics["batches"].get("stage_s", {})},
        "checked": checked, "failed": len(failures), "mismatched": len(mismatches),
        "max_error_over_tolerance": max_err, "failures": failures[:5], "mismatches": mismatches[:5],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    s, ld = result["sequential"], result["load"]
    print(f"| phase | requests | concurrency | p50 (s) | p99 (s) | adapters/s | mean batch |\n|---|---|---|---|---|---|---|\n"
          f"| sequential | {s['n']} | 1 | {s['p50_s']:.2f} | {s['p99_s']:.2f} | {1 / s['p50_s']:.2f} | 1 |\n"
          f"| load | {ld['ok']}/{ld['requests']} | {ld['concurrency']} | {ld['p50_s']:.2f} | {ld['p99_s']:.2f} | "
          f"{ld['adapters_per_s']:.2f} | {ld['mean_batch']:.1f} |")
    print(f"checked {checked} adapters against Generator.generate: {len(failures)} failed, {len(mismatches)} "
          f"mismatched; wrote {args.out}")
    if failures or mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
