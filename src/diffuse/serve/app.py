"""The HTTP API over a JobQueue, and the one page that uses it (`page.html`, shipped with the package).

    GET    /                              the page
    GET    /api/models                    the models and what each takes (labels, a prompt, nothing)
    POST   /api/jobs                      {model, n, labels | prompt, sampler, steps, guidance, seed}
                                          -> 202 {id, position, ...}; 400/404/413 bad request, 429 queue full
    GET    /api/jobs/{id}                 state, queue position, step / total, ...
    GET    /api/jobs/{id}/events          server-sent events: the job's status on every change, to the end
    GET    /api/jobs/{id}/preview.png     the latest denoised estimate (the grid once done)
    GET    /api/jobs/{id}/grid.png        the finished grid; /api/jobs/{id}/images/{k}.png one image
    DELETE /api/jobs/{id}                 cancel: a queued job at once, a running one between steps

Starlette (routing, requests, streaming) on uvicorn (the server): small, maintained, typed, and
the two the `serve` extra installs; the rest of the package never imports them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from importlib import resources

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"the web service needs the `serve` extra ({e.name} is missing): "
                      "pip install 'diffuse-paths[serve]'") from None

from .jobs import FINISHED, Busy, JobQueue, RequestError

# A stream says something at least this often, so proxies and browsers keep an idle job's stream open.
KEEPALIVE_SECONDS = 15.0
# How often a stream looks for news: the step rate of a small model is far slower.
STREAM_POLL_SECONDS = 0.05


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _json_body(request: Request, limit: int):
    """The request's JSON, read no further than `limit` bytes (413 past it, 400 if not JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body is {declared} bytes; a request may have {limit}", status=413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"the body is over {limit} bytes", status=413)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"the body is not valid JSON: {e}") from None


def create_app(queue: JobQueue) -> Starlette:
    async def page(request: Request):
        return HTMLResponse(resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    async def models(request: Request):
        from .jobs import describe
        return JSONResponse({"models": [describe(name, p) for name, p in queue.models.items()],
                             "limits": vars(queue.limits), "queue": queue.counts()})

    async def submit(request: Request):
        body = await _json_body(request, queue.limits.max_body)
        job, position = queue.submit(body)
        return JSONResponse(job.summary(position), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})

    def status(request: Request):
        return JSONResponse(queue.status(request.path_params["id"]))

    def cancel(request: Request):
        return JSONResponse(queue.cancel(request.path_params["id"]))

    async def events(request: Request):
        job = queue.get(request.path_params["id"])

        async def stream():
            sent, quiet = -1, 0.0
            while True:
                if job.version != sent:
                    sent = job.version
                    summary = job.summary(queue.position(job))
                    yield f"event: status\ndata: {json.dumps(summary)}\n\n"
                    quiet = 0.0
                    if summary["state"] in FINISHED:
                        return
                elif quiet >= KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                await asyncio.sleep(STREAM_POLL_SECONDS)
                quiet += STREAM_POLL_SECONDS

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def picture(data: bytes, name: str | None = None) -> Response:
        headers = {"Cache-Control": "no-store"}
        if name:
            headers["Content-Disposition"] = f'inline; filename="{name}"'
        return Response(data, media_type="image/png", headers=headers)

    def preview(request: Request):
        return picture(queue.preview(request.path_params["id"]))

    def grid(request: Request):
        job_id = request.path_params["id"]
        return picture(queue.grid(job_id), f"diffuse-{job_id}.png")

    def image(request: Request):
        job_id, index = request.path_params["id"], request.path_params["index"]
        return picture(queue.image(job_id, index), f"diffuse-{job_id}-{index}.png")

    async def request_error(request: Request, e: RequestError):
        return _error(e.status, str(e))

    async def busy(request: Request, e: Busy):
        return _error(e.status, str(e), {"Retry-After": "1"})

    async def http_error(request: Request, e: HTTPException):
        return _error(e.status_code, e.detail if e.status_code != 404 else f"no such address: {request.url.path}")

    routes = [Route("/", page), Route("/api/models", models),
              Route("/api/jobs", submit, methods=["POST"]),
              Route("/api/jobs/{id}", status, methods=["GET"]), Route("/api/jobs/{id}", cancel, methods=["DELETE"]),
              Route("/api/jobs/{id}/events", events), Route("/api/jobs/{id}/preview.png", preview),
              Route("/api/jobs/{id}/grid.png", grid), Route("/api/jobs/{id}/images/{index:int}.png", image)]
    return Starlette(routes=routes, exception_handlers={RequestError: request_error, Busy: busy,
                                                        HTTPException: http_error})


class Service:
    """The app on uvicorn, bound at construction (port 0: a free one, then read `.port`); serve in the
    foreground with `run()`, or in a thread with `start()` ... `stop()` (tests, the load drill)."""

    def __init__(self, queue: JobQueue, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.queue = queue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.listen(2048)  # from now on a connection waits in the backlog until uvicorn serves it
        self.host, self.port = self.socket.getsockname()[:2]
        config = uvicorn.Config(create_app(queue), log_level=log_level, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.queue.close()

    def start(self, timeout: float = 10.0) -> "Service":
        self._thread = threading.Thread(target=self.run, name="diffuse-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start on {self.url} within {timeout:g} s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.queue.close()
        self.socket.close()
