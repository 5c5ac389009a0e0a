"""Sampling jobs for the web service: a request checked against its model and the limits, a bounded
queue, a pool of worker threads, per-step progress, cancellation between steps, and finished jobs
kept in a bounded LRU, so memory stays bounded however many jobs are submitted.

This module knows nothing of HTTP (the app translates its errors into status codes), so the queue
is tested, and usable, without a web stack. The shape follows the job APIs of diffusion front ends:
a job id, a queue position, per-step progress, cancel, results by id.

Workers are threads of one process sharing each model: a sampler keeps no state between calls
and a Pipeline's `sample` is a pure function of its arguments, so concurrent jobs on one model are
safe. Torch's intra-op threads are one setting for the whole process; `thread_share` divides the
cores between the workers, since K workers each asking for every core only contend.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import torch

from ..pipeline import Pipeline
from ..samplers import available

STATES = ("queued", "running", "done", "cancelled", "failed")
FINISHED = ("done", "cancelled", "failed")


class RequestError(ValueError):
    """A request that can never succeed as written (HTTP 400), or names what does not exist (404)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Busy(RuntimeError):
    """The queue is full (HTTP 429: try again later) or the service is shutting down (503)."""

    def __init__(self, message: str, status: int = 429):
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """Raised from the sampler's callback between two model evaluations to stop a cancelled job."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the model fixes the image size, so `max_pixels` bounds n x H x W."""
    max_n: int = 64
    max_steps: int = 200
    max_pixels: int = 64 * 64 * 64
    max_guidance: float = 50.0
    max_prompt: int = 500           # characters
    max_body: int = 16 * 1024       # bytes of a request's JSON


@dataclass(frozen=True)
class Request:
    model: str
    n: int
    labels: tuple[int, ...] | None
    prompt: str | None
    sampler: str
    steps: int
    guidance: float
    seed: int


@dataclass
class Job:
    id: str
    request: Request
    state: str = "queued"
    step: int = 0                   # the sampler step being evaluated (the last one, once done)
    evaluations: int = 0            # model calls so far: a second-order sampler makes two a step
    error: str | None = None
    unknown_words: tuple[str, ...] = ()
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    images: torch.Tensor | None = None      # [n, C, H, W] in [-1, 1] once done
    denoised: torch.Tensor | None = None    # the latest denoised estimate, for the live preview
    cancel_requested: bool = False
    version: int = 0                # bumped on every change, so a stream sends only news
    _pngs: dict = field(default_factory=dict, repr=False)

    def summary(self, position: int | None) -> dict:
        r = self.request
        return {"id": self.id, "model": r.model, "state": self.state, "position": position,
                "step": self.step, "total": r.steps, "evaluations": self.evaluations, "n": r.n,
                "sampler": r.sampler, "guidance": r.guidance, "seed": r.seed, "prompt": r.prompt,
                "labels": None if r.labels is None else list(r.labels), "error": self.error,
                "unknown_words": list(self.unknown_words), "created": self.created, "started": self.started,
                "finished": self.finished, "version": self.version}


