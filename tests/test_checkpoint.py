"""Checkpoints: round trips, crash safety under kill -9, and refusing anything but safetensors."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

import diffuse
from _tiny import PYTHON, digits_config, ring_config, states_equal, subprocess_env
from diffuse.checkpoint import CheckpointError, latest_checkpoint, load_tensors, save_checkpoint
from diffuse.denoiser import Denoiser
from diffuse.training import Engine, RunConfig

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    """A finished 4-step ring run (checkpoints at steps 2 and 4) and its engine."""
    run = tmp_path_factory.mktemp("ring")
    engine = Engine(ring_config(), run, progress=False)
    engine.fit()
    return run, engine


@pytest.fixture
def run_copy(ring_run, tmp_path):
    """A private copy of the ring run, free to be damaged."""
    return Path(shutil.copytree(ring_run[0], tmp_path / "run"))


# -- round trip ------------------------------------------------------------------------------------

def test_load_returns_the_ema_and_the_raw_weights(ring_run):
    run, engine = ring_run
    assert latest_checkpoint(run).name == "step-00000004"
    pipeline = diffuse.load(run)
    model, config, data = pipeline.model, pipeline.config, pipeline.info
    assert isinstance(model, Denoiser) and not model.training
    assert states_equal(model.state_dict(), engine.ema.state_dict())
    assert not states_equal(model.state_dict(), engine.model.state_dict())  # EMA lags behind
    raw = diffuse.load(run, ema=False).model
    assert states_equal(raw.state_dict(), engine.model.state_dict())
    assert config.to_dict() == engine.config.to_dict()
    assert RunConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert (data.source["name"], data.shape, data.num_classes, data.modality) == ("ring", (2,), 8, "vector")
    assert pipeline.num_classes is None  # the data have classes; this model does not take them
    assert config.task.sigma_data == pytest.approx(float(engine.examples.data.std()), abs=1e-4)


def test_sampling_the_loaded_model_matches_the_engine(ring_run):
    run, engine = ring_run
    x = diffuse.load(run).sample(6, seed=3)
    assert x.shape == (6, 2) and torch.isfinite(x).all()
    assert torch.equal(x, engine.task.pipeline(engine.ema).sample(6, seed=3))


def test_load_accepts_a_checkpoint_folder_and_the_checkpoints_dir(ring_run):
    run, engine = ring_run
    older = run / "checkpoints" / "step-00000002"
    assert latest_checkpoint(older) == older
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step-00000004"
    model = diffuse.load(older).model
    assert not states_equal(model.state_dict(), engine.ema.state_dict())


def test_conditional_unet_round_trip(tmp_path):
    engine = Engine(digits_config(cond="class", steps=2, checkpoint_every=2), tmp_path, progress=False)
    engine.fit()
    pipeline = diffuse.load(tmp_path)
    assert states_equal(pipeline.model.state_dict(), engine.ema.state_dict())
    assert pipeline.config.task.network == engine.config.task.network and pipeline.num_classes == 10
    x = pipeline.sample(3, labels=torch.tensor([0, 4, 9]), guidance=1.5)
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    Engine(ring_config(steps=5, checkpoint_every=1, keep_checkpoints=2), tmp_path, progress=False).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000004", "step-00000005"]


# -- missing and broken pieces -----------------------------------------------------------------------

def test_missing_run_and_dangling_pointer_are_checkpoint_errors(run_copy, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        diffuse.load(tmp_path / "nowhere")
    # a dangling pointer (a kill between the renames of a same-step re-save) falls back to the
    # newest complete checkpoint; with none left it is an error
    newest = max(p.name for p in (run_copy / "checkpoints").glob("step-*"))
    (run_copy / "checkpoints" / "latest").write_text("step-00000099\n")
    assert latest_checkpoint(run_copy).name == newest
    diffuse.load(run_copy)
    for folder in (run_copy / "checkpoints").glob("step-*"):
        shutil.rmtree(folder)
    with pytest.raises(CheckpointError, match="does not exist"):
        diffuse.load(run_copy)


def test_missing_or_mismatched_weights_are_checkpoint_errors(run_copy):
    folder = latest_checkpoint(run_copy)
    (folder / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        diffuse.load(run_copy)
    (folder / "ema.safetensors").write_bytes(safetensors_bytes({"net.input.weight": torch.zeros(3, 3)}))
    with pytest.raises(CheckpointError, match="do not match"):
        diffuse.load(run_copy)


def test_broken_config_json_is_a_checkpoint_error(run_copy):
    (latest_checkpoint(run_copy) / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        diffuse.load(run_copy)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header-only"])
def test_corrupt_safetensors_is_a_checkpoint_error(run_copy, damage):
    path = latest_checkpoint(run_copy) / "ema.safetensors"
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2],
                      "garbage": bytes(range(256)) * 8,
                      "empty": b"",
                      "header-only": good[:12]}[damage])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        diffuse.load(run_copy)


@pytest.mark.parametrize("prefix", [b"\x80", b"PK"])
def test_safetensors_whose_header_length_looks_like_a_signature_loads(tmp_path, prefix):
    # The first 8 bytes are the header's length; 128 starts with 0x80 and 19280 with "PK".
    # Such files are ordinary safetensors and must not be mistaken for pickles or zips.
    target = int.from_bytes(prefix, "little")
    for n in range(max(1, target - 100), target + 100):  # the header is the name plus ~60 bytes
        blob = safetensors_bytes({"w" * n: torch.arange(3.0)})
        if blob.startswith(prefix):
            break
    else:
        pytest.fail("no header length with that prefix")
    (tmp_path / "x.safetensors").write_bytes(blob)
    assert torch.equal(load_tensors(tmp_path / "x.safetensors")["w" * n], torch.arange(3.0))


# -- pickles in disguise ---------------------------------------------------------------------------

class Payload:
    """Unpickling this creates the file `marker`: proof that the pickle was run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_the_payload_is_live(tmp_path):
    # Without this, a payload that never fires would make the refusal tests vacuous.
    marker = tmp_path / "fired"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("stem", ["ema", "model"])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_named_safetensors_is_refused_and_never_run(run_copy, tmp_path, stem, protocol):
    marker = tmp_path / "pwned"
    (latest_checkpoint(run_copy) / f"{stem}.safetensors").write_bytes(
        pickle.dumps({"net.weight": Payload(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError) as err:
        diffuse.load(run_copy, ema=stem == "ema")
    if protocol >= 2:  # protocols 0 and 1 have no signature; they fail as malformed safetensors
        assert "pickle" in str(err.value) and "never unpickles" in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_a_torch_save_file_is_refused_and_never_run(run_copy, tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = latest_checkpoint(run_copy) / "ema.safetensors"
    torch.save({"net.weight": torch.zeros(2), "x": Payload(marker)}, path,
               _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError, match="pickle or a zip archive"):
        diffuse.load(run_copy)
    assert not marker.exists()


def test_resume_refuses_a_disguised_trainer_state(run_copy, tmp_path):
    marker = tmp_path / "pwned"
    (latest_checkpoint(run_copy) / "trainer.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="pickle"):
        Engine(ring_config(steps=6), run_copy, resume=True, progress=False)
    assert not marker.exists()


# -- kill -9 in the middle of a save -------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from _tiny import ring_config
    from diffuse import checkpoint
    from diffuse.training import Engine

    run, marker, where = sys.argv[1:4]
    trainer = Engine(ring_config(steps=4), run, progress=False)
    trainer.train_step(); trainer.train_step()
    trainer.save()                                   # step 2: complete

    def stuck(real):
        def wrapper(path, *args):
            real(path, *args)
            Path(marker).write_text(str(path))       # tell the parent where we are ...
            time.sleep(3600)                         # ... and wait there for SIGKILL
        return wrapper

    if where == "tensors":   # after the first weights file of step 4, mid-folder
        checkpoint._write_tensors = stuck(checkpoint._write_tensors)
    else:                    # after the step-4 folder is in place, before `latest` moves
        checkpoint.write_text_atomic = stuck(lambda path, text: None)
    trainer.train_step(); trainer.train_step()
    trainer.save()
    print("the second save returned", flush=True)
""").format(tests=str(TESTS))


@pytest.mark.parametrize("where", ["tensors", "pointer"])
def test_kill_9_during_a_save_keeps_the_previous_checkpoint(tmp_path, where):
    run, marker = tmp_path / "run", tmp_path / "marker"
    child = subprocess.Popen([PYTHON, "-c", CHILD, str(run), str(marker), where], env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child exited early ({child.returncode}):\n{child.communicate()}")
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the second save")
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    root = run / "checkpoints"
    stale = list(root.glob(".step-00000004.*"))
    if where == "tensors":
        assert len(stale) == 1 and (stale[0] / "model.safetensors").is_file()
        assert not (stale[0] / "trainer.json").exists()
        assert not (root / "step-00000004").exists()
    else:
        assert stale == [] and (root / "step-00000004" / "trainer.json").is_file()
    assert latest_checkpoint(run).name == "step-00000002"
    model = diffuse.load(run).model
    assert states_equal(model.state_dict(), load_tensors(root / "step-00000002" / "ema.safetensors"))

    # Resuming continues from step 2; its saves replace step 4 and sweep away the leftovers.
    (root / ".latest.leftover").write_text("step-00000004\n")  # a killed pointer update
    engine = Engine(ring_config(steps=6), run, resume=True, progress=False)
    assert engine.step == 2
    engine.fit()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000004", "step-00000006"]
    assert latest_checkpoint(run).name == "step-00000006"
    diffuse.load(run)


def test_save_checkpoint_removes_its_temporary_folder_when_writing_fails(tmp_path, monkeypatch):
    from diffuse import checkpoint

    def broken(path, tensors):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write_tensors", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 1, {"a": 1}, {"model": {"w": torch.zeros(1)}})
    assert list((tmp_path / "checkpoints").iterdir()) == []
