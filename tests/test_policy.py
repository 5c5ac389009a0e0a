"""Diffusion Policy and its baseline: the temporal U-Net, the policy runs, rollouts and the CLI.

Tiny runs on four Push-T episodes (recorded once per module into a temporary cache): the tests
check the pipeline end to end, not that a few steps of training learn to push.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from _tiny import run_config
from diffuse import VP, GaussianMixture, sample
from diffuse.checkpoint import CheckpointError
from diffuse.cli import main
from diffuse.data import DataConfig, load_dataset
from diffuse.envs.rollout import rollout, summarise
from diffuse.models import build_network, network_config
from diffuse.policy import load_policy
from diffuse.recipes import recipe
from diffuse.training.engine import train
from diffuse.training.tasks.behaviour_cloning import ActionRegressor
from diffuse.training.tasks.mixture_density import MixtureDensityPolicy, mixture_nll

EPISODES = 4
TINY_UNET = {"kind": "temporal_unet", "channels": [8, 16], "norm_groups": 4, "time_dim": 16}


def tiny_unet(obs_dim: int = 10) -> nn.Module:
    return build_network({**TINY_UNET, "dim": 2, "obs_dim": obs_dim})


# -- the network ---------------------------------------------------------------------------------

def test_temporal_unet_output_shape_and_zero_output_at_init():
    net = tiny_unet()
    x = torch.randn(3, 16, 2)
    out = net(x, torch.zeros(3), obs=torch.randn(3, 2, 5))
    assert out.shape == x.shape
    # The last convolution starts at zero: an untrained eps model predicts no noise.
    assert torch.equal(out, torch.zeros_like(out))


def test_film_conditioning_changes_the_output():
    torch.manual_seed(0)
    net = tiny_unet()
    nn.init.normal_(net.out.weight)  # past the zero start, so the output shows the blocks' features
    x, level = torch.randn(2, 16, 2), torch.zeros(2)
    obs = torch.randn(2, 2, 5)
    base = net(x, level, obs=obs)
    assert torch.equal(base, net(x, level, obs=obs.clone()))
    assert (net(x, level, obs=obs + 0.5) - base).abs().max() > 1e-3
    assert (net(x, level + 1.0, obs=obs) - base).abs().max() > 1e-3
    # Each example's output depends on its own observation only.
    changed = obs.clone()
    changed[1] += 1.0
    moved = net(x, level, obs=changed)
    assert torch.allclose(moved[0], base[0], atol=1e-6) and (moved[1] - base[1]).abs().max() > 1e-3


def test_temporal_unet_config_round_trips_through_json():
    net = tiny_unet()
    described = json.loads(json.dumps(network_config(net)))
    assert described == {**TINY_UNET, "dim": 2, "obs_dim": 10, "kernel_size": 5, "time_features": "log_spaced"}
    again = build_network(described)
    again.load_state_dict(net.state_dict())
    x, obs = torch.randn(2, 8, 2), torch.randn(2, 10)
    nn.init.normal_(net.out.weight), again.load_state_dict(net.state_dict())
    assert torch.equal(net(x, torch.ones(2), obs=obs), again(x, torch.ones(2), obs=obs))


def test_temporal_unet_rejects_bad_input():
    net = tiny_unet()
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 15, 2), torch.zeros(1), obs=torch.randn(1, 10))
    with pytest.raises(ValueError, match="obs"):
        net(torch.randn(1, 16, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="norm_groups"):
        build_network({**TINY_UNET, "channels": [6]})


# -- tiny policy runs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A diffusion policy (the pusht recipe, shrunk) and a behaviour-cloning run, a few steps each."""
    root = tmp_path_factory.mktemp("policy")
    data = {"episodes": EPISODES, "cache_dir": str(root / "cache")}
    tiny = dict(batch_size=8, steps=3, checkpoint_every=3, warmup_steps=1)
    diffusion = recipe("pusht").updated(network=dict(TINY_UNET), sample_steps=2, **tiny)
    diffusion = diffusion.replace(data=DataConfig("pusht", options=data))
    train(diffusion, root / "dp", progress=False, pictures=False)
    bc = run_config("bc", data="pusht", hidden=16, depth=1, **tiny)
    bc = bc.replace(data=DataConfig("pusht", options=data))
    train(bc, root / "bc", progress=False, pictures=False)
    mdn = run_config("mdn", data="pusht", hidden=16, depth=1, components=3, **tiny)
    mdn = mdn.replace(data=DataConfig("pusht", options=data))
    train(mdn, root / "mdn", progress=False, pictures=False)
    return {"dp": root / "dp", "bc": root / "bc", "mdn": root / "mdn", "data": data}


