"""A bounded load drill for `diffuse serve`: bursts of concurrent submissions on 127.0.0.1.

    python benchmarks/serve_load.py                    # 3 rounds of 50 submissions, a tiny digits model
    python benchmarks/serve_load.py --run runs/digits-50 --rounds 1

What is measured
----------------
A service of --workers worker threads and a queue of --queue jobs serves one model: a tiny
class-conditional digits U-Net trained here for a few steps (or --run). Each round, --clients
threads wait at a barrier and then each POST one job at once (n images, --steps Euler steps). Every
answer is counted: 202 accepted, 429 queue full, 503 shutting down, anything else an error. Every
accepted job is then polled until it finishes: "lost" counts accepted jobs that never reach done
(a failed, cancelled or vanished id, or one still unfinished after --timeout seconds).

Memory: the process's resident set is sampled every 10 ms during the rounds; the peak of each
round beside the RSS before the first shows whether it grows with the number of jobs served (it
should not: finished jobs are kept in an LRU of --keep). Only 127.0.0.1 traffic, bounded in count
(rounds x clients requests, plus polling) and in time (--timeout a round).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from budget import set_threads  # first: it sets OpenMP's wait policy

import diffuse
from diffuse.data import DataConfig
from diffuse.serve.app import Service
from diffuse.serve.jobs import JobQueue
from diffuse.training import Engine, RunConfig, task_class

TINY_UNET = {"kind": "unet", "in_channels": 1, "channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1,
             "attention_levels": [], "num_classes": 10}


def rss_mib() -> float:
    """The resident set size now, from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def tiny_run(folder: Path) -> Path:
    config = RunConfig(task_class("diffusion").Config(), DataConfig(), None).updated(
        data="digits", cond="class", network=TINY_UNET, batch_size=16, steps=4, checkpoint_every=4,
        grid_size=4, sample_steps=2, warmup_steps=1)
    Engine(config, folder, progress=False).fit()
    return folder


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/api/jobs", json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def state(url: str, job_id: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/api/jobs/{job_id}", timeout=30) as answer:
            return json.loads(answer.read())["state"]
    except urllib.error.HTTPError as e:
        return f"http {e.code}"


def one_round(url: str, clients: int, body: dict, timeout: float) -> dict:
    barrier, answers = threading.Barrier(clients), [None] * clients

    def client(k: int) -> None:
        barrier.wait()
        answers[k] = post(url, {**body, "seed": k, "labels": [k % 10]})

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = Counter(status for status, _ in answers)
    accepted = [answer["id"] for status, answer in answers if status == 202]
    final, deadline = {}, time.monotonic() + timeout
    while len(final) < len(accepted) and time.monotonic() < deadline:
        for job_id in accepted:
            if job_id not in final:
                s = state(url, job_id)
                if s not in ("queued", "running"):
                    final[job_id] = s
        time.sleep(0.02)
    done = sum(s == "done" for s in final.values())
    return {"submitted": clients, "accepted": codes[202], "refused_429": codes[429], "refused_503": codes[503],
            "other": clients - codes[202] - codes[429] - codes[503], "done": done, "lost": len(accepted) - done,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="a class-conditional run to serve (default: a tiny one trained here)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=16)
    parser.add_argument("--keep", type=int, default=64)
    parser.add_argument("--n", type=int, default=4, help="images a job")
    parser.add_argument("--steps", type=int, default=4, help="Euler steps a job")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a round may take to drain")
    args = parser.parse_args()
    if not (1 <= args.clients <= 200 and 1 <= args.rounds <= 10):
        parser.error("the drill is bounded: 1..200 clients, 1..10 rounds")

    set_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or tiny_run(Path(scratch) / "tiny")
        pipeline = diffuse.load(run)
        queue = JobQueue({"tiny": pipeline}, workers=args.workers, queue=args.queue, keep=args.keep)
        service = Service(queue).start()
        peak, sampling = [rss_mib()], True
        before = peak[0]

        def watch():
            while sampling:
                peak[-1] = max(peak[-1], rss_mib())
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        body = {"model": "tiny", "n": args.n, "steps": args.steps, "sampler": "euler"}
        rows = []
        try:
            for _ in range(args.rounds):
                peak.append(rss_mib())
                rows.append(one_round(service.url, args.clients, body, args.timeout))
                rows[-1]["peak_rss_mib"] = peak[-1]
        finally:
            sampling = False
            watcher.join()
            service.stop()

    print(f"serve load drill: {args.clients} concurrent submissions a round, {args.workers} workers, a queue of "
          f"{args.queue}, jobs of n={args.n}, {args.steps} Euler steps, {pipeline.shape} images; "
          f"RSS before: {before:.0f} MiB")
    columns = ["round", "submitted", "accepted", "refused_429", "refused_503", "other", "done", "lost",
               "seconds", "peak_rss_mib"]
    print(" | ".join(columns))
    for k, row in enumerate(rows, 1):
        print(" | ".join([str(k)] + [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c])
                                     for c in columns[1:]]))
    problems = [k for k, row in enumerate(rows, 1) if row["lost"] or row["other"]]
    print("all accepted jobs done, every refusal a 429/503" if not problems else f"PROBLEMS in rounds {problems}")


if __name__ == "__main__":
    main()
