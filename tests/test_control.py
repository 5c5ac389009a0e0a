"""The control adapter: the base model exactly at initialisation and at control_scale 0, gradients
through its zero convolutions, the outline control and its score, and a run trained, saved, loaded
and sampled through the engine and diffuse.load."""

from __future__ import annotations

import pytest
import torch

import diffuse
from diffuse.data import DataConfig, load_shapes
from diffuse.data.outline import enclosed, iou, outline, outline_control, shape_mask
from diffuse.denoiser import Denoiser
from diffuse.models import build_network, network_config
from diffuse.process import get_process
from diffuse.training import ControlTaskConfig, DiffusionTaskConfig, RunConfig, TrainConfig, train

UNET = {"kind": "unet", "in_channels": 3, "channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
        "attention_levels": [1], "num_heads": 2, "norm_groups": 4, "middle_blocks": 2}


def trained_like_base(num_classes=None) -> torch.nn.Module:
    """A U-Net with random weights everywhere (a fresh one predicts zero, which would hide a difference)."""
    net = build_network({**UNET, "num_classes": num_classes})
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def controlled(base) -> torch.nn.Module:
    net = build_network({"kind": "control", "base": network_config(base), "control_channels": 1})
    net.load_base(base.state_dict())
    return net


def inputs(batch=3, generator_seed=1):
    g = torch.Generator().manual_seed(generator_seed)
    return (torch.randn(batch, 3, 8, 8, generator=g), torch.randn(batch, generator=g),
            torch.randn(batch, 1, 8, 8, generator=g))


def test_identity_at_initialisation():
    base = trained_like_base(num_classes=4)
    net = controlled(base)
    x, noise, control = inputs()
    labels = torch.tensor([0, 3, 4])  # 4: the null class
    with torch.no_grad():
        assert torch.equal(net(x, noise, labels, control=control), base(x, noise, labels))
    # and as a model: the same Denoiser (preconditioning and all) around either network
    process = get_process("edm")
    t = torch.tensor([0.1, 1.0, 10.0], dtype=torch.float64)
    ours = Denoiser(net, process, "x0", "edm")(x, t, labels, control=control)
    theirs = Denoiser(base, process, "x0", "edm")(x, t, labels)
    assert torch.equal(ours, theirs)


def test_zero_convs_learn_and_base_stays_frozen():
    base = trained_like_base()
    net = controlled(base)
    frozen = {k: v.clone() for k, v in net.base.state_dict().items()}
    assert not any(p.requires_grad for p in net.base.parameters())
    x, noise, control = inputs()
    optimiser = torch.optim.SGD(net.adapter.parameters(), lr=0.1)
    # the zero convs get a gradient at once: their input (the copy's features) is not zero
    out = net(x, noise, control=control)
    (out - torch.randn_like(out)).square().mean().backward()
    assert net.adapter.skip_outs[0].weight.grad.abs().sum() > 0
    assert net.adapter.middle_out.weight.grad.abs().sum() > 0
    optimiser.step()
    with torch.no_grad():
        skips, middle = net.adapter(x, noise, None, control)
        assert max(float(s.abs().max()) for s in skips) > 0
        assert not torch.equal(net(x, noise, control=control), base(x, noise))
        # control_scale 0 is the base model at any point of training, per sample too
        assert torch.equal(net(x, noise, control=control, control_scale=0.0), base(x, noise))
        per_sample = net(x, noise, control=control, control_scale=torch.tensor([0.0, 1.0, 0.0]))
        assert torch.equal(per_sample[0], base(x, noise)[0])
        assert torch.allclose(per_sample[1], net(x, noise, control=control)[1], atol=1e-6)
    assert all(torch.equal(frozen[k], v) for k, v in net.base.state_dict().items())


def test_bad_inputs_are_clear_errors():
    net = controlled(trained_like_base())
    x, noise, control = inputs()
    with pytest.raises(ValueError, match="needs its control image"):
        net(x, noise)
    with pytest.raises(ValueError, match="control must be"):
        net(x, noise, control=control[:, :, :4])
    with pytest.raises(ValueError, match="control_scale must be"):
        net(x, noise, control=control, control_scale=torch.ones(2))
    with pytest.raises(ValueError, match="must describe a U-Net"):
        build_network({"kind": "control", "base": {"kind": "mlp", "dim": 2}})
    with pytest.raises(ValueError, match="3 residuals"):
        net.base(x, noise, skip_residuals=[x] * 3)