def thread_share(workers: int, cores: int | None = None) -> int:
    """Torch threads per worker: the cores split between the workers, at least one."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def describe(name: str, pipeline: Pipeline) -> dict:
    """What the API and the page offer for a model: its conditions, image shape and defaults."""
    text = pipeline.condition("tokens") is not None or pipeline.prompt_encoder is not None
    classes = pipeline.num_classes
    names = pipeline.info.class_names
    if classes is None:
        names = None
    elif names is None or len(names) != classes:  # a run without names: the numbers
        names = [str(k) for k in range(classes)]
    return {"name": name, "shape": list(pipeline.shape), "num_classes": classes, "class_names": names, "text": text,
            "conditioning": "text" if text else "class" if pipeline.num_classes is not None else "none",
            "sampler": pipeline.sampler, "steps": pipeline.steps, "samplers": available()}


def _integer(body: dict, key: str, default, low: int, high: float) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"{key} must lie in {low}..{high:g}, got {value}")
    return value


def parse_request(body, models: dict[str, Pipeline], limits: Limits) -> Request:
    """A checked Request from a JSON body, or a RequestError saying what is wrong with it."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    known = {"model", "n", "labels", "prompt", "sampler", "steps", "guidance", "seed"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(unknown)}; a job takes {', '.join(sorted(known))}")
    name = body.get("model", next(iter(models)) if len(models) == 1 else None)
    if not isinstance(name, str):
        raise RequestError(f"say which model: one of {', '.join(models)}")
    if name not in models:
        raise RequestError(f"no model {name!r}; the service has {', '.join(models)}", status=404)
    pipeline = models[name]
    n = _integer(body, "n", 4, 1, limits.max_n)
    pixels = n * math.prod(pipeline.shape[1:])
    if pixels > limits.max_pixels:
        raise RequestError(f"n={n} images of {pipeline.shape[-2]}x{pipeline.shape[-1]} are {pixels} pixels; "
                           f"a job may have {limits.max_pixels}")
    steps = _integer(body, "steps", min(pipeline.steps, limits.max_steps), 1, limits.max_steps)
    seed = _integer(body, "seed", secrets.randbelow(2**31), 0, 2**32 - 1)  # k is seeded seed + k: leave room
    sampler = body.get("sampler", pipeline.sampler)
    if sampler not in available():
        raise RequestError(f"unknown sampler {sampler!r}; available: {', '.join(available())}")
    guidance = body.get("guidance", 0.0)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= limits.max_guidance:
        raise RequestError(f"guidance must be a number in 0..{limits.max_guidance:g}, got {guidance!r}")
    described = describe(name, pipeline)
    labels, prompt = body.get("labels"), body.get("prompt")
    if labels is not None and prompt is not None:
        raise RequestError("give labels or a prompt, not both")
    if labels is not None:
        if described["num_classes"] is None:
            raise RequestError(f"model {name!r} is not class-conditional; it takes no labels")
        labels = [labels] if isinstance(labels, int) and not isinstance(labels, bool) else labels
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in labels)):
            raise RequestError("labels must be a class number or a non-empty list of them, cycled over the images")
        classes = described["num_classes"]
        if any(not 0 <= v < classes for v in labels):
            raise RequestError(f"labels must lie in 0..{classes - 1}")
        labels = tuple(labels[k % len(labels)] for k in range(n))
    if prompt is not None:
        if not described["text"]:
            raise RequestError(f"model {name!r} was not trained on text; it takes no prompt")
        if not isinstance(prompt, str) or len(prompt) > limits.max_prompt:
            raise RequestError(f"prompt must be text of at most {limits.max_prompt} characters")
    if guidance and labels is None and prompt is None:
        raise RequestError("guidance needs labels or a prompt")
    return Request(name, n, labels, prompt, sampler, steps, float(guidance), seed)


def png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def grid_png(images: torch.Tensor, labels) -> bytes:
    """The grid `diffuse sample --out FILE.png` draws: grouped by class when there are labels."""
    from ..plotting import grid_picture

    return png(grid_picture(images, labels))


