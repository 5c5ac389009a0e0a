"""`diffuse serve` over real HTTP on 127.0.0.1: models, jobs to done with their pictures, progress,
cancel between steps, concurrent jobs, limits, bad requests, and binding to this machine only.

Tiny runs trained here (a text model on the shapes captions, a class model on digits) are served
in a thread on an ephemeral port. Where a test must catch a job mid-run, its model is a `Gate`: each
model evaluation waits for a permit the test hands out, so "running", "two at once" and "stopped
after k evaluations" are states the test sets, not races it hopes to win.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from PIL import Image

pytest.importorskip("starlette", reason="the web service needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="the web service needs the serve extra (starlette, uvicorn)")

import diffuse  # noqa: E402
from _tiny import PYTHON, digits_config, subprocess_env  # noqa: E402
from test_text import shapes_config  # noqa: E402
from diffuse.data import load_dataset  # noqa: E402
from diffuse.pipeline import Pipeline  # noqa: E402
from diffuse.plotting import grid_picture  # noqa: E402
from diffuse.serve.app import Service  # noqa: E402
from diffuse.serve.jobs import JobQueue, Limits  # noqa: E402
from diffuse.training import Engine  # noqa: E402

WAIT = 60.0  # seconds before a wait gives up: a hang fails the test instead of stalling the suite


# -- tiny runs and the service ------------------------------------------------------------------------

def train_text_run(folder):
    """A tiny text-conditional U-Net on the shapes captions, two training steps."""
    Engine(shapes_config(), folder, dataset=load_dataset("shapes", "train", n=64), progress=False).fit()
    return folder


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return train_text_run(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    Engine(digits_config("class"), folder, progress=False).fit()
    return folder


class Gate:
    """A model whose every evaluation waits for a permit (`let(k)` hands out k)."""

    def __init__(self, model):
        self.model, self.process, self.prediction = model, model.process, model.prediction
        self.permits = threading.Semaphore(0)

    def __call__(self, x, t, **cond):
        if not self.permits.acquire(timeout=WAIT):
            raise TimeoutError("the test never let this evaluation run")
        return self.model(x, t, **cond)

    def let(self, k: int) -> None:
        for _ in range(k):
            self.permits.release()


def gated(pipeline: Pipeline) -> Pipeline:
    p = pipeline
    return Pipeline(Gate(p.model), p.info, p.conditions, sampler=p.sampler, steps=p.steps, schedule=p.schedule,
                    tokenizer=p.tokenizer)


@pytest.fixture
def serve():
    """serve(models, **queue options) -> a started Service on 127.0.0.1; stopped after the test."""
    started = []

    def start(models, **options):
        service = Service(JobQueue(models, **options)).start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def models(text_run, class_run):
    return {"shapes": diffuse.load(text_run), "digits": diffuse.load(class_run)}


# -- HTTP ---------------------------------------------------------------------------------------------

def call(service, method: str, path: str, body=None, raw: bytes | None = None) -> tuple[int, dict | bytes]:
    """(status, the JSON answer or the bytes of a picture); 4xx and 5xx answers are returned, not raised."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(service.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            status, kind, payload = response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as e:
        status, kind, payload = e.code, e.headers.get("Content-Type", ""), e.read()
    return status, json.loads(payload) if "json" in kind else payload


def wait_for(service, job_id: str, predicate) -> dict:
    """Poll a job until predicate(status) holds."""
    deadline = time.monotonic() + WAIT
    while True:
        status, answer = call(service, "GET", f"/api/jobs/{job_id}")
        assert status == 200, answer
        if predicate(answer):
            return answer
        assert time.monotonic() < deadline, f"job never reached the wanted state: {answer}"
        time.sleep(0.01)


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def grid_size(n: int, shape, labels=None) -> tuple[int, int]:
    """(width, height) of the grid of n images of `shape`, as `diffuse sample` lays it out."""
    return grid_picture(torch.zeros(n, *shape), labels).size


# -- the tests ----------------------------------------------------------------------------------------

