"""The engine: bit-exact resume, clean stops on non-finite losses, time budgets, batch slicing."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import diffuse
from _tiny import MLP, digits_config, ring_config, states_equal
from diffuse.checkpoint import CheckpointError, latest_checkpoint, load_json, read_run
from diffuse.data import TensorDataset
from diffuse.configs import option
from diffuse.training import Engine, NonFiniteLossError, RunConfig, Task, TaskConfig, register


def optimizer_tensors(engine: Engine) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": v for i, s in engine.optimizer.state_dict()["state"].items() for k, v in s.items()}


# -- resume ----------------------------------------------------------------------------------------

def test_resume_continues_bit_for_bit(tmp_path):
    # Class labels with label dropout and U-Net dropout: both draw random numbers every step,
    # so a resume that restored the wrong random state would diverge.
    config = dict(cond="class", dropout=0.1, checkpoint_every=3, label_dropout=0.3)
    straight = Engine(digits_config(steps=6, **config), tmp_path / "a", progress=False)
    straight.fit()

    Engine(digits_config(steps=3, **config), tmp_path / "b", progress=False).fit()
    # the same run with a longer budget: its config as stored, the steps extended
    resumed = Engine(digits_config(steps=6, **config), tmp_path / "b", resume=True, progress=False)
    assert resumed.step == 3 and resumed.config.train.lr == straight.config.train.lr
    resumed.fit()

    assert resumed.step == straight.step == 6
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    assert states_equal(resumed.ema.state_dict(), straight.ema.state_dict())
    assert states_equal(optimizer_tensors(resumed), optimizer_tensors(straight))
    assert resumed.config.to_dict() == straight.config.to_dict()
    a = diffuse.load(tmp_path / "a").model.state_dict()
    b = diffuse.load(tmp_path / "b").model.state_dict()
    assert states_equal(a, b)
    # the only change, the budget, is the run's history
    assert read_run(tmp_path / "b").history == [{"step": 3, "changed": {"train.steps": [3, 6]}}]


def test_resume_differs_from_a_run_with_another_seed(tmp_path):
    # The converse of bit-exact resume: the comparison above can tell runs apart at all.
    a = Engine(ring_config(steps=3, seed=0), tmp_path / "a", progress=False)
    b = Engine(ring_config(steps=3, seed=1), tmp_path / "b", progress=False)
    a.fit(), b.fit()
    assert not states_equal(a.model.state_dict(), b.model.state_dict())


def test_resume_without_a_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Engine(ring_config(), tmp_path, resume=True, progress=False)


# -- non-finite losses -----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_loss_stops_cleanly(tmp_path, bad):
    engine = Engine(ring_config(steps=6, checkpoint_every=2), tmp_path, progress=False)
    loss = engine.task.loss

    def poisoned(model, batch, generator):
        value = loss(model, batch, generator)
        return value * bad if engine.step == 2 else value  # the loss of step 3

    engine.task.loss = poisoned
    with pytest.raises(NonFiniteLossError) as err:
        engine.fit()
    message = str(err.value)
    assert f"the loss is {bad}" in message and "at step 3" in message and "--resume --lr" in message
    assert str(tmp_path / "checkpoints") in message

    assert engine.step == 2
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    # Nothing was applied from the bad step: the live weights are still those saved at step 2.
    raw = diffuse.load(tmp_path, ema=False).model
    assert states_equal(raw.state_dict(), engine.model.state_dict())
    assert all(torch.isfinite(v).all() for v in raw.state_dict().values())
    # And the run can be resumed from there, with the lower learning rate the message suggests.
    resumed = Engine(ring_config(steps=4, lr=1e-4), tmp_path, resume=True, progress=False)
    resumed.fit()
    assert latest_checkpoint(tmp_path).name == "step-00000004" and resumed.config.train.lr == 1e-4


def test_nan_in_the_data_stops_before_any_checkpoint(tmp_path):
    points = torch.randn(64, 2)
    points[5] = math.nan
    data = TensorDataset(points, None, None, "nan-points", modality="vector")
    engine = Engine(ring_config(steps=4, batch_size=64, sigma_data=1.0), tmp_path, dataset=data, progress=False)
    with pytest.raises(NonFiniteLossError, match="at step 1;.*check the data for NaNs"):
        engine.fit()
    with pytest.raises(CheckpointError):
        latest_checkpoint(tmp_path)


# -- budgets and logs -------------------------------------------------------------------------------

def test_time_budget_stops_early_and_still_checkpoints(tmp_path):
    engine = Engine(ring_config(steps=100_000, checkpoint_every=100_000, minutes=0.002), tmp_path, progress=False)
    last = engine.fit()
    assert 0 < engine.step < 100_000
    assert last == latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / f"step-{engine.step:08d}"
    meta = load_json(last / "trainer.json")
    assert meta["step"] == engine.step and meta["elapsed_seconds"] > 0
    pipeline = diffuse.load(tmp_path)
    assert states_equal(pipeline.model.state_dict(), engine.ema.state_dict())
    assert pipeline.config.train.minutes == 0.002


def test_metrics_have_one_line_per_logging_step(tmp_path):
    Engine(ring_config(steps=7, log_every=3, checkpoint_every=7), tmp_path, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 7]  # the tail is logged at the end
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    assert (tmp_path / "loss.png").is_file()


# -- batches -----------------------------------------------------------------------------------------

def numbered_points(n: int) -> TensorDataset:
    """Points whose first coordinate is their index, so a batch says which examples it holds."""
    points = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n)], dim=1)
    return TensorDataset(points, None, None, "numbered", modality="vector")


def batch_ids(engine: Engine, step: int, rank: int = 0, world: int = 1) -> list[int]:
    engine.sampler.rank, engine.sampler.world = rank, world
    return engine.batch_at(step)["x"][:, 0].long().tolist()


def test_an_epoch_visits_every_example_once_and_drops_the_tail(tmp_path):
    engine = Engine(ring_config(batch_size=4), tmp_path, dataset=numbered_points(22), progress=False)
    assert engine.sampler.per_epoch == 5
    first = [i for step in range(5) for i in batch_ids(engine, step)]
    second = [i for step in range(5, 10) for i in batch_ids(engine, step)]
    assert len(set(first)) == len(set(second)) == 20
    assert first != second  # a new order each epoch
    assert first == [i for step in range(5) for i in batch_ids(engine, step)]  # a function of the step


def test_the_data_loader_gives_the_batches_of_the_steps(tmp_path):
    # the DataLoader the engine trains from, with worker processes, yields batch_at(step) in turn
    engine = Engine(ring_config(batch_size=4, num_workers=2), tmp_path, dataset=numbered_points(22), progress=False)
    expected = [batch_ids(engine, step) for step in range(7)]
    engine.step = 0
    seen = []
    for _ in range(7):
        seen.append(engine._next_batch()["x"][:, 0].long().tolist())
        engine.step += 1
    assert seen == expected


def test_ranks_take_disjoint_halves_of_the_global_batch(tmp_path):
    engine = Engine(ring_config(batch_size=8), tmp_path, dataset=numbered_points(40), progress=False)
    for step in (0, 3, 7):
        whole = batch_ids(engine, step)
        halves = [batch_ids(engine, step, rank, 2) for rank in (0, 1)]
        assert all(len(h) == 4 for h in halves)
        assert halves[0] + halves[1] == whole
        assert not set(halves[0]) & set(halves[1])


def test_label_dropout_uses_the_null_class(tmp_path):
    network = {**MLP, "num_classes": 8}
    engine = Engine(ring_config(cond="class", network=network, batch_size=512, label_dropout=0.5),
                    tmp_path, progress=False)
    seen = {}

    def model(x, t, **cond):  # what the network is given
        seen.update(cond)
        return torch.zeros_like(x)

    engine.task.loss(model, engine.batch_at(0), torch.Generator().manual_seed(0))
    labels = seen["labels"]
    dropped = (labels == 8).float().mean()
    assert 0.4 < dropped < 0.6 and labels.min() >= 0 and labels.max() <= 8


def test_invalid_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="exceeds"):
        Engine(ring_config(batch_size=64), tmp_path, dataset=numbered_points(10), progress=False)
    with pytest.raises(ValueError, match="needs a labelled data set"):
        Engine(ring_config(cond="class", network={**MLP, "num_classes": 8}), tmp_path,
               dataset=numbered_points(10), progress=False)
    with pytest.raises(ValueError, match="num_classes=8"):  # a stated class count that is not the data's
        Engine(ring_config(cond="class", network={**MLP, "num_classes": 3}), tmp_path, progress=False)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing written by a run that never started


def test_a_class_network_gets_the_number_of_classes_from_the_data(tmp_path):
    engine = Engine(ring_config(cond="class"), tmp_path, progress=False)
    assert engine.config.task.network["num_classes"] == 8


def test_the_callers_config_is_not_filled_in(tmp_path):
    config = ring_config(network=None)
    engine = Engine(config, tmp_path, progress=False)
    assert config.task.network is None and config.task.sigma_data is None
    assert engine.config.task.network["kind"] == "mlp" and engine.config.task.sigma_data > 0


def test_resume_drops_metrics_logged_after_the_checkpoint_and_does_not_resave(tmp_path):
    Engine(ring_config(steps=4, log_every=1, checkpoint_every=2), tmp_path, progress=False).fit()
    metrics = tmp_path / "metrics.jsonl"
    # as if the run had been killed after logging steps 5 and 6 but before checkpointing 6,
    # the last line cut short by the kill
    with open(metrics, "a") as f:
        f.write('{"step": 5, "loss": 1.0}\n{"step": 6, "loss": 1.0}\n{"step": 7, "lo')
    Engine(ring_config(steps=6, log_every=1, checkpoint_every=2), tmp_path, resume=True, progress=False).fit()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # resuming a finished run writes nothing new: the step-6 folder is left as it is
    folder = tmp_path / "checkpoints" / "step-00000006"
    before = (folder / "model.safetensors").stat().st_mtime_ns
    Engine(None, tmp_path, resume=True, progress=False).fit()
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_a_damaged_metrics_line_before_others_is_named(tmp_path):
    Engine(ring_config(steps=2, log_every=1, checkpoint_every=2), tmp_path, progress=False).fit()
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0][:10] + "\n" + lines[1] + "\n")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl, line 1, is damaged"):
        Engine(None, tmp_path, resume=True, progress=False)


def test_learning_rate_schedules_warm_up_then_decay_to_zero_at_the_horizon():
    from diffuse.training import learning_rate

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
    Engine(ring_config(steps=40, checkpoint_every=40, log_every=40), tmp_path / "run").fit()
    drawn = capsys.readouterr().err
    assert "40/40" in drawn  # the bar is there and finished
    assert drawn.count("\r") <= 4, drawn


# -- a task of the tests' own, through the public task interface --------------------------------------

@dataclasses.dataclass
class RegressionConfig(TaskConfig):
    kind = "tests-regression"
    hidden: int = option(16, help="the width of the one hidden layer")


@register
class Regression(Task):
    """Fit y = f(x) on 2-D points (x, y): a task that is not diffusion, trained by the same engine."""

    Config = RegressionConfig
    train_defaults = {"lr": 3e-2, "warmup_steps": 0, "lr_schedule": "constant", "ema_decay": None,
                      "grad_clip": 0.0}

    def build(self):
        return torch.nn.Sequential(torch.nn.Linear(1, self.config.hidden), torch.nn.Tanh(),
                                   torch.nn.Linear(self.config.hidden, 1))

    def loss(self, model, batch, generator):
        x = batch["x"]
        return torch.nn.functional.mse_loss(model(x[:, :1]), x[:, 1:])

    def preview(self, model):
        from diffuse.plotting import save_scatter
        grid = torch.linspace(-2, 2, 50)[:, None]
        with torch.no_grad():
            curve = torch.cat([grid, model(grid)], 1)
        return {"fit": lambda path: save_scatter(curve, path)}

    @torch.no_grad()
    def evaluate(self, model):
        return {"loss": float(self.loss(model, {"x": self.test_data().data}, None))}


def sine_points(n: int, seed: int) -> TensorDataset:
    x = torch.rand(n, 1, generator=torch.Generator().manual_seed(seed)) * 4 - 2
    return TensorDataset(torch.cat([x, torch.sin(2 * x)], 1), None, None, f"sine-{seed}", modality="vector")


def test_a_new_task_is_one_class_the_engine_trains_checkpoints_and_resumes(tmp_path):
    config = RunConfig(RegressionConfig(), "python", {"steps": 120, "batch_size": 32, "checkpoint_every": 30})
    train, test = sine_points(256, 0), sine_points(64, 1)
    straight = Engine(config, tmp_path / "a", dataset=train, test_dataset=test, progress=False)
    straight.fit()
    assert straight.test_metrics["loss"] < 0.5 * float(torch.sin(2 * test.data[:, 0]).var())
    assert (tmp_path / "a" / "fit.png").is_file() and (tmp_path / "a" / "pictures" / "fit-step-00000120.png").is_file()
    assert json.loads((tmp_path / "a" / "test_metrics.json").read_text()) == straight.test_metrics

    half = RunConfig(RegressionConfig(), "python", {"steps": 60, "batch_size": 32, "checkpoint_every": 30})
    Engine(half, tmp_path / "b", dataset=train, test_dataset=test, progress=False).fit()
    resumed = Engine(config, tmp_path / "b", resume=True, dataset=train, test_dataset=test, progress=False)
    assert resumed.step == 60
    resumed.fit()
    assert states_equal(resumed.model.state_dict(), straight.model.state_dict())
    # the run folder rebuilds the task's module through the registry, as for every task
    task, module, stored, _ = diffuse.runs.restore(tmp_path / "b")
    assert isinstance(task, Regression) and stored.task == RegressionConfig()
    assert states_equal(module.state_dict(), straight.model.state_dict())
    with pytest.raises(ValueError, match="a task of kind 'tests-regression' is registered already"):
        register(type("Other", (Task,), {"Config": RegressionConfig}))