class JobQueue:
    """Jobs on a set of named pipelines: at most `queue` waiting, `workers` running, `keep` finished
    remembered (the least recently read forgotten first)."""

    def __init__(self, models: dict[str, Pipeline], *, workers: int = 1, queue: int = 16, keep: int = 64,
                 limits: Limits = Limits()):
        if not models:
            raise ValueError("serve at least one model")
        for name, pipeline in models.items():
            if pipeline.info.modality != "image":
                raise ValueError(f"model {name!r} draws {pipeline.info.modality} samples; the service draws images")
        for key, value in {"workers": workers, "queue": queue, "keep": keep}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
        self.models, self.limits, self.capacity, self.keep = dict(models), limits, queue, keep
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: dict[str, Job] = {}            # queued and running
        self._finished: OrderedDict[str, Job] = OrderedDict()
        self._closing = False
        self._ids = itertools.count(1)
        self._workers = [threading.Thread(target=self._work, name=f"diffuse-worker-{k}", daemon=True)
                         for k in range(workers)]
        for worker in self._workers:
            worker.start()

    # -- the API's operations ---------------------------------------------------------------------

    def submit(self, body) -> tuple[Job, int]:
        """(the new job, its queue position: 0 is next) or RequestError / Busy."""
        request = parse_request(body, self.models, self.limits)
        with self._lock:
            if self._closing:
                raise Busy("the service is shutting down", status=503)
            if len(self._waiting) >= self.capacity:
                raise Busy(f"the queue is full ({self.capacity} jobs waiting); try again later")
            job = Job(f"{next(self._ids)}-{secrets.token_hex(4)}", request)
            self._waiting.append(job)
            self._active[job.id] = job
            self._lock.notify_all()
            return job, len(self._waiting) - 1

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._active.get(job_id) or self._finished.get(job_id)
            if job is None:
                raise RequestError(f"no job {job_id!r} (finished jobs are kept for the last {self.keep})", status=404)
            if job.id in self._finished:
                self._finished.move_to_end(job.id)
            return job

    def position(self, job: Job) -> int | None:
        with self._lock:
            return self._waiting.index(job) if job.state == "queued" else None

    def status(self, job_id: str) -> dict:
        job = self.get(job_id)
        return job.summary(self.position(job))

    def cancel(self, job_id: str) -> dict:
        """A queued job is dropped at once; a running one stops before its next model evaluation."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                self._waiting.remove(job)
                self._finish(job, "cancelled")
            elif job.state == "running":
                job.cancel_requested = True
                job.version += 1
            self._lock.notify_all()
        return job.summary(self.position(job))

    def wait(self, job: Job, version: int, timeout: float) -> None:
        """Block until the job changes past `version`, or `timeout` seconds pass."""
        with self._lock:
            self._lock.wait_for(lambda: job.version != version, timeout)

    def counts(self) -> dict:
        with self._lock:
            running = sum(j.state == "running" for j in self._active.values())
            return {"queued": len(self._waiting), "running": running, "finished": len(self._finished),
                    "capacity": self.capacity, "workers": len(self._workers)}

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, cancel the waiting and running ones, and let the workers end."""
        with self._lock:
            self._closing = True
            while self._waiting:
                self._finish(self._waiting.popleft(), "cancelled")
            for job in self._active.values():
                job.cancel_requested = True
            self._lock.notify_all()
        for worker in self._workers:
            worker.join(timeout)

    # -- pictures ---------------------------------------------------------------------------------

    def grid(self, job_id: str) -> bytes:
        job = self._done(job_id)
        return self._cached(job, "grid", lambda: grid_png(job.images, job.request.labels))

    def image(self, job_id: str, index: int) -> bytes:
        from ..plotting import grid_picture

        job = self._done(job_id)
        if not 0 <= index < len(job.images):
            raise RequestError(f"job {job_id} has images 0..{len(job.images) - 1}, not {index}", status=404)
        return self._cached(job, f"image-{index}", lambda: png(grid_picture(job.images[index:index + 1],
                                                                                     scale=1, pad=0)))

    def preview(self, job_id: str) -> bytes:
        """The latest denoised estimate as a grid (the final images once done)."""
        job = self.get(job_id)
        if job.state == "done":
            return self.grid(job_id)
        with self._lock:
            denoised, step = job.denoised, job.evaluations
        if denoised is None:
            raise RequestError(f"job {job_id} has no preview yet (it is {job.state})", status=404)
        pipeline = self.models[job.request.model]
        if pipeline.codec is not None:  # a latent model's estimate is decoded to show it
            with torch.no_grad():
                denoised = pipeline.codec.decode(denoised)
        return self._cached(job, f"preview-{step}", lambda: grid_png(denoised.clamp(-1, 1), job.request.labels),
                            only_latest="preview-")

    def _done(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state != "done":
            raise RequestError(f"job {job_id} is {job.state}; its images exist once it is done", status=409)
        return job

    def _cached(self, job: Job, key: str, make, only_latest: str | None = None) -> bytes:
        with self._lock:
            if key in job._pngs:
                return job._pngs[key]
        data = make()
        with self._lock:
            if only_latest:
                for old in [k for k in job._pngs if k.startswith(only_latest)]:
                    del job._pngs[old]
            job._pngs[key] = data
        return data

    # -- the workers ------------------------------------------------------------------------------

    def _finish(self, job: Job, state: str, error: str | None = None) -> None:
        """Called holding the lock: a job leaves the active set for the bounded finished one."""
        job.state, job.error, job.finished = state, error, time.time()
        job.denoised = None if state == "done" else job.denoised
        job.version += 1
        self._active.pop(job.id, None)
        self._finished[job.id] = job
        while len(self._finished) > self.keep:
            self._finished.popitem(last=False)
        self._lock.notify_all()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._waiting or self._closing)
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                job.state, job.started = "running", time.time()
                job.version += 1
                self._lock.notify_all()
            try:
                images = self._run(job)
            except Cancelled:
                with self._lock:
                    self._finish(job, "cancelled")
            except Exception as e:  # a job's failure is its own: the worker goes on with the next
                with self._lock:
                    self._finish(job, "failed", f"{type(e).__name__}: {e}")
            else:
                with self._lock:
                    job.images, job.step = images, job.request.steps
                    self._finish(job, "done")

    def _run(self, job: Job) -> torch.Tensor:
        r, pipeline = job.request, self.models[job.request.model]

        def progress(info: dict) -> None:
            with self._lock:
                if job.cancel_requested:
                    raise Cancelled()
                if info["i"] is not None:
                    job.step = min(r.steps, max(job.step, info["i"] + 1))
                job.evaluations += 1
                job.denoised = info["denoised"].detach().float().cpu()
                job.version += 1
                self._lock.notify_all()

        tokens = None
        if r.prompt is not None and pipeline.prompt_encoder is None:
            tokens, unknown = pipeline.prompt_tokens(r.prompt, r.n)
            job.unknown_words = tuple(unknown)
        labels = None if r.labels is None else torch.tensor(r.labels)
        return pipeline.sample(r.n, labels=labels, tokens=tokens,
                               prompt=r.prompt if pipeline.prompt_encoder is not None else None,
                               guidance=r.guidance, sampler=r.sampler, steps=r.steps, seed=r.seed,
                               batch_size=r.n, callback=progress)
