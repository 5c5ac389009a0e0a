"""The trainer: bit-exact resume, clean stops on non-finite losses, time budgets, batch slicing."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _tiny import MLP, digits_config, ring_config, states_equal
from diffuse.checkpoint import CheckpointError, latest_checkpoint, load_json
from diffuse.data import Dataset
from diffuse.training import NonFiniteLossError, Trainer, load_model


def optimizer_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, s in trainer.optimizer.state_dict()["state"].items() for k, v in s.items()}


# -- resume ----------------------------------------------------------------------------------------

def test_resume_continues_bit_for_bit(tmp_path):
    # Class labels with label dropout and U-Net dropout: both draw random numbers every step,
    # so a resume that restored the wrong random state would diverge.
    config = dict(cond="class", dropout=0.1, checkpoint_every=3, label_dropout=0.3)
    straight = Trainer(digits_config(steps=6, **config), tmp_path / "a", progress=False)
    straight.fit()

    Trainer(digits_config(steps=3, **config), tmp_path / "b", progress=False).fit()
    # Only the budget may change on resume; a different learning rate must be ignored.
    resumed = Trainer(digits_config(steps=6, lr=0.5, **config), tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 3 and resumed.config.lr == straight.config.lr
    resumed.fit()

    assert resumed.step == straight.step == 6
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    assert states_equal(resumed.ema.state_dict(), straight.ema.state_dict())
    assert states_equal(optimizer_tensors(resumed), optimizer_tensors(straight))
    assert resumed.config == straight.config
    a = load_model(tmp_path / "a")[0].state_dict()
    b = load_model(tmp_path / "b")[0].state_dict()
    assert states_equal(a, b)


def test_resume_differs_from_a_run_with_another_seed(tmp_path):
    # The converse of bit-exact resume: the comparison above can tell runs apart at all.
    a = Trainer(ring_config(steps=3, seed=0), tmp_path / "a", progress=False)
    b = Trainer(ring_config(steps=3, seed=1), tmp_path / "b", progress=False)
    a.fit(), b.fit()
    assert not states_equal(a.model.state_dict(), b.model.state_dict())


def test_resume_without_a_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Trainer(ring_config(), tmp_path, resume=True, progress=False)


# -- non-finite losses -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_cleanly(tmp_path, bad):
    trainer = Trainer(ring_config(steps=6, checkpoint_every=2), tmp_path, progress=False)
    loss_fn = trainer.loss_fn

    def poisoned(model, x0, cond, generator=None):
        loss = loss_fn(model, x0, cond, generator=generator)
        return loss * bad if trainer.step == 2 else loss  # the loss of step 3

    trainer.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    message = str(err.value)
    assert f"the loss is {bad}" in message and "at step 3" in message
    assert str(tmp_path / "checkpoints") in message

    assert trainer.step == 2
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    # Nothing was applied from the bad step: the live weights are still those saved at step 2.
    raw, _, _ = load_model(tmp_path, ema=False)
    assert states_equal(raw.state_dict(), trainer.model.state_dict())
    assert all(torch.isfinite(v).all() for v in raw.state_dict().values())
    # And the run can be resumed from there.
    resumed = Trainer(ring_config(steps=4), tmp_path, resume=True, progress=False)
    resumed.fit()
    assert latest_checkpoint(tmp_path).name == "step-00000004"


def test_nan_in_the_data_stops_before_any_checkpoint(tmp_path):
    points = torch.randn(64, 2)
    points[5] = math.nan
    data = Dataset(points, None, None, "nan-points")
    trainer = Trainer(ring_config(steps=4, batch_size=64, sigma_data=1.0), tmp_path, dataset=data,
                      progress=False)
    with pytest.raises(NonFiniteLossError, match="at step 1;.*check the data for NaNs"):
        trainer.fit()
    with pytest.raises(CheckpointError):
        latest_checkpoint(tmp_path)


# -- budgets and logs -------------------------------------------------------------------------------

def test_time_budget_stops_early_and_still_checkpoints(tmp_path):
    trainer = Trainer(ring_config(steps=100_000, checkpoint_every=100_000, minutes=0.002), tmp_path,
                      progress=False)
    last = trainer.fit()
    assert 0 < trainer.step < 100_000
    assert last == latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / f"step-{trainer.step:08d}"
    meta = load_json(last / "trainer.json")
    assert meta["step"] == trainer.step and meta["elapsed_seconds"] > 0
    model, config, _ = load_model(tmp_path)
    assert states_equal(model.state_dict(), trainer.ema.state_dict())
    assert config.minutes == 0.002


def test_metrics_have_one_line_per_logging_step(tmp_path):
    Trainer(ring_config(steps=7, log_every=3, checkpoint_every=7), tmp_path, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 7]  # the tail is logged at the end
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert (tmp_path / "loss.png").is_file()


# -- batches -----------------------------------------------------------------------------------------

def numbered_points(n: int) -> Dataset:
    """Points whose first coordinate is their index, so a batch says which examples it holds."""
    points = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], dim=1)
    return Dataset(points, None, None, "numbered")


def batch_ids(trainer: Trainer, step: int, rank: int = 0, world: int = 1) -> list[int]:
    trainer.step, trainer.rank, trainer.world = step, rank, world
    x, _ = trainer.next_batch(torch.Generator().manual_seed(0))
    return x[:, 0].long().tolist()


def test_an_epoch_visits_every_example_once_and_drops_the_tail(tmp_path):
    trainer = Trainer(ring_config(batch_size=4), tmp_path, dataset=numbered_points(22), progress=False)
    assert trainer.batches_per_epoch == 5
    first = [i for step in range(5) for i in batch_ids(trainer, step)]
    second = [i for step in range(5, 10) for i in batch_ids(trainer, step)]
    assert len(set(first)) == len(set(second)) == 20
    assert first != second  # a new order each epoch
    assert first == [i for step in range(5) for i in batch_ids(trainer, step)]  # a function of the step


def test_ranks_take_disjoint_halves_of_the_global_batch(tmp_path):
    trainer = Trainer(ring_config(batch_size=8), tmp_path, dataset=numbered_points(40), progress=False)
    for step in (0, 3, 7):
        whole = batch_ids(trainer, step)
        halves = [batch_ids(trainer, step, rank, 2) for rank in (0, 1)]
        assert all(len(h) == 4 for h in halves)
        assert halves[0] + halves[1] == whole
        assert not set(halves[0]) & set(halves[1])


def test_label_dropout_uses_the_null_class(tmp_path):
    network = {**MLP, "num_classes": 8}
    trainer = Trainer(ring_config(cond="class", network=network, batch_size=512, label_dropout=0.5),
                      tmp_path, progress=False)
    _, cond = trainer.next_batch(torch.Generator().manual_seed(0))
    labels = cond["labels"]
    dropped = (labels == 8).float().mean()
    assert 0.4 < dropped < 0.6 and labels.min() >= 0 and labels.max() <= 8


def test_invalid_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exceeds"):
        Trainer(ring_config(batch_size=64), tmp_path, dataset=numbered_points(10), progress=False)
    with pytest.raises(ValueError, match="needs a labelled data set"):
        Trainer(ring_config(cond="class", network={**MLP, "num_classes": 8}), tmp_path,
                dataset=numbered_points(10), progress=False)
    with pytest.raises(ValueError, match="num_classes=8"):
        Trainer(ring_config(cond="class"), tmp_path, progress=False)


def test_the_callers_config_is_not_filled_in(tmp_path):
    config = ring_config(network=None)
    trainer = Trainer(config, tmp_path, progress=False)
    assert config.network is None and config.sigma_data is None
    assert trainer.config.network["kind"] == "mlp" and trainer.config.sigma_data > 0


def test_resume_drops_metrics_logged_after_the_checkpoint_and_does_not_resave(tmp_path):
    Trainer(ring_config(steps=4, log_every=1, checkpoint_every=2), tmp_path, progress=False).fit()
    metrics = tmp_path / "metrics.jsonl"
    # as if the run had been killed after logging steps 5 and 6 but before checkpointing 6
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n')
    Trainer(ring_config(steps=6, log_every=1, checkpoint_every=2), tmp_path, resume=True, progress=False).fit()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # resuming a finished run writes nothing new: the step-6 folder is left as it is
    folder = tmp_path / "checkpoints" / "step-00000006"
    before = (folder / "model.safetensors").stat().st_mtime_ns
    Trainer(ring_config(steps=6), tmp_path, resume=True, progress=False).fit()
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_learning_rate_schedules_warm_up_then_decay_to_zero_at_the_horizon():
    from diffuse.training.loop import learning_rate

    peak, warmup, total = 2e-3, 10, 110
    for schedule in ("constant", "cosine", "linear"):
        assert learning_rate(peak, 0, warmup, total, schedule) == pytest.approx(peak / warmup)
        assert learning_rate(peak, warmup, warmup, total, schedule) == pytest.approx(peak)
    assert learning_rate(peak, 60, warmup, total, "constant") == peak
    assert learning_rate(peak, 60, warmup, total, "cosine") == pytest.approx(peak / 2)   # halfway
    assert learning_rate(peak, 35, warmup, total, "cosine") == pytest.approx(peak * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(peak, 85, warmup, total, "linear") == pytest.approx(peak / 4)
    for schedule in ("cosine", "linear"):
        assert learning_rate(peak, total, warmup, total, schedule) == pytest.approx(0, abs=1e-15)
        assert learning_rate(peak, total + 50, warmup, total, schedule) == pytest.approx(0, abs=1e-15)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(peak, 0, warmup, total, "step")
    with pytest.raises(ValueError, match="lr_schedule"):
        digits_config(lr_schedule="exponential")


def test_the_progress_bar_redraws_sparingly_into_a_log_file(tmp_path, capsys):
    # stderr is captured here, as a log file is: not a terminal, so no redraw for each step
    Trainer(ring_config(steps=40, checkpoint_every=40, log_every=40), tmp_path / "run").fit()
    drawn = capsys.readouterr().err
    assert "40/40" in drawn  # the bar is there and finished
    assert drawn.count("\r") <= 4, drawn
