"""Text conditioning: the encoder, cross-attention in the U-Net, and training on captions."""

from __future__ import annotations

import pytest
import torch

from diffuse.checkpoint import latest_checkpoint, load_json
from diffuse.data import load_dataset
from diffuse.models import build_network, network_config, text_network
from diffuse.models.text import PAD_ID, TextEncoder
from diffuse.text import WordTokenizer
import diffuse
from _tiny import run_config
from diffuse.training import Engine

UNET = {"kind": "unet", "in_channels": 3, "channels": 16, "channel_mults": [1, 2], "attention_levels": [1]}
DIT = {"kind": "dit", "in_channels": 3, "image_size": 8, "patch_size": 2, "hidden": 32, "depth": 1, "num_heads": 2}
POOLED = [{**UNET, "pooled_context": True}, {**DIT, "pooled_context": True}]


def text_net(seed: int = 0, denoiser=UNET):
    torch.manual_seed(seed)
    return build_network(text_network(denoiser, vocab_size=12, max_length=6, width=32, layers=1))


def perturbed(net, scale: float = 0.05):
    """The network with every parameter nudged, so zero-initialised branches are live."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn_like(p))
    return net


@pytest.mark.parametrize("denoiser", [UNET, DIT, *POOLED])
def test_the_null_text_is_no_context_and_real_text_changes_the_output(denoiser):
    net = perturbed(text_net(denoiser=denoiser)).eval()
    x, level = torch.randn(3, 3, 8, 8), torch.tensor([-1.0, 0.0, 1.0])
    tokens = torch.tensor([[2, 5, 7, 3, 0, 0], [2, 6, 3, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = net(x, level, tokens=tokens)
    without = net(x, level)
    torch.testing.assert_close(out[2], without[2])                 # all padding: exactly no context
    assert (out[:2] - without[:2]).abs().amax() > 1e-3              # words matter
    other = net(x, level, tokens=torch.tensor([[2, 9, 7, 3, 0, 0]] * 3))
    assert (other[0] - out[0]).abs().amax() > 1e-4                  # and which words
    padded = net(x[:1], level[:1], tokens=torch.tensor([[2, 5, 7, 3]]))
    torch.testing.assert_close(padded, out[:1], atol=1e-5, rtol=1e-5)   # padding is masked out


def test_a_fresh_encoder_reads_word_order_not_only_the_bag_of_words():
    # "a red circle left of a blue square" and "a blue circle left of a red square" hold the same
    # words. Cross-attention sees the encoder's outputs as a set, so a word's output must depend
    # on where it stands. With words embedded at N(0, 1) (nn.Embedding's default) and positions
    # at 0.02 it moved ~1%, and a trained shapes model scored the two captions alike.
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    swap = [0, 6, 2, 3, 4, 5, 1, 7, 8]  # the second and seventh words trade places
    for seed in range(3):
        torch.manual_seed(seed)
        encoder = TextEncoder(vocab_size=12, max_length=9, width=64, layers=2, num_heads=4).eval()
        assert not encoder.token.weight[PAD_ID].any()
        out, _ = encoder(tokens)
        moved, _ = encoder(tokens[:, swap])
        # each word's output where the word now stands, against where it stood
        assert (moved[:, swap] - out).norm() / out.norm() > 0.05


def test_a_causal_encoder_reads_each_word_in_the_light_of_the_words_before_it_only():
    # "a red circle left of a blue square" against "... right of ...": the first object's outputs
    # are untouched by the relation word, the second object's carry it (TextEncoder's docstring).
    tokens = torch.tensor([[2, 4, 5, 6, 7, 8, 4, 9, 10, 3], [2, 4, 5, 6, 11, 8, 4, 9, 10, 3]])
    for causal in (False, True):
        torch.manual_seed(0)
        encoder = TextEncoder(vocab_size=12, max_length=12, width=32, layers=2, num_heads=4, causal=causal).eval()
        out, _ = encoder(tokens)
        change = (out[0] - out[1]).norm(dim=-1) / out[0].norm(dim=-1)
        assert (change[4:] > 0.01).all()                  # the relation word and what follows it
        if causal:
            assert (change[:4] == 0).all()
        else:
            assert (change[:4] > 0.01).all()
        # padding on the right and the null text behave as in the bidirectional encoder
        padded, padded_mask = encoder(torch.cat([tokens, torch.zeros(2, 2, dtype=torch.long)], dim=1))
        torch.testing.assert_close(padded[:, :10], out, atol=1e-5, rtol=1e-5)
        assert not padded_mask[:, 10:].any()
        null, _ = encoder(torch.zeros(1, 5, dtype=torch.long))
        assert torch.isfinite(null).all()


def test_causal_is_a_stored_choice_of_the_text_network():
    config = text_network(UNET, vocab_size=12, max_length=6, width=32, layers=1, causal=True)
    net = build_network(config)
    assert net.text.causal and network_config(net)["causal"] is True
    assert not build_network({**config, "causal": False}).text.causal
    with pytest.raises(ValueError, match="causal must be true or false"):
        build_network({**config, "causal": 1})


@pytest.mark.parametrize("denoiser", [UNET, DIT])
def test_the_pooled_text_reaches_the_conditioning_vector_without_cross_attention(denoiser):
    from diffuse.models.attention import CrossAttention

    def silenced(pooled: bool):
        """The network with every cross-attention's output zeroed: only the pooled text is left."""
        net = perturbed(text_net(denoiser={**denoiser, "pooled_context": pooled})).eval()
        for module in net.modules():
            if isinstance(module, CrossAttention):
                torch.nn.init.zeros_(module.proj.weight)
                torch.nn.init.zeros_(module.proj.bias)
        return net

    x, level = torch.randn(2, 3, 8, 8), torch.zeros(2)
    tokens = torch.tensor([[2, 5, 7, 3, 0, 0], [0, 0, 0, 0, 0, 0]])
    plain = silenced(pooled=False)
    torch.testing.assert_close(plain(x, level, tokens=tokens), plain(x, level))  # the control: no way in
    net = silenced(pooled=True)
    out, without = net(x, level, tokens=tokens), net(x, level)
    assert (out[0] - without[0]).abs().amax() > 1e-3
    torch.testing.assert_close(out[1], without[1])  # the null text adds nothing
    # the mean runs over real tokens only: the same words padded to another length give the same
    torch.testing.assert_close(net(x[:1], level[:1], tokens=tokens[:1, :4]), out[:1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("denoiser", [UNET, DIT])
def test_pooled_context_needs_a_context_and_a_boolean(denoiser):
    with pytest.raises(ValueError, match="pooled_context needs a context"):
        build_network({**denoiser, "pooled_context": True})
    with pytest.raises(ValueError, match="pooled_context must be true or false"):
        build_network({**denoiser, "context_dim": 8, "pooled_context": "yes"})


@pytest.mark.parametrize("denoiser", [UNET, POOLED[0]])
def test_a_fresh_text_network_ignores_the_text_until_trained(denoiser):
    # cross-attention branches and the pooled projection start at zero, so text is added to a
    # working network smoothly
    net = text_net(denoiser=denoiser).eval()
    for module in net.denoiser.modules():
        if hasattr(module, "output"):
            torch.nn.init.normal_(module.output.weight, std=0.1)
    x, level = torch.randn(2, 3, 8, 8), torch.zeros(2)
    torch.testing.assert_close(net(x, level, tokens=torch.tensor([[2, 5, 3], [2, 6, 3]])), net(x, level))


def test_text_network_config_round_trips_and_refuses_bad_input():
    net = text_net()
    config = network_config(net)
    assert config["denoiser"]["context_dim"] == 32
    rebuilt = build_network(config)
    rebuilt.load_state_dict(net.state_dict())
    with pytest.raises(ValueError, match="context_dim"):
        build_network(text_network({**UNET, "context_dim": 8}, vocab_size=12, width=32))
    with pytest.raises(ValueError, match="max_length"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1), tokens=torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="0..11"):
        net(torch.randn(1, 3, 8, 8), torch.zeros(1), tokens=torch.tensor([[2, 12]]))
    with pytest.raises(ValueError, match="context_dim=None"):
        build_network(UNET)(torch.randn(1, 3, 8, 8), torch.zeros(1), context=torch.randn(1, 2, 32))


def shapes_config(**overrides):
    network = text_network({**UNET, "channels": 8}, vocab_size=17, max_length=10, width=16, layers=1)
    settings = dict(data="shapes", cond="text", network=network, batch_size=8, steps=2, checkpoint_every=2,
                    grid_size=2, sample_steps=2, warmup_steps=1, label_dropout=0.5)
    return run_config(**{**settings, **overrides})


def conditions_given(engine: Engine, step: int = 0) -> dict:
    """What the network is given with the batch of `step` (the null text where dropped)."""
    seen = {}

    def model(x, t, **cond):
        seen.update(cond)
        return torch.zeros_like(x)

    engine.task.loss(model, engine.batch_at(step), torch.Generator().manual_seed(0))
    return seen


def test_training_on_captions_stores_the_tokenizer_and_drops_text_to_padding(tmp_path):
    data = load_dataset("shapes", "train", n=64)
    engine = Engine(shapes_config(), tmp_path, dataset=data, progress=False)
    tokenizer = WordTokenizer.fit(data.captions)
    assert engine.task.tokenizer == tokenizer and len(tokenizer) == 17
    tokens = conditions_given(engine)["tokens"]
    dropped = (tokens == 0).all(dim=1)
    assert 0 < dropped.sum() < len(dropped)                       # some rows are the null text
    kept = tokens[~dropped]
    assert all(text in data.captions for text in tokenizer.decode(kept))
    engine.fit()
    stored = load_json(latest_checkpoint(tmp_path) / "config.json")
    assert WordTokenizer.from_dict(stored["state"]["tokenizer"]) == tokenizer
    resumed = Engine(shapes_config(steps=3), tmp_path, resume=True, dataset=data, progress=False)
    assert resumed.task.tokenizer == tokenizer and resumed.step == 2


def test_text_conditioning_needs_captions(tmp_path):
    with pytest.raises(ValueError, match="captioned"):
        Engine(shapes_config(data="digits", network=None), tmp_path, progress=False)


def test_an_image_network_given_for_text_is_wrapped_and_sizes_are_filled_in(tmp_path):
    data = load_dataset("shapes", "train", n=64)
    dit = {"kind": "dit", "in_channels": 3, "image_size": 32, "patch_size": 8, "hidden": 16, "depth": 1,
           "num_heads": 2}
    engine = Engine(shapes_config(network=dit), tmp_path / "dit", dataset=data, progress=False)
    network = engine.config.task.network
    assert network["kind"] == "text" and network["denoiser"]["kind"] == "dit" and network["vocab_size"] == 17
    engine.fit()
    partial = {"kind": "text", "denoiser": {**UNET, "channels": 8}, "width": 16, "layers": 1}
    engine = Engine(shapes_config(network=partial), tmp_path / "unet", dataset=data, progress=False)
    assert engine.config.task.network["max_length"] == engine.examples.columns["tokens"].shape[1]
    with pytest.raises(ValueError, match="vocab_size 5"):
        Engine(shapes_config(network={**partial, "vocab_size": 5}), tmp_path / "bad", dataset=data, progress=False)


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_the_text_encoder_learns_at_its_own_rate_and_at_zero_stays_as_initialised(tmp_path, scale):
    data = load_dataset("shapes", "train", n=64)
    engine = Engine(shapes_config(text_lr_scale=scale, steps=3, checkpoint_every=3), tmp_path, dataset=data,
                    progress=False)
    encoder = {k: v.clone() for k, v in engine.model.net.text.state_dict().items()}
    image = {k: v.clone() for k, v in engine.model.net.denoiser.state_dict().items()}
    engine.fit()
    moved = lambda before, module: any(not torch.equal(v, module.state_dict()[k]) for k, v in before.items())  # noqa: E731
    assert moved(image, engine.model.net.denoiser)
    assert moved(encoder, engine.model.net.text) == (scale > 0)
    if scale:
        lrs = [group["lr"] for group in engine.optimizer.param_groups]
        assert lrs[1] == pytest.approx(scale * lrs[0]) and lrs[0] > 0
    # the choice is stored with the run, and a resumed run keeps it
    resumed = Engine(shapes_config(text_lr_scale=scale, steps=4, checkpoint_every=4), tmp_path, resume=True,
                     dataset=data, progress=False)
    assert resumed.config.task.text_lr_scale == scale
    assert [g.get("lr_scale", 1.0) for g in resumed.optimizer.param_groups] == [1.0] + ([scale] if scale else [])
    resumed.fit()
    assert moved(encoder, resumed.model.net.text) == (scale > 0)
    with pytest.raises(ValueError, match="keeps its task, data and seed.*task.text_lr_scale"):
        Engine(shapes_config(text_lr_scale=scale + 0.25, steps=5), tmp_path, resume=True, dataset=data, progress=False)


def test_text_lr_scale_is_checked():
    with pytest.raises(ValueError, match=r"text_lr_scale must be a finite number in \[0, inf\]"):
        shapes_config(text_lr_scale=-1.0)
    with pytest.raises(ValueError, match="text_lr_scale applies to a text encoder"):
        run_config(data="digits", cond="class", text_lr_scale=0.0)


def test_prompts_condition_sampling_and_guidance_uses_the_null_text(tmp_path):
    data = load_dataset("shapes", "train", n=64)
    Engine(shapes_config(), tmp_path, dataset=data, progress=False).fit()
    pipeline = diffuse.load(tmp_path)
    perturbed(pipeline.model.net)  # live cross-attention, so the text matters
    tokens = pipeline.tokenizer.encode(["a red circle", "a blue square left of a green triangle"], max_length=10)
    draw = lambda **kw: pipeline.sample(2, steps=2, **kw)  # noqa: E731
    plain, guided = draw(tokens=tokens), draw(tokens=tokens, guidance=3.0)
    null, unconditional = draw(tokens=torch.zeros_like(tokens)), draw()
    assert plain.shape == (2, 3, 32, 32) and torch.isfinite(guided).all()
    torch.testing.assert_close(null, unconditional)          # the null text is the unconditional model
    torch.testing.assert_close(draw(tokens=tokens, guidance=0.0), plain)
    assert (plain - null).abs().amax() > 1e-3 and (guided - plain).abs().amax() > 1e-3
    torch.testing.assert_close(draw(prompt=["a red circle", "a blue square left of a green triangle"]), plain)
    with pytest.raises(ValueError, match=r"tokens must be \[n=3"):
        pipeline.sample(3, tokens=tokens)
    digits = Engine(run_config(data="digits", network={**UNET, "in_channels": 1}, steps=1, grid_size=1,
                               sample_steps=1, batch_size=8), tmp_path / "digits", progress=False)
    with pytest.raises(ValueError, match="not trained on text"):
        digits.task.pipeline(digits.model).sample(2, tokens=tokens)


def test_cli_trains_on_captions_and_samples_a_prompt(tmp_path):
    import contextlib
    import io
    import json

    from PIL import Image

    from diffuse.cli import main

    dit = {"kind": "dit", "image_size": 32, "patch_size": 8, "hidden": 16, "depth": 1, "num_heads": 2}
    run = tmp_path / "run"
    assert main(["train", "--data", "shapes", "--cond", "text", "--network", json.dumps(dit), "--out", str(run),
                 "--steps", "2", "--batch-size", "8", "--checkpoint-every", "2", "--sample-steps", "2",
                 "--warmup-steps", "1", "--text-lr-scale", "0.25", "--quiet"]) == 0
    assert json.loads((latest_checkpoint(run) / "config.json").read_text())["run"]["task"]["text_lr_scale"] == 0.25
    out = tmp_path / "red.png"
    assert main(["sample", str(run), "--prompt", "a red circle above a blue square", "--prompt", "a green triangle",
                 "--guidance", "2", "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 32
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["sample", str(run), "--prompt", "a purple circle", "--n", "1", "--steps", "2",
                     "--out", str(tmp_path / "purple.png")]) == 0
    assert "never saw in training are read as unknown: purple" in printed.getvalue()


class RenderingDenoiser(torch.nn.Module):
    """A text model that knows the answer: whatever the noise, its x0 is the rendered picture of
    the caption its tokens spell (or of `fixed`, a caption it draws for every prompt)."""

    def __init__(self, tokenizer: WordTokenizer, fixed: str | None = None):
        from types import SimpleNamespace

        from diffuse.process import EDM

        super().__init__()
        self.tokenizer, self.fixed = tokenizer, fixed
        self.net = SimpleNamespace(config=SimpleNamespace(max_length=10))
        self.process, self.prediction = EDM(), "x0"

    def forward(self, x, t, tokens):
        from diffuse.data.shapes import render

        captions = [self.fixed or text for text in self.tokenizer.decode(tokens)]
        return render(captions).to(x)


def text_pipeline(model, tokenizer, **kw):
    """A text model behind the sampling pipeline of a shapes run."""
    from diffuse.conditions import text_tokens
    from diffuse.pipeline import Pipeline

    return Pipeline(model, load_dataset("shapes", "test", n=1).info(), (text_tokens(),), tokenizer=tokenizer, **kw)


def test_exact_caption_accuracy_reads_samples_back_against_their_captions():
    from diffuse.data.shapes.scoring import exact_caption_accuracy

    captions = load_dataset("shapes", "heldout", n=24).captions
    tokenizer = WordTokenizer.fit(load_dataset("shapes", "train", n=500).captions)
    score = lambda model: exact_caption_accuracy(text_pipeline(model, tokenizer), captions, steps=4)  # noqa: E731
    assert score(RenderingDenoiser(tokenizer)) == 1.0
    one_picture = score(RenderingDenoiser(tokenizer, fixed=captions[0]))
    assert one_picture == sum(c == captions[0] for c in captions) / len(captions) < 0.5


def test_cli_eval_of_a_text_run_scores_seen_and_heldout_captions(tmp_path):
    import json

    from diffuse.cli import main

    Engine(shapes_config(data="shapes", options={"n": 64}), tmp_path / "run", progress=False).fit()
    out = tmp_path / "scores.json"
    assert main(["eval", str(tmp_path / "run"), "--n", "3", "--steps", "2", "--guidance", "1", "--out", str(out)]) == 0
    stored = json.loads(out.read_text())
    assert set(stored["exact_caption_accuracy"]) == {"test", "heldout"} and stored["guidance"] == 1.0
    assert all(0.0 <= v <= 1.0 for v in stored["exact_caption_accuracy"].values())
    for split, outcomes in stored["outcomes"].items():  # the share of each first error, and of exact
        assert set(outcomes) == {"exact", "count", "colour", "shape", "relation"}
        assert outcomes["exact"] == stored["exact_caption_accuracy"][split]
        assert sum(outcomes.values()) == pytest.approx(1.0)
    for rise in stored["loss_rise"].values():  # the loss with each caption altered, or the null text
        assert set(rise) == {"colours", "shapes", "relation", "null"}
        assert isinstance(rise["null"], float)
    assert main(["eval", str(tmp_path / "run"), "--n", "1", "--classifier", str(tmp_path / "run")]) == 1


def test_the_loss_rise_is_zero_for_a_bag_of_words_model_and_not_with_word_order():
    from diffuse.data.shapes import parse_caption
    from diffuse.data.shapes.scoring import caption_loss_rise
    from diffuse.denoiser import Denoiser
    from diffuse.process import EDM

    data = load_dataset("shapes", "heldout", n=6)  # two objects, colours and shapes mostly distinct
    tokenizer = WordTokenizer.fit(data.captions)
    torch.manual_seed(0)
    net = perturbed(build_network(text_network(UNET, vocab_size=len(tokenizer), max_length=10, width=32,
                                               layers=1, num_heads=2)), scale=0.3).eval()
    model = Denoiser(net, EDM(), "x0", "edm")
    pipeline = text_pipeline(model, tokenizer, loss=run_config(data="shapes", cond="text").task.denoising_loss(EDM()))
    rise = lambda: caption_loss_rise(pipeline, data.data, data.captions, repeats=2)  # noqa: E731
    with_order = rise()
    with torch.no_grad():
        net.text.position.zero_()  # the encoder now sees a set of words: any order reads the same
    bag = rise()
    assert set(bag) == {"colours", "shapes", "relation", "null"}
    for part in ("colours", "shapes"):  # the same words in another order: no rise at all
        assert abs(bag[part]) < 1e-6 and abs(with_order[part]) > 3e-5
    assert abs(bag["relation"]) > 1e-4  # "left" and "right" are different words even in a bag
    # worded canonically, "A left of B" reversed is "B left of A": the same words again
    worded = [str(parse_caption(c).canonical()) for c in data.captions]
    canonical = caption_loss_rise(pipeline, data.data, worded, repeats=2, canonical_wording=True)
    assert abs(canonical["relation"]) < 1e-6
    assert abs(bag["null"]) > 1e-4
    # an alteration that keeps the picture is left out; with none left there is no share
    red = ["a red circle above a red square", "a red square left of a red triangle"]
    same = caption_loss_rise(pipeline, data.data[:2], red, repeats=1)
    assert same["colours"] is None and same["shapes"] is not None
