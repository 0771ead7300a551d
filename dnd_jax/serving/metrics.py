"""Service metrics: request counts by route and status, latency percentiles, decoder batch sizes."""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

WINDOW = 10_000  # latencies kept per route for percentiles


class Metrics:
    def __init__(self):
        self.started = time.time()
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (route, status) -> count
        self.latency: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=WINDOW))
        self.batch_sizes: collections.Counter = collections.Counter()  # requests per decoder forward -> count
        self.counters: collections.Counter = collections.Counter()
        self.generate_s = 0.0
        self.stage_s: collections.Counter = collections.Counter()  # encode / decode / write seconds, summed

    def observe(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(route, status)] += 1
            self.latency[route].append(seconds)

    def batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_sizes[size] += 1
            self.generate_s += seconds

    def stages(self, seconds: dict) -> None:
        with self._lock:
            self.stage_s.update({k: float(v) for k, v in seconds.items()})

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def snapshot(self, queue_depth: int = 0) -> dict:
        with self._lock:
            lat = {}
            for route, xs in self.latency.items():
                a = np.asarray(xs, np.float64)
                lat[route] = {"n": int(a.size), "p50_s": float(np.percentile(a, 50)),
                              "p99_s": float(np.percentile(a, 99)), "max_s": float(a.max())}
            forwards = sum(self.batch_sizes.values())
            return {
                "uptime_s": time.time() - self.started,
                "requests": {f"{r} {s}": n for (r, s), n in sorted(self.requests.items())},
                "latency": lat,
                "batches": {"forwards": forwards, "sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                            "mean_size": (sum(k * v for k, v in self.batch_sizes.items()) / forwards) if forwards else 0.0,
                            "generate_s": self.generate_s, "stage_s": dict(self.stage_s)},
                "counters": dict(self.counters),
                "queue_depth": queue_depth,
            }
