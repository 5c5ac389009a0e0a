"""Distributed training: two CPU processes under the torch launcher (gloo), through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap

import pytest
import torch

import diffuse
from _tiny import MLP, PYTHON, free_port, subprocess_env
from diffuse.checkpoint import latest_checkpoint, load_json

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

TRAIN = ["train", "--data", "ring", "--network", json.dumps(MLP), "--steps", "4", "--batch-size", "8",
         "--checkpoint-every", "2", "--sample-steps", "2", "--device", "cpu", "--quiet"]


def launch(*command: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=2 COMMAND`, killed as a group on timeout."""
    argv = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
            *command]
    child = subprocess.Popen(argv, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
        pytest.fail(f"the distributed run did not finish in {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(argv, child.returncode, out, err)


def test_two_processes_train_through_python_dash_m_diffuse(tmp_path):
    run = tmp_path / "run"
    result = launch("-m", "diffuse", *TRAIN, "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("trained 4 steps") == 1  # only rank 0 reports

    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002", "step-00000004"]
    meta = load_json(latest_checkpoint(run) / "trainer.json")
    assert meta["step"] == 4 and meta["world_size"] == 2
    pipeline = diffuse.load(run)
    assert pipeline.config.train.batch_size == 8  # the global batch, split 4 + 4
    assert all(torch.isfinite(v).all() for v in pipeline.model.state_dict().values())
    # one writer: one line per logging step, not one per rank
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4]


# Runs the same CLI command in each rank, keeping hold of the trainer to inspect it afterwards. The
# probe starts the process group itself, so the trainer leaves it open for the gathering below.
PROBE = textwrap.dedent("""
    import gc, json, sys
    import torch
    import torch.distributed as dist
    from diffuse import cli
    from diffuse.training import Engine

    report, argv = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    seen = {}
    fit = Engine.fit

    def probing_fit(self):
        seen["trainer"] = self
        seen["batch"] = self.batch_at(0)["x"]  # this rank's slice of step 0
        seen["start"] = torch.cat([p.detach().flatten() for p in self.model.parameters()])
        return fit(self)

    Engine.fit = probing_fit
    code = cli.main(argv)
    trainer = seen["trainer"]

    def gather(x):
        parts = [torch.zeros_like(x) for _ in range(trainer.world)]
        dist.all_gather(parts, x.contiguous())
        return [p.tolist() for p in parts]

    end = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    ema = torch.cat([p.detach().flatten() for p in trainer.ema.parameters()])
    result = {"code": code, "world": trainer.world, "rank": trainer.rank,
              "batches": gather(seen["batch"]), "start": gather(seen["start"]),
              "end": gather(end), "ema": gather(ema)}
    if trainer.rank == 0:
        with open(report, "w") as f:
            json.dump(result, f)
    assert not trainer.owns_process_group and trainer.train_model is trainer.model
    dist.barrier()
    del trainer, seen
    gc.collect()
    dist.destroy_process_group()
""")


def test_ranks_see_different_data_and_keep_identical_weights(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    report, run = tmp_path / "report.json", tmp_path / "run"
    result = launch(str(probe), str(report), *TRAIN, "--out", str(run))
    assert result.returncode == 0, result.stderr
    seen = json.loads(report.read_text())
    assert seen["code"] == 0 and seen["world"] == 2

    first, second = (torch.tensor(b) for b in seen["batches"])
    assert first.shape == second.shape == (4, 2)  # each rank holds half of the global batch
    assert not any(torch.equal(a, b) for a in first for b in second)  # and not the same examples

    start, end, ema = ([torch.tensor(x) for x in seen[k]] for k in ("start", "end", "ema"))
    assert torch.equal(start[0], start[1])  # the same initial weights everywhere
    assert torch.equal(end[0], end[1]) and torch.equal(ema[0], ema[1])  # gradients were averaged
    assert not torch.equal(start[0], end[0])
    # rank 0's checkpoint is those weights
    raw = diffuse.load(run, ema=False).model
    assert torch.equal(torch.cat([p.flatten() for p in raw.parameters()]), end[0])


def test_the_trainer_destroys_the_process_group_it_started(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import sys
        import torch.distributed as dist
        from diffuse import cli

        assert not dist.is_initialized()
        assert cli.main(sys.argv[1:]) == 0
        assert not dist.is_initialized()
    """))
    result = launch(str(probe), *TRAIN, "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
