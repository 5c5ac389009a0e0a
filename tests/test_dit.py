"""Tests for the diffusion transformer: patches, adaLN-Zero initialisation, conditioning,
cross-attention, configs and a short training run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from diffuse.models import (
    DIT_CONFIGS,
    DiT,
    DiTConfig,
    build_network,
    dit_config,
    network_config,
)
from diffuse.models.dit import patchify, unpatchify
from diffuse.models.embeddings import position_embedding

# Small widths keep the file fast; the named sizes get their own test below.
TINY = dict(hidden=32, depth=2, num_heads=2)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def perturb_zero_init(net: torch.nn.Module) -> None:
    """Give every parameter that starts at zero (modulations, output, biases) random values,
    so every branch of every block is live."""
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.1)


def dit(**fields) -> DiT:
    return DiT(DiTConfig(**{**TINY, **fields}))


def noise_levels(batch: int) -> torch.Tensor:
    return torch.empty(batch).uniform_(-4, 3)


def block_inputs(net: DiT, batch: int = 3, context_length: int = 5):
    """Tokens, conditioning vector and (embedded) context as a block receives them."""
    c = net.config
    tokens = torch.randn(batch, c.grid[0] * c.grid[1], c.hidden)
    cond = torch.randn(batch, c.hidden)
    context = torch.randn(batch, context_length, c.hidden) if c.context_dim else None
    return tokens, cond, context


# ---------------------------------------------------------------- patches and positions


@pytest.mark.parametrize(
    "channels, height, width, patch",
    [(1, 8, 8, 2), (3, 8, 8, 4), (1, 28, 28, 4), (1, 28, 28, 7), (3, 32, 32, 2), (2, 6, 10, 2),
     (1, 5, 5, 1), (4, 12, 8, 4)],
)
def test_patchify_round_trip(channels, height, width, patch):
    x = torch.randn(2, channels, height, width)
    tokens = patchify(x, patch)
    assert tokens.shape == (2, (height // patch) * (width // patch), channels * patch * patch)
    assert torch.equal(unpatchify(tokens, patch, height, width), x)
    # Independent layout check: unfold with stride = kernel gives the same patch vectors.
    unfolded = F.unfold(x, kernel_size=patch, stride=patch).transpose(1, 2)
    assert torch.equal(tokens, unfolded)


def test_patch_embedding_is_a_strided_conv():
    net = dit(in_channels=3, image_size=8, patch_size=4)
    x = torch.randn(2, 3, 8, 8)
    weight = net.patch_embed.weight.reshape(32, 3, 4, 4)
    conv = F.conv2d(x, weight, net.patch_embed.bias, stride=4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(net.patch_embed(patchify(x, 4)), conv, rtol=1e-5, atol=1e-5)


def test_unpatchify_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="not the 2x2 patches of a 8x8 image"):
        unpatchify(torch.zeros(1, 15, 4), 2, 8, 8)
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        patchify(torch.zeros(1, 1, 8, 8), 3)


def test_position_embedding_is_fixed_and_distinct():
    code = position_embedding(7, 5, 32)
    assert code.shape == (35, 32)
    # Every patch gets its own code, and row and column halves vary independently.
    assert torch.cdist(code, code).add(torch.eye(35) * 1e3).min() > 0.1
    rows, cols = code.reshape(7, 5, 32)[..., :16], code.reshape(7, 5, 32)[..., 16:]
    assert torch.equal(rows, rows[:, :1].expand_as(rows))
    assert torch.equal(cols, cols[:1].expand_as(cols))
    net = dit(image_size=(14, 10), patch_size=2)
    assert torch.equal(net.position, position_embedding(7, 5, 32))
    # Derived from the config, so neither learned nor saved with the weights.
    assert all(p is not net.position for p in net.parameters())
    assert "position" not in net.state_dict()


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("context_dim", [None, 6], ids=["plain", "cross"])
def test_every_block_is_the_identity_at_init(context_dim):
    net = dit(context_dim=context_dim, num_classes=3)
    tokens, cond, context = block_inputs(net)
    mask = torch.rand(3, 5) > 0.3 if context_dim else None
    for block in net.blocks:
        assert torch.equal(block(tokens * 10, cond, context, mask), tokens * 10)
    x = torch.randn(3, 1, 8, 8) * 5
    extra = {"context": torch.randn(3, 5, 6), "context_mask": mask} if context_dim else {}
    out = net(x, torch.tensor([-4.0, 0.0, 3.0]), torch.tensor([0, 2, 3]), **extra)
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("context_dim", [None, 6], ids=["plain", "cross"])
def test_perturbed_blocks_move_and_gradients_reach_every_parameter(context_dim):
    net = dit(context_dim=context_dim, num_classes=3, dropout=0.1)
    perturb_zero_init(net)
    tokens, cond, context = block_inputs(net)
    for block in net.blocks:
        assert (block(tokens, cond, context) - tokens).abs().max() > 1e-3
    x = torch.randn(4, 1, 8, 8)
    extra = {"context": torch.randn(4, 5, 6)} if context_dim else {}
    out = net(x, noise_levels(4), torch.tensor([0, 1, 2, 3]), **extra)
    ((out - x) ** 2).mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


# ---------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "in_channels, image_size, patch",
    [(1, 8, 2), (1, 28, 2), (1, 28, 4), (3, 32, 2), (3, 32, 4), (2, (8, 12), 4)],
)
def test_output_shape(in_channels, image_size, patch):
    net = dit(in_channels=in_channels, image_size=image_size, patch_size=patch)
    perturb_zero_init(net)
    height, width = net.config.image_hw
    x = torch.randn(2, in_channels, height, width)
    out = net(x, noise_levels(2))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_out_channels():
    net = dit(in_channels=3, out_channels=6)
    assert net(torch.randn(2, 3, 8, 8), torch.zeros(2)).shape == (2, 6, 8, 8)
    assert DiTConfig(in_channels=3).out_channels == 3


# ---------------------------------------------------------------- conditioning


def test_labels_change_output_and_none_is_null_class():
    net = dit(num_classes=5)
    perturb_zero_init(net)
    x, noise = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    with torch.no_grad():
        out_a = net(x, noise, torch.tensor([0, 0, 0, 0]))
        out_b = net(x, noise, torch.tensor([1, 2, 3, 4]))
        out_none = net(x, noise, None)
        out_null = net(x, noise, torch.full((4,), 5))
    assert ((out_a - out_b).flatten(1).abs().amax(dim=1) > 1e-4).all()
    assert torch.equal(out_none, out_null)
    assert not torch.allclose(out_none, out_a)


def test_noise_level_changes_output_smoothly():
    net = dit()
    perturb_zero_init(net)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        low, high = net(x, torch.full((2,), -3.0)), net(x, torch.full((2,), 2.0))
        nearby = net(x, torch.full((2,), -2.99))
    assert (low - high).abs().max() > 1e-3
    assert (low - nearby).abs().max() < (low - high).abs().max()


def test_sample_does_not_depend_on_rest_of_batch():
    net = dit(num_classes=5, context_dim=4)
    perturb_zero_init(net)
    x, noise, labels = torch.randn(4, 1, 8, 8), torch.linspace(-3, 2, 4), torch.tensor([0, 1, 5, 2])
    context, mask = torch.randn(4, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    with torch.no_grad():
        whole = net(x, noise, labels, context=context, context_mask=mask.bool())
        alone = net(x[1:2], noise[1:2], labels[1:2], context=context[1:2, :1])
    torch.testing.assert_close(whole[1:2], alone, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- cross-attention


def cross_net() -> DiT:
    net = dit(context_dim=6)
    perturb_zero_init(net)
    return net.eval()


def test_output_depends_on_context():
    net = cross_net()
    x, noise = torch.randn(3, 1, 8, 8), noise_levels(3)
    with torch.no_grad():
        a = net(x, noise, context=torch.randn(3, 4, 6))
        b = net(x, noise, context=torch.randn(3, 4, 6))
        none = net(x, noise)
    assert ((a - b).flatten(1).abs().amax(dim=1) > 1e-4).all()
    assert ((a - none).flatten(1).abs().amax(dim=1) > 1e-4).all()


def test_mask_excludes_padded_tokens():
    net = cross_net()
    x, noise = torch.randn(3, 1, 8, 8), noise_levels(3)
    lengths = torch.tensor([2, 4, 1])
    mask = torch.arange(4)[None, :] < lengths[:, None]
    context = torch.randn(3, 4, 6)
    scrambled = torch.where(mask[..., None], context, torch.randn(3, 4, 6) * 100)
    with torch.no_grad():
        out = net(x, noise, context=context, context_mask=mask)
        assert torch.equal(net(x, noise, context=scrambled, context_mask=mask), out)
        # Masking the padding is the same as not having it.
        for i, n in enumerate(lengths.tolist()):
            alone = net(x[i : i + 1], noise[i : i + 1], context=context[i : i + 1, :n])
            torch.testing.assert_close(out[i : i + 1], alone, rtol=1e-4, atol=1e-5)
        # Without the mask the padding is attended to.
        assert not torch.allclose(net(x, noise, context=scrambled), out)


def test_fully_masked_or_empty_context_means_no_context():
    net = cross_net()
    x, noise = torch.randn(2, 1, 8, 8), noise_levels(2)
    with torch.no_grad():
        none = net(x, noise)
        masked = net(x, noise, context=torch.randn(2, 3, 6), context_mask=torch.zeros(2, 3).bool())
        empty = net(x, noise, context=torch.zeros(2, 0, 6))
    assert torch.isfinite(masked).all()
    assert torch.equal(masked, none)
    assert torch.equal(empty, none)


def test_context_arguments_are_checked():
    plain, cross = dit(), dit(context_dim=6)
    x, noise = torch.randn(2, 1, 8, 8), torch.zeros(2)
    with pytest.raises(ValueError, match="context_dim=None"):
        plain(x, noise, context=torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match=r"context must be a float tensor \[2, L, 6\]"):
        cross(x, noise, context=torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"context must be a float tensor \[2, L, 6\]"):
        cross(x, noise, context=torch.randn(3, 3, 6))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        cross(x, noise, context=torch.randn(2, 3, 6), context_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="context_mask must be a bool tensor"):
        cross(x, noise, context=torch.randn(2, 3, 6), context_mask=torch.ones(2, 4).bool())
    with pytest.raises(ValueError, match="without a context"):
        cross(x, noise, context_mask=torch.ones(2, 3).bool())
    with pytest.raises(TypeError):
        cross(x, noise, None, torch.randn(2, 3, 6))  # context is keyword-only


def test_bad_call_arguments_raise():
    net = dit(num_classes=3)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"shape \[B, 1, 8, 8\]"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \[B, 1, 8, 8\]"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="noise_level must have shape"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        net(x, torch.zeros(2), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="num_classes=None"):
        dit()(x, torch.zeros(2), torch.tensor([0, 1]))


# ---------------------------------------------------------------------- configs


def test_config_json_round_trip():
    net = dit(in_channels=3, image_size=(8, 12), patch_size=4, num_classes=10, context_dim=6,
              mlp_ratio=2, dropout=0.1)
    perturb_zero_init(net)
    description = network_config(net)
    assert description["kind"] == "dit" and description["image_size"] == [8, 12]
    loaded = json.loads(json.dumps(description))
    assert loaded == description
    rebuilt = build_network(loaded)
    assert type(rebuilt) is DiT and rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())
    net.eval(), rebuilt.eval()
    x, noise, labels = torch.randn(2, 3, 8, 12), torch.tensor([-1.0, 2.0]), torch.tensor([3, 10])
    context = torch.randn(2, 4, 6)
    with torch.no_grad():
        expected = net(x, noise, labels, context=context)
        assert expected.abs().max() > 0
        assert torch.equal(rebuilt(x, noise, labels, context=context), expected)


def test_build_defaults_and_square_size_stays_an_int():
    net = build_network({"kind": "dit"})
    assert net.config == DiTConfig()
    assert network_config(net)["image_size"] == 8
    assert DiTConfig(image_size=[28, 28], patch_size=4).grid == (7, 7)


@pytest.mark.parametrize(
    "name, hidden, depth, heads, count",
    [("DiT-XS", 96, 4, 3, 710_500), ("DiT-S", 192, 6, 3, 4_136_260),
     ("DiT-B", 384, 8, 6, 21_776_260)],
)
def test_named_sizes(name, hidden, depth, heads, count):
    description = dit_config(name)
    assert description["kind"] == "dit"
    assert (description["hidden"], description["depth"], description["num_heads"]) == (
        hidden, depth, heads)
    # The description lists every field, so it does not lean on the table when reloaded.
    assert set(description) == {"kind", *DiTConfig.__dataclass_fields__}
    assert description == json.loads(json.dumps(description))
    if name != "DiT-B":  # building the largest would only cost time
        net = build_network(description)
        assert sum(p.numel() for p in net.parameters()) == count
    else:
        with torch.device("meta"):
            net = build_network(description)
        assert sum(p.numel() for p in net.parameters()) == count


def test_named_size_overrides():
    description = dit_config("DiT-XS", in_channels=3, image_size=[32, 32], patch_size=4,
                             num_classes=10, depth=2)
    assert description["depth"] == 2 and description["image_size"] == [32, 32]
    net = build_network(description)
    out = net(torch.randn(1, 3, 32, 32), torch.zeros(1), torch.tensor([10]))
    assert out.shape == (1, 3, 32, 32)
    assert set(DIT_CONFIGS) == {"DiT-XS", "DiT-S", "DiT-B"}
    with pytest.raises(ValueError, match="unknown DiT size 'DiT-XL'"):
        dit_config("DiT-XL")
    with pytest.raises(ValueError, match=r"unknown field\(s\) for 'dit': \['preset'\]"):
        dit_config("DiT-S", preset="DiT-B")
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        dit_config("DiT-S", image_size=28, patch_size=3)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"image_size": 28, "patch_size": 3}, "image_size 28x28 is not divisible by patch_size=3"),
        ({"image_size": [8, 10], "patch_size": 4}, "image_size 8x10 is not divisible by"),
        ({"image_size": [8, 8, 8]}, "image_size must be an int or (height, width)"),
        ({"image_size": 0}, "DiTConfig.image_size must be a positive integer"),
        ({"image_size": [8, 0]}, "image_size entry must be a positive integer"),
        ({"hidden": 30, "num_heads": 4}, "hidden=30 is not divisible by num_heads=4"),
        ({"hidden": 6, "num_heads": 3}, "hidden=6 must be divisible by 4"),
        ({"depth": 0}, "DiTConfig.depth must be a positive integer"),
        ({"patch_size": True}, "DiTConfig.patch_size must be a positive integer"),
        ({"num_classes": 0}, "num_classes must be a positive integer"),
        ({"context_dim": 0}, "context_dim must be a positive integer"),
        ({"mlp_ratio": 0}, "mlp_ratio must be a positive number"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
        ({"preset": "DiT-S"}, "unknown field(s) for 'dit': ['preset']"),
    ],
)
def test_bad_config_raises(fields, message):
    with pytest.raises(ValueError) as error:
        build_network({"kind": "dit", **fields})
    assert message in str(error.value)


# ---------------------------------------------------------------------- training


def test_trains_and_loads(tmp_path):
    import diffuse
    from _tiny import run_config
    from diffuse.training import Engine

    network = {"kind": "dit", "in_channels": 1, "image_size": 8, "patch_size": 2, "hidden": 32,
               "depth": 1, "num_heads": 2, "num_classes": 10}
    config = run_config(data="digits", cond="class", network=network, batch_size=16, steps=2,
                        checkpoint_every=2, grid_size=4, sample_steps=2)
    engine = Engine(config, tmp_path, progress=False)
    engine.fit()
    pipeline = diffuse.load(tmp_path)
    model = pipeline.model
    assert isinstance(model.net, DiT) and pipeline.config.task.network == network
    x, t, labels = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 0.7]), torch.tensor([1, 10])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, labels), engine.ema.eval()(x, t, labels))


def test_the_denoiser_passes_a_text_context_through():
    from diffuse import EDM, Denoiser
    from diffuse.models import build_network, dit_config
    torch.manual_seed(0)
    net = build_network(dit_config("DiT-XS", context_dim=8))
    for p in net.parameters():  # leave the zero initialisation so the context can matter
        p.data.add_(0.02 * torch.randn_like(p))
    model = Denoiser(net, EDM(), prediction="x0", preconditioning="edm")
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    a = model(x, t, context=torch.randn(2, 3, 8))
    b = model(x, t, context=torch.randn(2, 3, 8))
    assert not torch.allclose(a, b)