HISTORY = np.array([[100.0, 120.0, 250.0, 300.0, 1.0], [104.0, 118.0, 250.0, 300.0, 1.0]])


@pytest.mark.parametrize("kind", ["dp", "bc", "mdn"])
def test_policy_maps_an_observation_history_to_an_action_chunk(runs, kind):
    policy = load_policy(runs[kind], steps=2)
    assert policy.kind == {"dp": "diffusion", "bc": "bc", "mdn": "mdn"}[kind]
    assert (policy.horizons.obs, policy.horizons.prediction, policy.horizons.action) == (2, 16, 8)
    actions = policy.chunk(HISTORY, seed=3)
    assert actions.shape == (16, 2) and actions.dtype == np.float64
    # Un-normalised into the demonstrations' range of targets (the model's output clamped to [-1, 1]).
    low, high = np.array(policy.normaliser.action.low), np.array(policy.normaliser.action.high)
    assert (actions >= low - 1e-9).all() and (actions <= high + 1e-9).all()
    batch = policy.chunk(np.stack([HISTORY, HISTORY + 1]), seed=3)
    assert batch.shape == (2, 16, 2)
    with pytest.raises(ValueError, match="observations"):
        policy.chunk(HISTORY[:1])


def test_the_normaliser_round_trips_and_matches_the_data(runs):
    data = load_dataset("pusht", **runs["data"])
    policy = load_policy(runs["dp"])
    assert policy.normaliser == data.normaliser
    raw = policy.normaliser.action.unnormalise(data.data[:5].double().numpy())
    assert np.allclose(policy.normaliser.action.normalise(raw), data.data[:5].double().numpy(), atol=1e-6)


def test_a_diffusion_policy_clips_its_estimates_to_the_action_range(runs):
    from diffuse import load
    assert load(runs["dp"]).clip_denoised == 1.0  # the actions' range: the pusht recipe's clip_denoised


def test_a_diffusion_policy_draws_from_its_seed(runs):
    policy = load_policy(runs["dp"], steps=2)
    first = policy.chunk(HISTORY, seed=5)
    assert np.array_equal(first, policy.chunk(HISTORY, seed=5))
    assert not np.array_equal(first, policy.chunk(HISTORY, seed=6))


def test_a_mixture_density_policy_draws_its_component_from_the_seed(runs):
    policy = load_policy(runs["mdn"])
    draws = {policy.chunk(HISTORY, seed=s).tobytes() for s in range(12)}
    assert 1 < len(draws) <= 3  # one of its three components' means each time
    assert np.array_equal(policy.chunk(HISTORY, seed=4), policy.chunk(HISTORY, seed=4))


def test_rollout_is_deterministic_and_writes_a_gif(runs, tmp_path):
    policy = load_policy(runs["dp"], steps=2)
    gif = tmp_path / "episode.gif"
    seeds = [1_000_000, 1_000_001]
    first = rollout(policy, seeds, policy.horizons.obs, policy.horizons.action, max_steps=12, gif=gif)
    again = rollout(policy, seeds, policy.horizons.obs, policy.horizons.action, max_steps=12)
    for a, b in zip(first, again):
        assert np.array_equal(a.observations, b.observations) and a.max_coverage == b.max_coverage
    # Receding horizon: 12 steps are one chunk of 8 and 4 of the next, and each episode stops there.
    assert [r.steps for r in first] == [12, 12] and all(len(r.observations) == 13 for r in first)
    assert first[0].observations[0].tolist() != first[1].observations[0].tolist()
    from PIL import Image
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 13
    summary = summarise(first)
    assert summary["episodes"] == 2 and 0 <= summary["mean_max_coverage"] <= 1
    assert sum(summary["mode_shares"].values()) == pytest.approx(1.0)


