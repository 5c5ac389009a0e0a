import pytest
import torch

import diffuse
from diffuse import EDM, VP, Flow, GaussianMixture
from diffuse.guidance import ClassifierFreeGuidance, ClassifierGuidance

MIXTURE = GaussianMixture([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]], [0.3, 0.3, 0.3], [0.5, 0.3, 0.2])


class ToyConditional:
    """A conditional model with a known output: eps(x, c) = x * (1 + c) / 10, null = 3."""

    prediction = "eps"

    def __call__(self, x, t, labels=None):
        return x * (1 + labels.to(x.dtype))[:, None] / 10 + t[:, None].to(x.dtype)


def test_cfg_equals_the_formula_and_w_zero_is_conditional():
    model = ToyConditional()
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    null = torch.full_like(labels, 3)
    for w in (0.0, 1.5, 7.0):
        guided = ClassifierFreeGuidance(model, w, null_label=3)(x, t, labels=labels)
        expected = (1 + w) * model(x, t, labels) - w * model(x, t, null)
        torch.testing.assert_close(guided, expected)
    torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, 3)(x, t, labels=labels), model(x, t, labels))


def test_cfg_interval_and_rescale():
    model = ToyConditional()
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9], dtype=torch.float64)
    labels = torch.tensor([1, 1, 2, 2])
    inside = ClassifierFreeGuidance(model, 3.0, 3, interval=(0.3, 0.7))(x, t, labels=labels)
    full = ClassifierFreeGuidance(model, 3.0, 3)(x, t, labels=labels)
    plain = model(x, t, labels)
    torch.testing.assert_close(inside[[0, 3]], plain[[0, 3]])
    torch.testing.assert_close(inside[[1, 2]], full[[1, 2]])
    rescaled = ClassifierFreeGuidance(model, 2.5, 3, rescale=1.0)(x, t, labels=labels)
    torch.testing.assert_close(rescaled.std(dim=1), plain.std(dim=1))
    with pytest.raises(ValueError, match="rescale"):
        ClassifierFreeGuidance(model, 1.0, 3, rescale=2.0)
    with pytest.raises(ValueError, match="needs the condition 'labels'"):
        ClassifierFreeGuidance(model, 1.0, 3)(x, t)


def test_cfg_works_with_every_sampler_and_batches_the_two_passes():
    process = EDM()
    calls = []

    def model(x, t, labels=None):
        calls.append(x.shape[0])
        return MIXTURE.denoiser(process)(x, t)

    guided = ClassifierFreeGuidance(model, 2.0, null_label=3, prediction="x0")
    noise = torch.randn(5, 2, dtype=torch.float64)
    for name in diffuse.samplers.available():
        calls.clear()
        x = diffuse.sample(guided, process, noise, sampler=name, steps=4, cond={"labels": torch.zeros(5, dtype=torch.long)},
                           generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(x).all() and set(calls) == {10}, name


def exact_classifier(process):
    """log p(component | x_t) of the mixture: the exact noise-aware classifier."""
    def classifier(x, t):
        return MIXTURE._noised(x, t, process)[3]
    return classifier


@pytest.mark.parametrize("process", [VP("linear"), EDM(), Flow()], ids=["vp", "edm", "flow"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_classifier_guidance_with_an_exact_classifier_samples_the_class(process, prediction):
    base = MIXTURE.denoiser(process)

    def model(x, t):
        return diffuse.convert(base(x, t), "x0", prediction, x, t, process)

    guided = ClassifierGuidance(model, exact_classifier(process), process, scale=1.0, prediction=prediction)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.full((2000,), 2)
    # at zero SNR (flow at t = 1) the guided score says nothing about x0, so start just below it
    schedule = torch.linspace(0.995, 1e-3, 40, dtype=torch.float64) if isinstance(process, Flow) \
        else diffuse.samplers.make_times(process, "log_snr", 40)
    x = diffuse.sample(guided, process, noise, sampler="heun", schedule=schedule, cond={"labels": labels})
    # s = 1 with the exact classifier is the exact conditional score: component 2, N((0, 2.5), 0.3^2)
    nearest = torch.cdist(x, MIXTURE.means).argmin(1)
    assert float((nearest == 2).double().mean()) > 0.99
    assert torch.allclose(x.mean(0), MIXTURE.means[2], atol=0.03)
    assert torch.allclose(x.std(0), torch.tensor([0.3, 0.3], dtype=torch.float64), rtol=0.1)
    unguided = diffuse.sample(model, process, noise, sampler="heun", schedule=schedule, prediction=prediction)
    assert float((torch.cdist(unguided, MIXTURE.means).argmin(1) == 2).double().mean()) < 0.3


def test_classifier_guidance_scale_zero_is_the_model():
    process = VP("linear")
    model = MIXTURE.denoiser(process)
    guided = ClassifierGuidance(model, exact_classifier(process), process, scale=0.0)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(guided(x, t, labels=torch.zeros(4, dtype=torch.long)), model(x, t))


def test_cfg_with_a_named_null_condition_doubles_every_condition_and_fills_the_guided_one():
    seen = {}

    def model(x, t, tokens=None, extra=None):
        seen["tokens"], seen["extra"] = tokens, extra
        return x * (1 + tokens.sum(dim=1, keepdim=True).to(x.dtype)) + extra

    x, t = torch.randn(2, 3), torch.tensor([0.2, 0.7])
    tokens, extra = torch.tensor([[2, 5, 3], [2, 3, 0]]), torch.randn(2, 3)
    guided = ClassifierFreeGuidance(model, 1.5, null={"tokens": 0})(x, t, tokens=tokens, extra=extra)
    assert seen["tokens"].tolist() == [[2, 5, 3], [2, 3, 0], [0, 0, 0], [0, 0, 0]]
    torch.testing.assert_close(seen["extra"], torch.cat([extra, extra]))
    conditional, unconditional = model(x, t, tokens, extra), model(x, t, torch.zeros_like(tokens), extra)
    torch.testing.assert_close(guided, 2.5 * conditional - 1.5 * unconditional)
    with pytest.raises(ValueError, match="null condition"):
        ClassifierFreeGuidance(model, 1.0)
    with pytest.raises(ValueError, match="needs the condition 'tokens'"):
        ClassifierFreeGuidance(model, 1.0, null={"tokens": 0})(x, t, extra=extra)