def test_the_models_say_what_they_take(serve, models):
    service = serve(models)
    status, answer = call(service, "GET", "/api/models")
    assert status == 200
    described = {m["name"]: m for m in answer["models"]}
    assert described["shapes"]["conditioning"] == "text" and described["shapes"]["shape"] == [3, 32, 32]
    assert described["digits"]["conditioning"] == "class" and described["digits"]["num_classes"] == 10
    assert "heun" in described["digits"]["samplers"] and answer["limits"]["max_n"] == Limits().max_n
    status, page = call(service, "GET", "/")
    assert status == 200 and b"/api/jobs" in page


def test_a_prompt_job_runs_to_a_grid_of_the_right_size_and_its_images(serve, models):
    service = serve(models)
    status, job = call(service, "POST", "/api/jobs", {"model": "shapes", "prompt": "a red circle", "n": 3,
                                                      "steps": 3, "seed": 5, "sampler": "euler"})
    assert status == 202 and job["state"] in ("queued", "running") and job["total"] == 3
    done = wait_for(service, job["id"], lambda s: s["state"] in ("done", "failed"))
    assert done["state"] == "done" and done["step"] == done["total"] == 3, done
    status, grid = call(service, "GET", f"/api/jobs/{job['id']}/grid.png")
    assert status == 200 and picture(grid).size == grid_size(3, (3, 32, 32))
    status, one = call(service, "GET", f"/api/jobs/{job['id']}/images/2.png")
    assert status == 200 and picture(one).size == (32, 32) and picture(one).mode == "RGB"
    # the same request is the same images: a job is a function of its seed
    expected = models["shapes"].sample(3, prompt="a red circle", steps=3, seed=5, sampler="euler")
    pixels = torch.tensor(list(picture(one).tobytes()), dtype=torch.float32).reshape(32, 32, 3).permute(2, 0, 1)
    assert (pixels - ((expected[2] + 1) / 2 * 255).round()).abs().max() <= 1
    assert call(service, "GET", f"/api/jobs/{job['id']}/images/3.png")[0] == 404


def test_a_class_job_draws_a_class_grid(serve, models):
    service = serve(models)
    status, job = call(service, "POST", "/api/jobs", {"model": "digits", "labels": [3, 7], "n": 4, "steps": 2})
    assert status == 202, job
    assert wait_for(service, job["id"], lambda s: s["state"] in ("done", "failed"))["state"] == "done"
    assert picture(call(service, "GET", f"/api/jobs/{job['id']}/grid.png")[1]).size == \
        grid_size(4, (1, 8, 8), [3, 7, 3, 7])


def test_progress_streams_every_step_with_a_live_preview(serve, models):
    gate = gated(models["digits"])
    service = serve({"gated": gate})
    status, job = call(service, "POST", "/api/jobs", {"labels": 1, "n": 2, "steps": 4, "sampler": "euler"})
    assert status == 202
    assert call(service, "GET", f"/api/jobs/{job['id']}/preview.png")[0] == 404  # nothing denoised yet
    events = []

    def listen():
        with urllib.request.urlopen(f"{service.url}/api/jobs/{job['id']}/events", timeout=WAIT) as stream:
            for line in stream:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))

    listener = threading.Thread(target=listen)
    listener.start()
    for k in range(1, 5):  # one evaluation at a time, each seen by the stream before the next
        gate.model.let(1)
        deadline = time.monotonic() + WAIT
        while not any(e["evaluations"] == k for e in events):
            assert time.monotonic() < deadline, f"the stream never reported evaluation {k}: {events}"
            time.sleep(0.01)
        if k == 2:
            status, preview = call(service, "GET", f"/api/jobs/{job['id']}/preview.png")
            assert status == 200 and picture(preview).size == grid_size(2, (1, 8, 8), [1, 1])
    listener.join(WAIT)
    steps = [e["step"] for e in events]
    assert steps == sorted(steps) and {1, 2, 3, 4} <= set(steps)  # the last may come with "done"
    assert {1, 2, 3, 4} <= {e["evaluations"] for e in events}
    assert events[-1]["state"] == "done" and events[-1]["step"] == 4


