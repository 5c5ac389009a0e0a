"""`diffuse serve`: sample trained runs over HTTP, with a page to drive it.

    diffuse serve RUN [RUN ...] [--port 8000] [--host 127.0.0.1] [--workers K] [--queue Q]

Each RUN is served under its folder's name (`name=RUN` to choose one). Jobs wait in a queue of Q
(a full queue answers 429) and K worker threads sample them, torch's threads split between them.
The service binds 127.0.0.1 unless told otherwise: it has no authentication, so exposing it is a
decision to make explicitly (`--host 0.0.0.0`). The API: docs/serve.md; it needs the `serve` extra.
"""

from __future__ import annotations

from pathlib import Path


def add_parser(commands) -> None:
    from .cli_args import number

    serve = commands.add_parser("serve", help="a web service and page to sample runs (needs the serve extra)")
    serve.add_argument("runs", nargs="+", metavar="RUN", help="run folders to serve, each as RUN or NAME=RUN")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=number(int, 0), default=8000, help="port (default: 8000; 0 picks a free one)")
    serve.add_argument("--workers", type=number(int, 1), default=1, help="jobs sampled at once (default: 1)")
    serve.add_argument("--queue", type=number(int, 1), default=16, help="jobs that may wait (default: 16)")
    serve.add_argument("--keep", type=number(int, 1), default=64, help="finished jobs remembered (default: 64)")
    serve.add_argument("--max-n", dest="max_n", type=number(int, 1), default=64, help="images a job (default: 64)")
    serve.add_argument("--max-steps", dest="max_steps", type=number(int, 1), default=200,
                       help="sampler steps a job (default: 200)")
    serve.add_argument("--device", help="cpu | cuda | cuda:N (default: cpu)")
    serve.set_defaults(handler=run)


def named_runs(runs: list[str]) -> dict[str, str]:
    """{name: run folder} from RUN or NAME=RUN arguments; names must differ."""
    named = {}
    for text in runs:
        name, equals, path = text.partition("=")
        name, path = (name, path) if equals else (Path(text.rstrip("/")).name or text, text)
        if name in named:
            raise ValueError(f"two runs are named {name!r}; name them: NAME=RUN")
        named[name] = path
    return named


def run(args, given: dict) -> int:
    import torch

    from .runs import load
    from .serve.jobs import JobQueue, Limits, thread_share
    from .serve.app import Service  # the clear error naming the extra comes before any model loads

    torch.set_num_threads(thread_share(args.workers))
    models = {name: load(path, device=args.device or "cpu") for name, path in named_runs(args.runs).items()}
    queue = JobQueue(models, workers=args.workers, queue=args.queue, keep=args.keep,
                     limits=Limits(max_n=args.max_n, max_steps=args.max_steps))
    service = Service(queue, args.host, args.port, log_level="info")
    print(f"serving {', '.join(models)} on {service.url} ({args.workers} worker(s), "
          f"{torch.get_num_threads()} torch thread(s), a queue of {args.queue})", flush=True)
    service.run()
    return 0