def test_load_policy_refuses_a_run_that_is_no_policy(tmp_path):
    from _tiny import ring_config
    train(ring_config(steps=2, checkpoint_every=2), tmp_path / "ring", progress=False, pictures=False)
    with pytest.raises(CheckpointError, match="demonstrations"):
        load_policy(tmp_path / "ring")


def test_rollout_cli_end_to_end(runs, tmp_path, capsys):
    out = tmp_path / "rollout"
    code = main(["rollout", str(runs["bc"]), "--episodes", "2", "--max-steps", "8", "--gif", str(out / "bc.gif"),
                 "--json", str(out / "bc.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "success rate" in printed and "mean max coverage" in printed
    report = json.loads((out / "bc.json").read_text())
    assert report["summary"]["episodes"] == 2 and [e["steps"] for e in report["episodes"]] == [8, 8]
    assert (out / "bc.gif").stat().st_size > 0
    assert main(["rollout", str(runs["dp"]), "--episodes", "1", "--steps", "2", "--max-steps", "8"]) == 0
    assert main(["rollout", str(runs["dp"]), "--gif", str(out / "x.png")]) == 1


# -- the point of the method -----------------------------------------------------------------------

def fitted(model: nn.Module, loss, steps: int = 200) -> nn.Module:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimiser.zero_grad()
        loss(model).backward()
        optimiser.step()
    return model


def test_regression_averages_two_modes_where_diffusion_draws_them():
    """The same observation, actions +1 or -1 equally often: the MSE regressor learns their mean,
    0, which no demonstration took; the diffusion sampler (here with the exact denoiser of the
    two-mode action distribution, DDIM in 10 or 16 steps) draws +1 or -1, half and half, and so does
    the mixture-density baseline."""
    generator = torch.Generator().manual_seed(0)
    obs = torch.zeros(256, 2, 5)
    actions = (torch.randint(0, 2, (256, 1, 1), generator=generator) * 2.0 - 1.0).expand(256, 16, 1)
    torch.manual_seed(0)
    regressor = fitted(ActionRegressor(10, (16, 1), hidden=16, depth=1),
                       lambda m: nn.functional.mse_loss(m(obs), actions))
    predicted = regressor(obs[:1]).detach()
    assert predicted.abs().max() < 0.15  # the mean of the modes, ~0

    torch.manual_seed(0)
    mixture = fitted(MixtureDensityPolicy(10, (16, 1), hidden=16, depth=1, components=2),
                     lambda m: mixture_nll(*m(obs), actions))
    chunks = mixture.draw(obs[:1].expand(400, 2, 5), torch.Generator().manual_seed(1))
    assert ((chunks - 1).abs() < 0.1).all(dim=(1, 2)).logical_or(((chunks + 1).abs() < 0.1).all(dim=(1, 2))).all()
    assert 0.4 < (chunks[:, 0, 0] > 0).double().mean() < 0.6

    process = VP.from_betas("squaredcos_cap_v2", 100)
    modes = GaussianMixture([[1.0], [-1.0]], 0.02)
    noise = torch.randn(400, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for steps, at_a_mode in ((16, 1.0), (10, 0.99)):
        drawn = sample(modes.denoiser(process), process, noise, sampler="ddim", steps=steps)
        distance = torch.minimum((drawn - 1).abs(), (drawn + 1).abs())
        # At 16 steps every draw lands at a mode; at 10 a few near the boundary between them fall
        # short (2 of 400 here): DDIM's discretisation error, not the model's.
        assert (distance < 0.1).double().mean() >= at_a_mode
        assert 0.4 < (drawn > 0).double().mean() < 0.6