def test_cancel_stops_a_running_job_between_steps(serve, models):
    gate = gated(models["digits"])
    service = serve({"gated": gate})
    job = call(service, "POST", "/api/jobs", {"n": 2, "steps": 50, "sampler": "euler"})[1]
    gate.model.let(2)
    wait_for(service, job["id"], lambda s: s["evaluations"] == 2)
    status, answer = call(service, "DELETE", f"/api/jobs/{job['id']}")
    assert status == 200 and answer["state"] == "running"  # it stops at its next evaluation
    gate.model.let(48)  # the third evaluation runs, and the job ends before any other
    cancelled = wait_for(service, job["id"], lambda s: s["state"] != "running")
    assert cancelled["state"] == "cancelled" and cancelled["evaluations"] == 2 and cancelled["step"] == 2
    assert call(service, "GET", f"/api/jobs/{job['id']}/grid.png")[0] == 409
    # the worker goes on with the next job
    gate.model.let(2)
    after = call(service, "POST", "/api/jobs", {"n": 1, "steps": 2, "sampler": "euler"})[1]
    assert wait_for(service, after["id"], lambda s: s["state"] in ("done", "failed"))["state"] == "done"


def test_two_workers_run_two_jobs_at_once_and_a_full_queue_answers_429(serve, models):
    gate = gated(models["digits"])
    service = serve({"gated": gate}, workers=2, queue=2)
    first, second = (call(service, "POST", "/api/jobs", {"n": 1, "steps": 1, "sampler": "euler"})[1]
                     for _ in range(2))
    for job in (first, second):
        wait_for(service, job["id"], lambda s: s["state"] == "running")  # both at once, neither finished
    queued = [call(service, "POST", "/api/jobs", {"n": 1, "steps": 1, "sampler": "euler"}) for _ in range(3)]
    assert [status for status, _ in queued] == [202, 202, 429]
    assert [answer["position"] for _, answer in queued[:2]] == [0, 1] and "queue is full" in queued[2][1]["error"]
    assert call(service, "DELETE", f"/api/jobs/{queued[0][1]['id']}")[1]["state"] == "cancelled"  # queued: at once
    assert call(service, "GET", f"/api/jobs/{queued[1][1]['id']}")[1]["position"] == 0
    gate.model.let(3)
    for job in (first, second, queued[1][1]):
        assert wait_for(service, job["id"], lambda s: s["state"] in ("done", "failed"))["state"] == "done"


@pytest.mark.parametrize("body, status, message", [
    ({"model": "digits", "n": 65}, 400, "n must lie in 1..64"),
    ({"model": "digits", "steps": 201}, 400, "steps must lie in 1..200"),
    ({"model": "digits", "n": "4"}, 400, "n must be an integer"),
    ({"model": "digits", "labels": [10]}, 400, "labels must lie in 0..9"),
    ({"model": "digits", "prompt": "a red circle"}, 400, "not trained on text"),
    ({"model": "shapes", "labels": [1]}, 400, "not class-conditional"),
    ({"model": "shapes", "prompt": "x" * 501}, 400, "at most 500 characters"),
    ({"model": "digits", "guidance": 2.0}, 400, "guidance needs labels or a prompt"),
    ({"model": "digits", "sampler": "magic"}, 400, "unknown sampler 'magic'"),
    ({"model": "digits", "size": 64}, 400, "unknown field(s) size"),
    ({"model": "imagenet"}, 404, "no model 'imagenet'"),
    ({"n": 1}, 400, "say which model"),
    ([1, 2], 400, "a JSON object"),
])
def test_bad_requests_get_a_4xx_that_says_why(serve, models, body, status, message):
    service = serve(models)
    got, answer = call(service, "POST", "/api/jobs", body)
    assert got == status and message in answer["error"], answer


def test_malformed_json_oversized_bodies_and_unknown_ids_are_refused(serve, models):
    service = serve(models)
    status, answer = call(service, "POST", "/api/jobs", raw=b'{"model": "digits", ')
    assert status == 400 and "not valid JSON" in answer["error"]
    status, answer = call(service, "POST", "/api/jobs", raw=b'{"prompt": "' + b"a" * Limits().max_body + b'"}')
    assert status == 413 and "a request may have" in answer["error"]
    for method, path in [("GET", "/api/jobs/nope"), ("DELETE", "/api/jobs/nope"), ("GET", "/api/jobs/nope/grid.png"),
                         ("GET", "/api/nothing")]:
        status, answer = call(service, method, path)
        assert status == 404 and answer["error"], (method, path)


def test_image_size_is_bounded_through_n_times_pixels(serve, models):
    service = serve(models, limits=Limits(max_pixels=3 * 32 * 32))
    assert call(service, "POST", "/api/jobs", {"model": "shapes", "n": 4, "steps": 1})[0] == 400
    assert "pixels" in call(service, "POST", "/api/jobs", {"model": "shapes", "n": 4, "steps": 1})[1]["error"]


