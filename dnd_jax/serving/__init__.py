"""Adapters as a service (``python -m dnd_jax.serve``): one small module per idea.

- ``requests``: bounded body reading, strict parsing and limits (each failure a clear 4xx);
- ``store``: adapter folders written atomically and durably, checked before they are served;
- ``batcher``: concurrent requests share one decoder forward;
- ``service``: the warm generator (bucketed batches, compiled at startup) and torch completions;
- ``metrics``: requests by route and status, latency percentiles, batch sizes;
- ``app``: the FastAPI routes.
"""
