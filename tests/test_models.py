"""Tests for the denoiser networks: shapes, conditioning, initialisation, configs and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from diffuse.models import MLP, MLPConfig, UNet, UNetConfig, build_network, network_config
from diffuse.models.embeddings import MAX_FREQUENCY, MIN_FREQUENCY, position_embedding, sinusoidal_embedding
from diffuse.models.unet import PixelCrossAttention, SelfAttention, with_position_code

# Small widths keep the file fast; the default configs get their own tests below.
SMALL_UNET = dict(channels=16, norm_groups=8, num_heads=2)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def perturb_output(net: nn.Module) -> None:
    """Make the zero-initialised final layer non-zero so outputs depend on the inputs."""
    with torch.no_grad():
        net.output.weight.normal_(0.0, 0.1)
        net.output.bias.normal_(0.0, 0.1)


def unet_input(config: UNetConfig, size: int, batch: int = 3):
    return torch.randn(batch, config.in_channels, size, size), torch.empty(batch).uniform_(-4, 3)


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "size, in_channels, mults",
    [
        (8, 1, (1, 2)),
        (8, 3, (1, 2)),
        (28, 1, (1, 2, 2)),
        (28, 3, (1, 2, 2)),
        (32, 1, (1, 2)),
        (32, 3, (1, 2, 2)),
    ],
)
def test_unet_output_shape(size, in_channels, mults):
    config = UNetConfig(in_channels=in_channels, channel_mults=mults, **SMALL_UNET)
    net = UNet(config)
    perturb_output(net)
    x, noise = unet_input(config, size)
    out = net(x, noise)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_default_config_at_8x8():
    net = UNet(UNetConfig())
    perturb_output(net)
    x = torch.randn(2, 1, 8, 8)
    assert net(x, torch.zeros(2)).shape == (2, 1, 8, 8)
    # The default is meant to train on a CPU: a few million parameters, not tens.
    assert 1_000_000 < sum(p.numel() for p in net.parameters()) < 4_000_000


def test_unet_out_channels():
    net = UNet(UNetConfig(in_channels=3, out_channels=2, **SMALL_UNET))
    assert net.config.out_channels == 2
    assert net(torch.randn(2, 3, 8, 8), torch.zeros(2)).shape == (2, 2, 8, 8)
    assert UNetConfig(in_channels=3).out_channels == 3


@pytest.mark.parametrize("dim", [2, 5])
def test_mlp_output_shape(dim):
    net = MLP(MLPConfig(dim=dim, hidden=32, depth=2, num_classes=3))
    perturb_output(net)
    x = torch.randn(7, dim)
    out = net(x, torch.empty(7).uniform_(-4, 3), torch.tensor([0, 1, 2, 3, 0, 1, 2]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_self_attention_matches_per_head_softmax():
    # Independent check of the head split: head i attends with channels [i*d, (i+1)*d) of
    # each of q, k and v, with softmax(q.k / sqrt(d)) weights over all pixels.
    attention = SelfAttention(width=8, num_heads=2, groups=4)
    with torch.no_grad():
        attention.proj.weight.normal_(0.0, 0.3)
        x = torch.randn(2, 8, 3, 5)
        qkv = attention.qkv(attention.norm(x)).flatten(2)
        q, k, v = qkv[:, :8], qkv[:, 8:16], qkv[:, 16:]
        heads = []
        for i in range(2):
            part = slice(4 * i, 4 * i + 4)
            weights = torch.softmax(q[:, part].transpose(1, 2) @ k[:, part] / 2.0, dim=-1)
            heads.append(v[:, part] @ weights.transpose(1, 2))
        mixed = torch.cat(heads, dim=1).reshape(2, 8, 3, 5)
        expected = x + attention.proj(mixed)
        torch.testing.assert_close(attention(x), expected, rtol=1e-5, atol=1e-5)


def test_the_position_code_of_a_pixel_is_its_row_and_column_code():
    code = with_position_code(torch.zeros(1, 8, 3, 5))[0]
    table = position_embedding(3, 5, 8)
    for row, column in [(0, 0), (0, 4), (2, 1), (1, 3)]:
        torch.testing.assert_close(code[:, row, column], table[row * 5 + column])
    features = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(with_position_code(features), features + code)


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_attention_tells_pixels_apart_only_with_the_position_code(kind):
    # Without a position code, attention treats the pixels as a set: moving the picture (a
    # cyclic shift, which GroupNorm's statistics do not see) moves the output with it. With
    # the code, the same content at another place is attended to differently.
    x, context = torch.randn(2, 8, 4, 6), torch.randn(2, 3, 5)

    def shifted_output_gap(position_code: bool) -> float:
        torch.manual_seed(1)
        if kind == "self":
            layer = SelfAttention(8, num_heads=2, groups=4, position_code=position_code)
            run = layer
        else:
            layer = PixelCrossAttention(8, num_heads=2, groups=4, context_dim=5, position_code=position_code)
            nn.init.normal_(layer.attention.proj.weight, std=0.3)  # live, not zero-initialised
            run = lambda h: layer(h, context, None)  # noqa: E731
        shift = lambda h: h.roll(shifts=(1, 2), dims=(2, 3))  # noqa: E731
        with torch.no_grad():
            return (run(shift(x)) - shift(run(x))).abs().amax().item()

    assert shifted_output_gap(position_code=False) < 1e-5
    assert shifted_output_gap(position_code=True) > 1e-2


def test_a_unet_with_the_position_code_runs_and_round_trips():
    config = {"kind": "unet", **SMALL_UNET, "in_channels": 3, "channel_mults": [1, 2], "position_code": True}
    net = build_network(config)
    perturb_output(net)
    x, level = torch.randn(2, 3, 8, 8), torch.zeros(2)
    rebuilt = build_network(network_config(net))
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(x, level), net(x, level))
    plain = build_network({**config, "position_code": False})
    plain.load_state_dict(net.state_dict())  # the code is fixed, not a weight
    assert (plain(x, level) - net(x, level)).abs().amax() > 1e-4


# ---------------------------------------------------------------- initialisation


# Networks are built inside the tests (from these factories) so the seed fixture applies.
@pytest.mark.parametrize(
    "make, x_shape",
    [
        (lambda: UNet(UNetConfig(num_classes=4, **SMALL_UNET)), (3, 1, 8, 8)),
        (lambda: MLP(MLPConfig(dim=2, num_classes=4)), (3, 2)),
    ],
    ids=["unet", "mlp"],
)
def test_fresh_network_predicts_zero(make, x_shape):
    net, x = make(), torch.randn(x_shape)
    out = net(x * 5, torch.tensor([-4.0, 0.0, 3.0]), torch.tensor([0, 3, 4]))
    assert torch.equal(out, torch.zeros_like(x))


# ---------------------------------------------------------------- conditioning


def conditional_nets():
    unet = UNet(UNetConfig(num_classes=5, **SMALL_UNET))
    mlp = MLP(MLPConfig(dim=3, hidden=32, depth=2, num_classes=5))
    return [(unet, torch.randn(4, 1, 8, 8)), (mlp, torch.randn(4, 3))]


@pytest.mark.parametrize("index", [0, 1], ids=["unet", "mlp"])
def test_labels_change_output_and_none_is_null_class(index):
    net, x = conditional_nets()[index]
    perturb_output(net)
    net.eval()
    noise = torch.full((4,), 0.5)
    with torch.no_grad():
        out_a = net(x, noise, torch.tensor([0, 0, 0, 0]))
        out_b = net(x, noise, torch.tensor([1, 2, 3, 4]))
        out_none = net(x, noise, None)
        out_null = net(x, noise, torch.full((4,), net.config.num_classes))
    # Every sample got a different label, so every sample's output must move.
    per_sample = (out_a - out_b).flatten(1).abs().amax(dim=1)
    assert (per_sample > 1e-4).all()
    assert torch.equal(out_none, out_null)
    assert not torch.allclose(out_none, out_a)


@pytest.mark.parametrize("index", [0, 1], ids=["unet", "mlp"])
def test_noise_level_changes_output(index):
    net, x = conditional_nets()[index]
    perturb_output(net)
    with torch.no_grad():
        low = net(x, torch.full((4,), -3.0))
        high = net(x, torch.full((4,), 2.0))
        nearby = net(x, torch.full((4,), -2.99))
    assert (low - high).abs().max() > 1e-3
    # A small step in c_noise is a small step in the output: the embedding is smooth.
    assert (low - nearby).abs().max() < (low - high).abs().max()


@pytest.mark.parametrize("index", [0, 1], ids=["unet", "mlp"])
def test_sample_does_not_depend_on_rest_of_batch(index):
    net, x = conditional_nets()[index]
    perturb_output(net)
    noise, labels = torch.linspace(-3, 2, 4), torch.tensor([0, 1, 5, 2])
    with torch.no_grad():
        whole = net(x, noise, labels)
        alone = net(x[1:2], noise[1:2], labels[1:2])
    torch.testing.assert_close(whole[1:2], alone, rtol=1e-4, atol=1e-5)


def test_scalar_noise_level_is_shared_by_the_batch():
    net = MLP(MLPConfig(dim=2, hidden=16, depth=1))
    perturb_output(net)
    x = torch.randn(3, 2)
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor(0.7)), net(x, torch.full((3,), 0.7)))


# ------------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "make, x_shape",
    [
        (lambda: UNet(UNetConfig(num_classes=3, **SMALL_UNET)), (4, 1, 8, 8)),
        (
            lambda: UNet(
                UNetConfig(channel_mults=(1, 2, 2), attention_levels=(1, 2), **SMALL_UNET)
            ),
            (2, 1, 28, 28),
        ),
        (lambda: MLP(MLPConfig(dim=2, hidden=32, depth=3, num_classes=3)), (4, 2)),
    ],
    ids=["unet8", "unet28", "mlp"],
)
def test_gradients_reach_every_parameter(make, x_shape):
    net, x = make(), torch.randn(x_shape)
    perturb_output(net)
    labels = torch.tensor([0, 1, 2, 3])[: x.shape[0]] if net.config.num_classes else None
    out = net(x, torch.empty(x.shape[0]).uniform_(-4, 3), labels)
    ((out - x) ** 2).mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


# ---------------------------------------------------------------- config round trip


@pytest.mark.parametrize(
    "make, x_shape",
    [
        (
            lambda: UNet(
                UNetConfig(
                    in_channels=3,
                    channel_mults=(1, 2, 2),
                    attention_levels=(2,),
                    num_classes=10,
                    dropout=0.1,
                    **SMALL_UNET,
                )
            ),
            (2, 3, 28, 28),
        ),
        (lambda: MLP(MLPConfig(dim=2, hidden=32, depth=2, num_classes=10, time_dim=16)), (2, 2)),
    ],
    ids=["unet", "mlp"],
)
def test_config_json_round_trip(make, x_shape):
    net, x = make(), torch.randn(x_shape)
    perturb_output(net)
    description = network_config(net)
    loaded = json.loads(json.dumps(description))
    assert loaded == description
    rebuilt = build_network(loaded)
    assert type(rebuilt) is type(net)
    assert rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    net.eval()
    rebuilt.eval()
    noise, labels = torch.tensor([-1.0, 2.0]), torch.tensor([3, 10])
    with torch.no_grad():
        expected = net(x, noise, labels)
        assert expected.abs().max() > 0
        assert torch.equal(rebuilt(x, noise, labels), expected)


def test_json_lists_become_tuples():
    net = build_network({"kind": "unet", "channel_mults": [1, 2, 2], "attention_levels": [1, 2]})
    assert net.config.channel_mults == (1, 2, 2)
    assert net.config.attention_levels == (1, 2)
    assert net.config == UNetConfig(channel_mults=(1, 2, 2), attention_levels=(1, 2))
    assert network_config(net)["channel_mults"] == [1, 2, 2]


def test_build_defaults():
    assert build_network({"kind": "mlp", "dim": 4}).config == MLPConfig(dim=4)
    assert build_network({"kind": "unet"}).config == UNetConfig()


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "config, message",
    [
        ({"kind": "transformer"}, "unknown network kind 'transformer'"),
        ({"channels": 16}, "needs a 'kind'"),
        ({"kind": "unet", "chanels": 16}, "unknown field(s) for 'unet': ['chanels']"),
        ({"kind": "mlp", "hidden": 8}, "missing required field(s) for 'mlp': ['dim']"),
        ({"kind": "mlp", "dim": 0}, "MLPConfig.dim must be a positive integer"),
        ({"kind": "mlp", "dim": 2, "time_dim": 7}, "time_dim must be even"),
        ({"kind": "mlp", "dim": 2, "num_classes": 0}, "num_classes must be a positive integer"),
        ({"kind": "unet", "channels": 40}, "channels=40 is not divisible by 32 GroupNorm groups"),
        ({"kind": "unet", "channels": 8, "norm_groups": 3}, "channels=8 is not divisible by 3"),
        ({"kind": "unet", "attention_levels": [2]}, "attention_levels entry 2 is not a level"),
        ({"kind": "unet", "num_heads": 3}, "not divisible by num_heads=3"),
        ({"kind": "unet", "channel_mults": []}, "at least one level"),
        ({"kind": "unet", "channel_mults": 2}, "channel_mults must be a list or tuple"),
        ({"kind": "unet", "dropout": 1.0}, "dropout must be a number in [0, 1)"),
        ({"kind": "unet", "position_code": 1}, "position_code must be true or false"),
        ({"kind": "unet", "channels": 6, "norm_groups": 3, "num_heads": 3, "channel_mults": [1, 1],
          "position_code": True}, "width 6, not divisible by 4 as position_code needs"),
        ({"kind": "unet", "middle_blocks": 3}, "middle_blocks must be 1 or 2"),
        ({"kind": "unet", "time_features": "fourier"}, "time_features must be one of"),
    ],
)
def test_bad_config_raises(config, message):
    with pytest.raises(ValueError) as error:
        build_network(config)
    assert message in str(error.value)


def test_small_widths_use_fewer_groups():
    # 16 channels with the default 32 groups: groups are capped at the width, not an error.
    net = UNet(UNetConfig(channels=16))
    assert net.input.out_channels == 16
    assert net(torch.randn(1, 1, 8, 8), torch.zeros(1)).shape == (1, 1, 8, 8)


def test_odd_channel_count_works():
    net = UNet(UNetConfig(channels=5, norm_groups=5, num_heads=5, num_res_blocks=1))
    perturb_output(net)
    assert net(torch.randn(2, 1, 8, 8), torch.zeros(2)).shape == (2, 1, 8, 8)


def test_network_config_rejects_unregistered_module():
    with pytest.raises(ValueError, match="not a registered network"):
        network_config(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "mults, size, odd",
    [((1, 2, 2), 30, "15x15"), ((1, 2), 7, "7x7"), ((1, 2, 2, 2), 28, "7x7")],
)
def test_unet_odd_size_raises(mults, size, odd):
    net = UNet(UNetConfig(channel_mults=mults, **SMALL_UNET))
    with pytest.raises(ValueError) as error:
        net(torch.randn(1, 1, size, size), torch.zeros(1))
    assert f"odd size {odd}" in str(error.value)
    assert f"{size}x{size}" in str(error.value)


def test_bad_call_arguments_raise():
    unet = UNet(UNetConfig(num_classes=3, **SMALL_UNET))
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"shape \[B, 1, H, W\]"):
        unet(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="noise_level must have shape"):
        unet(x, torch.zeros(3))
    with pytest.raises(ValueError, match="floating-point"):
        unet(x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        unet(x, torch.zeros(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="int64"):
        unet(x, torch.zeros(2), torch.tensor([0.0, 1.0]))
    mlp = MLP(MLPConfig(dim=2))
    with pytest.raises(ValueError, match="num_classes=None"):
        mlp(torch.randn(2, 2), torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \[B, 2\]"):
        mlp(torch.randn(2, 3), torch.zeros(2))


# ------------------------------------------------------------------- embedding


def test_sinusoidal_embedding_covers_the_noise_range():
    levels = torch.linspace(-5, 5, 1001)
    emb = sinusoidal_embedding(levels, 64)
    assert emb.shape == (1001, 64) and emb.dtype == torch.float32
    # Each column pair is (cos, sin) of one frequency, so it lies on the unit circle.
    torch.testing.assert_close(emb[:, :32] ** 2 + emb[:, 32:] ** 2, torch.ones(1001, 32))
    # The slowest sine is strictly increasing over the whole range, so the embedding is
    # one-to-one: no two noise levels in [-5, 5] collide.
    slowest_sine = emb[:, 32]
    assert (slowest_sine.diff() > 0).all()
    torch.testing.assert_close(slowest_sine, torch.sin(MIN_FREQUENCY * levels))
    # The fastest pair resolves a step of 0.01 in c_noise by about a radian of phase.
    fast = sinusoidal_embedding(torch.tensor([0.0, 0.01]), 64)
    assert (fast[0, 31:64:32] - fast[1, 31:64:32]).norm() > 0.5
    torch.testing.assert_close(fast[1, 63], torch.sin(torch.tensor(MAX_FREQUENCY * 0.01)))


def test_sinusoidal_embedding_rejects_bad_arguments():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.zeros(2), 7)
    with pytest.raises(ValueError, match="1-D"):
        sinusoidal_embedding(torch.zeros(2, 1), 8)


def test_timestep_features_are_ddpm_s_code():
    """cos / sin of n * 10000^(-k / half), k = 0 .. half - 1: DDPM's (and diffusers' Timesteps
    with flip_sin_to_cos), written out for one timestep."""
    from diffuse.models.embeddings import timestep_embedding
    n, dim = 37.0, 8
    frequencies = [10000 ** (-k / 4) for k in range(4)]
    expected = [math.cos(n * f) for f in frequencies] + [math.sin(n * f) for f in frequencies]
    torch.testing.assert_close(timestep_embedding(torch.tensor([n]), dim)[0], torch.tensor(expected))


def test_unet_with_a_second_middle_block():
    config = UNetConfig(middle_blocks=2, time_features="timestep", **SMALL_UNET)
    net = UNet(config)
    perturb_output(net)
    x, _ = unet_input(config, 8)
    out = net(x, torch.tensor([0.0, 500.0, 999.0]))
    assert out.shape == x.shape and net.middle2 is not None
    assert sum(p.numel() for p in net.parameters()) > sum(p.numel() for p in UNet(UNetConfig(**SMALL_UNET)).parameters())