def test_finished_jobs_are_kept_in_a_bounded_lru(serve, models):
    service = serve(models, keep=2)
    ids = []
    for _ in range(3):
        job = call(service, "POST", "/api/jobs", {"model": "digits", "n": 1, "steps": 1, "sampler": "euler"})[1]
        wait_for(service, job["id"], lambda s: s["state"] == "done")
        ids.append(job["id"])
    assert call(service, "GET", f"/api/jobs/{ids[0]}")[0] == 404
    assert [call(service, "GET", f"/api/jobs/{i}")[0] for i in ids[1:]] == [200, 200]
    assert call(service, "GET", "/api/models")[1]["queue"]["finished"] == 2


def test_the_service_binds_this_machine_only_by_default(models):
    from diffuse.cli import build_parser

    service = Service(JobQueue(models))
    try:
        assert service.host == "127.0.0.1"
    finally:
        service.queue.close()
        service.socket.close()
    args = build_parser(["serve", "runs/x"]).parse_args(["serve", "runs/x"])
    assert args.host == "127.0.0.1" and args.workers == 1


def test_the_command_serves_named_runs_on_127_0_0_1(class_run):
    command = [PYTHON, "-m", "diffuse", "serve", f"mnist={class_run}", "--port", "0", "--workers", "2"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=subprocess_env())
    try:
        first = server.stdout.readline()
        assert first.startswith("serving mnist on http://127.0.0.1:") and "2 worker(s)" in first, first
        url = first.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "/api/models", timeout=WAIT) as answer:
            assert [m["name"] for m in json.loads(answer.read())["models"]] == ["mnist"]
    finally:
        server.terminate()
        server.wait(WAIT)


def test_a_missing_extra_is_named_and_the_package_never_imports_the_web_stack():
    code = ("import sys; import diffuse, diffuse.cli, diffuse.serve.jobs; diffuse.cli.build_parser(['serve']);"
            "assert 'starlette' not in sys.modules and 'uvicorn' not in sys.modules;"
            "sys.modules['starlette'] = None\n"
            "try:\n    import diffuse.serve.app\nexcept ImportError as e:\n    print(e)")
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "needs the `serve` extra" in done.stdout and "diffuse-paths[serve]" in done.stdout


def test_a_burst_of_concurrent_submissions_is_all_done_or_refused_with_429(serve, models):
    """The load drill in small (benchmarks/serve_load.py runs the 50-client version): none lost."""
    service = serve({"digits": models["digits"]}, workers=2, queue=4)
    clients = 16
    barrier, answers = threading.Barrier(clients), [None] * clients

    def client(k: int) -> None:
        barrier.wait()
        answers[k] = call(service, "POST", "/api/jobs", {"n": 2, "steps": 2, "sampler": "euler", "labels": [k % 10]})

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {202, 429} and 202 in statuses, statuses
    accepted = [answer["id"] for status, answer in answers if status == 202]
    assert len(accepted) == len(set(accepted))
    for job_id in accepted:
        assert wait_for(service, job_id, lambda s: s["state"] not in ("queued", "running"))["state"] == "done"


def test_a_closing_queue_refuses_with_503_and_cancels_what_waits(models):
    from diffuse.serve.jobs import Busy

    gate = gated(models["digits"])
    queue = JobQueue({"gated": gate}, workers=1, queue=4)
    running, _ = queue.submit({"n": 1, "steps": 3, "sampler": "euler"})
    waiting, position = queue.submit({"n": 1, "steps": 3, "sampler": "euler"})
    assert position in (0, 1)
    gate.model.let(1)
    deadline = time.monotonic() + WAIT
    while running.evaluations < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    closer = threading.Thread(target=queue.close)
    closer.start()
    while waiting.state != "cancelled":  # close has cancelled the queue and flagged the running job
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate.model.let(1)  # the running job's next evaluation, after which it sees the cancel
    closer.join(WAIT)
    assert (running.state, waiting.state) == ("cancelled", "cancelled")
    with pytest.raises(Busy, match="shutting down") as refused:
        queue.submit({"n": 1})
    assert refused.value.status == 503