def test_outline_encloses_its_shape():
    images = load_shapes("test", n=50).data
    mask = shape_mask(images)
    edges = outline(mask)
    assert (edges <= mask).all() and edges.any()
    assert torch.equal(enclosed(edges), mask)  # the shapes have no holes
    assert torch.allclose(iou(images, outline_control(images)), torch.ones(50))
    assert float(iou(images.roll(1, 0), outline_control(images)).mean()) < 0.5


def test_control_run_trains_saves_loads_and_samples(tmp_path):
    torch.manual_seed(0)
    data = DataConfig("shapes", options={"n": 32})
    small = {k: v for k, v in UNET.items() if k != "in_channels"}
    base_run = tmp_path / "base"
    train(RunConfig(DiffusionTaskConfig(network=small, sample_steps=2, grid_size=2), data,
                    TrainConfig(steps=2, batch_size=8, checkpoint_every=2, warmup_steps=1)), base_run, progress=False)
    settings = {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "warmup_steps": 1}
    engine = train(RunConfig(ControlTaskConfig(base=str(base_run), grid_size=2, eval_n=4), data, settings),
                   tmp_path / "control", progress=False)
    assert set(engine.test_metrics) == {"n", "iou", "iou_unguided", "iou_real"}
    assert engine.test_metrics["iou_real"] == 1.0
    trained = engine.averaged.net
    base = diffuse.load(base_run).model.net
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in trained.base.state_dict().items())
    assert any(p.abs().sum() > 0 for p in trained.adapter.middle_out.parameters())

    pipeline = diffuse.load(tmp_path / "control")  # no base run needed: its weights are in the run
    assert pipeline.config.task.kind == "control" and pipeline.stored.state["base"]["weights"] == "ema"
    control = outline_control(load_shapes("test", n=2).data)
    drawn = pipeline.sample(2, cond={"control": control}, steps=2, seed=3)
    again = engine.task.pipeline(engine.averaged).sample(2, cond={"control": control}, steps=2, seed=3)
    assert torch.equal(drawn, again)
    unguided = pipeline.sample(2, cond={"control": control, "control_scale": 0.0}, steps=2, seed=3)
    assert torch.equal(unguided, diffuse.load(base_run).sample(2, steps=2, seed=3))
    with pytest.raises(ValueError, match="takes no condition 'hint'"):
        pipeline.sample(2, cond={"hint": control}, steps=2)
    with pytest.raises(ValueError, match="needs its control image"):
        pipeline.sample(2, steps=2)


def test_train_control_command(tmp_path, capsys):
    """The command's own parser and handler (diffuse.cli wires them in as `diffuse train-control`)."""
    import argparse

    import numpy as np

    from diffuse import control_cli

    data = DataConfig("shapes", options={"n": 16})
    small = {k: v for k, v in UNET.items() if k != "in_channels"}
    train(RunConfig(DiffusionTaskConfig(network=small, sample_steps=2, grid_size=2), data,
                    TrainConfig(steps=1, batch_size=8, checkpoint_every=1, warmup_steps=1)), tmp_path / "base",
          progress=False)
    parser = argparse.ArgumentParser()
    control_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-control", str(tmp_path / "base"), "--out", str(tmp_path / "control"),
                              "--steps", "1", "--batch-size", "8", "--eval-n", "2", "--quiet"])
    assert args.handler(args, {}) == 0
    assert "IoU of the samples' shapes" in capsys.readouterr().out
    pipeline = diffuse.load(tmp_path / "control")
    assert pipeline.config.train.steps == 1 and pipeline.config.data == diffuse.load(tmp_path / "base").config.data

    sample = argparse.ArgumentParser()
    control_cli.sample_arguments(sample)
    pictures = tmp_path / "pictures.npz"
    images = load_shapes("test", n=2).data
    np.savez(pictures, images=(images.permute(0, 2, 3, 1).numpy() + 1) / 2)
    cond = control_cli.sample_cond(sample.parse_args(["--control-from", str(pictures), "--control-scale", "0.5"]),
                                   pipeline, 3)
    assert cond["control"].shape == (3, 1, 32, 32) and cond["control_scale"] == 0.5
    assert torch.equal(cond["control"][2], outline_control(images)[0])
    with pytest.raises(ValueError, match="give its control images"):
        control_cli.sample_cond(sample.parse_args([]), pipeline, 3)
