"""HTTP routes (FastAPI): adapters from prompts, their files, completions, health and metrics.

    POST /v1/adapters                  {"prompts": [...], "seed": 0}  -> 201 {"id", "files", ...} (200 if stored)
    GET  /v1/adapters/{id}             the peft folder as a zip (adapter_model.safetensors, adapter_config.json,
                                       README.md model card, dnd_generation.json, dnd_serve.json)
    GET  /v1/adapters/{id}/manifest    JSON: files with sha256 and size, prompts hash, generator
    GET  /v1/adapters/{id}/files/{name}  one file
    POST /v1/completions               {"adapter_id": id | null, "prompt": "...", "max_new_tokens": 16}
    GET  /healthz                      liveness + generator identity
    GET  /metrics                      requests by route and status, latency p50/p99, decoder batch sizes

Every error is ``{"error": "<one line>", "status": <code>}`` with a 4xx for the client's mistakes
(400 unreadable body, 404 unknown id or route, 405 method, 413 too large, 422 invalid fields,
503 queue full or completions unavailable). Bodies are read with a byte limit and parsed here, so a
bad request never reaches the generator.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import time
import zipfile

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from dnd_jax.serving.batcher import Batcher
from dnd_jax.serving.metrics import Metrics
from dnd_jax.serving.requests import ApiError, Limits, adapter_request, completion_request, parse_json_object, read_body
from dnd_jax.serving.service import AdapterService
from dnd_jax.serving.store import ID_RE, CorruptAdapterError


def build_app(service: AdapterService, limits: Limits, *, max_batch: int, max_wait_s: float) -> FastAPI:
    metrics: Metrics = service.metrics
    batcher = Batcher(service.generate_batch, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=limits.max_queue)
    torch_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dnd-torch")

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        yield
        await batcher.stop()
        torch_executor.shutdown(wait=False)

    app = FastAPI(title="dnd_jax adapters", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(_req, exc: ApiError):
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        msg = {404: "no such route", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, msg)

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            metrics.observe(getattr(route, "path", "unmatched"), status, time.perf_counter() - t0)

    async def body_of(request: Request) -> dict:
        raw = await read_body(request.stream(), request.headers.get("content-length"), limits.max_body_bytes)
        return parse_json_object(raw)

    def known(aid: str) -> str:
        if not ID_RE.match(aid):
            raise ApiError(404, f"unknown adapter id '{aid[:64]}' (ids are 32 hex digits)")
        if not service.store.exists(aid):
            raise ApiError(404, f"unknown adapter id '{aid}'")
        return aid

    def files_of(aid: str) -> dict:
        try:
            return service.store.verified_files(aid)
        except CorruptAdapterError as e:
            metrics.count("corrupt_adapters_refused")
            raise ApiError(500, str(e)) from None

    @app.post("/v1/adapters")
    async def create_adapter(request: Request):
        req = adapter_request(await body_of(request), limits)
        aid = service.adapter_id(req)
        if service.store.exists(aid):
            metrics.count("adapters_already_stored")
            return JSONResponse(_public(service.store.manifest(aid)), status_code=200)
        manifest = await batcher.submit((aid, req))
        return JSONResponse(_public(manifest), status_code=201)

    @app.get("/v1/adapters/{aid}")
    async def get_adapter(aid: str):
        files = files_of(known(aid))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, path in sorted(files.items()):
                zf.write(path, arcname=name)
            zf.write(service.store.path(aid) / "dnd_serve.json", arcname="dnd_serve.json")
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{aid}.zip"'})

    @app.get("/v1/adapters/{aid}/manifest")
    async def get_manifest(aid: str):
        return _public(service.store.manifest(known(aid)))

    @app.get("/v1/adapters/{aid}/files/{name}")
    async def get_file(aid: str, name: str):
        files = files_of(known(aid))
        if name not in files:
            raise ApiError(404, f"adapter {aid} has no file '{name[:64]}' (files: {sorted(files)})")
        return FileResponse(files[name])

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = completion_request(await body_of(request), limits)
        if req.adapter_id is not None:
            known(req.adapter_id)
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(torch_executor, service.complete, req.adapter_id, req.prompt,
                                          req.max_new_tokens)
        return {"adapter_id": req.adapter_id, "text": text}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "generator": {"workdir": str(service.gen.workdir), "step": int(service.gen.step),
                                              "fingerprint": service.fingerprint},
                "queue_depth": batcher.pending, "stored_adapters": len(service.store.ids())}

    @app.get("/metrics")
    async def get_metrics():
        return metrics.snapshot(queue_depth=batcher.pending)

    return app


def _public(manifest: dict) -> dict:
    aid = manifest["id"]
    return dict(manifest, url=f"/v1/adapters/{aid}", manifest_url=f"/v1/adapters/{aid}/manifest")
