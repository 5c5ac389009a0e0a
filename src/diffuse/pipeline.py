"""A trained diffusion model with everything sampling it needs, behind one `.sample()`.

`Pipeline` holds the model (any `model(x, t, **cond)` with a declared prediction and `.process`),
what its samples are (DataInfo: modality and shape), the conditions it takes (class labels, text
tokens: `diffuse.conditions`), the sampling defaults of its run, and for a text model its
tokenizer, for a latent model the codec that decodes its samples. `diffuse.load(run)` gives one
for a run folder; a training task builds one around its EMA for the pictures of each checkpoint,
so what training previews is what `diffuse sample` draws.

Sample k of a call depends only on (seed, k): its starting noise and every later random draw
come from its own generator (`diffuse.samplers.Generators`), never from its batch.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from .conditions import Condition, nulls
from .configs import in_range, whole_number
from .data import DataInfo
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .samplers import Generators, NonFiniteSampleError, posterior_samplers, sample


class Pipeline:
    def __init__(self, model, info: DataInfo, conditions: Sequence[Condition] = (), *, sampler: str = "heun",
                 steps: int = 18, schedule="auto", tokenizer=None, codec=None, loss=None, prompt_encoder=None,
                 clip_denoised: float | None = None):
        self.model, self.info, self.conditions = model, info, tuple(conditions)
        self.sampler, self.steps, self.schedule = sampler, steps, schedule
        self.tokenizer, self.codec, self.loss = tokenizer, codec, loss
        # prompts -> {model keyword: [len(prompts), ...] tensor}, for a model whose text encoder is
        # its own (a pretrained pipeline's); without one, prompts are tokenised for the model
        self.prompt_encoder = prompt_encoder
        self.clip_denoised = clip_denoised  # a pretrained scheduler's clip_sample range
        self.config = self.stored = None  # a run folder's RunConfig and config.json, set by diffuse.load

    @property
    def process(self):
        return self.model.process

    @property
    def prediction(self) -> str:
        return self.model.prediction

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample as returned (an image's, also for a latent model)."""
        return tuple(self.info.shape)

    @property
    def draw_shape(self) -> tuple[int, ...]:
        """The shape the sampler draws: the latents' for a latent model."""
        return self.shape if self.codec is None else tuple(self.codec.latent_shape(self.shape))

    def condition(self, argument: str) -> Condition | None:
        return next((c for c in self.conditions if c.argument == argument), None)

    @property
    def num_classes(self) -> int | None:
        labels = self.condition("labels")
        return None if labels is None else int(labels.null)

    def prompt_tokens(self, prompts: Sequence[str], n: int) -> tuple[torch.Tensor, list[str]]:
        """([n, L] token ids, the prompts cycled over the samples; the words the tokenizer has
        never seen, which it reads as unknown)."""
        if self.condition("tokens") is None or self.tokenizer is None:
            raise ValueError("this model was not trained on text; it takes no prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        unknown = sorted({w for p in prompts for w, i in zip(_words(p), self.tokenizer.token_ids(p))
                          if i == self.tokenizer.unk_id})
        encoded = self.tokenizer.encode(list(prompts), max_length=self.model.net.config.max_length)
        return encoded[torch.arange(n) % len(prompts)], unknown

    def encode_prompt(self, prompts: str | Sequence[str], n: int) -> dict:
        """{model keyword: [n, ...]} for the prompts cycled over n samples, each prompt encoded once."""
        if self.prompt_encoder is None:
            return {"tokens": self.prompt_tokens(prompts, n)[0]}
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = self.prompt_encoder(prompts)
        return {k: v[torch.arange(n) % len(prompts)] for k, v in encoded.items()}

    @torch.no_grad()
    def sample(self, n: int, *, labels=None, prompt: str | Sequence[str] | None = None,
               tokens: torch.Tensor | None = None, guidance: float = 0.0, classifier=None,
               classifier_scale: float = 1.0, sampler: str | None = None, steps: int | None = None,
               schedule=None, seed: int = 0, batch_size: int = 500, device=None,
               callback: Callable | None = None, cond: dict | None = None, measurement=None,
               init: torch.Tensor | None = None, t_start: float | None = None, noise: torch.Tensor | None = None,
               **options) -> torch.Tensor:
        """n samples [n, *shape] in the data's range, sample k a function of (seed, k) alone.

        labels     [n] class labels (a class model, or the target of classifier guidance)
        prompt     a text model's prompt(s), cycled over the samples; or `tokens` [n, L] directly
        guidance   w of classifier-free guidance against the null condition (0: none)
        classifier a noise-aware classifier(x, t) -> logits on the model's process (`diffuse.load_classifier`),
                   adding classifier guidance of `classifier_scale` towards `labels`; with both,
                   classifier-free guidance is the inner wrapper and classifier guidance the outer
        sampler, steps, schedule   default to the run's; `options` go to the sampler
        measurement  a `diffuse.inverse.Measurement` of n images: draw from p(x | y) with a posterior
                   sampler (repaint, dps, ddrm, daps; `diffuse.samplers.posterior_samplers()`)
        init, t_start  [n, *shape] images to start from, noised to time t_start with each sample's own
                   noise, the steps then running from t_start down (SDEdit, strength t_start)
        noise      [n, *draw_shape] standard normal: each sample's starting noise (with init, the noise
                   added to it), used instead of the draw from its generator (a watermarked noise); later
                   random draws still come from the generator, so noise = the generators' own draw is
                   the call without it, bit for bit
        callback   called after every model evaluation with {"i", "t", "x", "denoised", "batch"}
        cond       more of the model's conditions by keyword, each [n, ...] or one value for all (a
                   control adapter's `control` images and `control_scale`)
        """
        whole_number("n", n, 1), whole_number("batch_size", batch_size, 1), whole_number("seed", seed, 0)
        in_range("guidance", guidance, 0, math.inf), in_range("classifier_scale", classifier_scale, 0, math.inf)
        if steps is not None:
            whole_number("steps", steps, 1)
        steps = self.steps if steps is None else steps
        self._check_start(n, measurement, init, t_start, sampler or self.sampler)
        if noise is not None and (not isinstance(noise, torch.Tensor) or tuple(noise.shape) != (n, *self.draw_shape)):
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise must be [n={n}, {', '.join(map(str, self.draw_shape))}], got {got}")
        text = {}
        if prompt is not None:
            if tokens is not None:
                raise ValueError("give a prompt or tokens, not both")
            text = self.encode_prompt(prompt, n)
        elif self.prompt_encoder is not None:  # a pretrained text model always reads text: no prompt is ""
            text = self.encode_prompt("", n)
        cond = {**self._cond(n, labels, text.pop("tokens", tokens), classifier), **text, **self._given(n, cond)}
        if guidance and labels is None and not cond:
            raise ValueError("guidance needs labels or a prompt")
        if classifier is not None:
            if "labels" not in cond and labels is None:
                raise ValueError("classifier guidance needs labels")
            check_classifier(classifier, self)
        wrapped = self.model
        if guidance:
            used = [c for c in self.conditions if c.argument in cond]
            if not used:
                raise ValueError("classifier-free guidance (--guidance) needs a class-conditional model or a text model")
            wrapped = ClassifierFreeGuidance(self.model, guidance, null=nulls(used))
        target = None
        if classifier is not None:
            target = torch.as_tensor(labels).reshape(-1)
            wrapped = ClassifierGuidance(wrapped, classifier, self.process, classifier_scale,
                                         prediction=self.prediction, conditional_model="labels" in cond)
        modules = [m for m in (self.model, classifier) if isinstance(m, torch.nn.Module)]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        parameter = next(iter(getattr(self.model, "parameters", lambda: iter(()))()), None)
        device = device or (parameter.device if parameter is not None else torch.device("cpu"))
        dtype = parameter.dtype if parameter is not None else torch.float32  # a half model samples in half
        out = []
        try:
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                generators = Generators.seeded(seed, start, count)
                rows = slice(start, start + count)
                own = generators.randn(self.draw_shape)  # drawn even when given: the generators' later draws match
                start_noise = (own if noise is None else noise[rows]).to(device, dtype)
                part = {k: v[start:start + count].to(device) for k, v in cond.items()}
                if target is not None and "labels" not in part:
                    part = {**part, "labels": target[start:start + count].to(device)}
                report = None if callback is None else (lambda info, s=start: callback({**info, "batch": s}))
                if measurement is not None:
                    options["measurement"] = measurement[rows]
                x_start = None if init is None else self.process.add_noise(init[rows].to(device, dtype), t_start, start_noise)
                try:
                    drawn = sample(wrapped, self.process, None if init is not None else start_noise, x_start=x_start,
                                   t_start=None if init is None else t_start, sampler=sampler or self.sampler, steps=steps,
                                   prediction=self.prediction, cond=part, clip_denoised=self.clip_denoised,
                                   schedule=self.schedule if schedule is None else schedule,
                                   generator=generators, callback=report, **options)
                except NonFiniteSampleError as e:
                    raise NonFiniteSampleError(self._non_finite_cause(e.share, sampler or self.sampler, guidance),
                                               e.share) from None
                out.append(drawn.float().cpu() if self.codec is None else self.codec.decode(drawn).cpu())
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        images = torch.cat(out)
        if not torch.isfinite(images).all():  # the decoder's own output
            share = float((~torch.isfinite(images)).flatten(1).any(1).double().mean())
            raise NonFiniteSampleError(self._non_finite_cause(share, sampler or self.sampler, guidance), share)
        return images

    def _check_start(self, n: int, measurement, init, t_start, sampler: str) -> None:
        """Raise unless a measurement or start images fit n samples of this pipeline."""
        if measurement is not None and sampler not in posterior_samplers():
            raise ValueError(f"a measurement is sampled by a posterior sampler ({', '.join(posterior_samplers())}), "
                             f"not {sampler!r}")
        if (init is None) != (t_start is None):
            raise ValueError("init and t_start go together: the images to start from and the time to noise them to")
        if (measurement is not None or init is not None) and self.codec is not None:
            raise ValueError("editing a latent model is not supported: measurements and start images are pixels, "
                             "the model samples latents")
        if measurement is not None and len(measurement) != n:
            raise ValueError(f"a measurement of {len(measurement)} images for n={n} samples")
        if measurement is not None and tuple(measurement.operator.shape) != self.shape:
            raise ValueError(f"the operator acts on images of shape {measurement.operator.shape}; "
                             f"this model's are {self.shape}")
        if init is not None:
            if not isinstance(init, torch.Tensor) or tuple(init.shape) != (n, *self.shape):
                got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
                raise ValueError(f"init must be [n={n}, {', '.join(map(str, self.shape))}], got {got}")
            in_range("t_start", t_start, 0, self.process.t_max, low_open=True)

    def _cond(self, n: int, labels, tokens, classifier) -> dict:
        """The model's own condition entries for n samples, checked."""
        cond = {}
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if len(labels) != n:
                raise ValueError(f"{len(labels)} labels for n={n} samples")
            classes = self.num_classes if self.num_classes is not None else getattr(classifier, "num_classes", None)
            if self.num_classes is None and classifier is None:
                raise ValueError("this model is unconditional; it takes no labels (unless a classifier guides it)")
            if classes is not None and ((labels < 0) | (labels >= classes)).any():
                raise ValueError(f"labels must lie in 0..{classes - 1}")
            if self.num_classes is not None:
                cond["labels"] = labels
        if tokens is not None:
            if self.condition("tokens") is None:
                raise ValueError("this model was not trained on text; it takes no prompt")
            if tokens.ndim != 2 or len(tokens) != n:
                raise ValueError(f"tokens must be [n={n}, L], got {tuple(tokens.shape)}")
            cond["tokens"] = tokens
        return cond

    def _given(self, n: int, cond: dict | None) -> dict:
        """The conditions given by keyword, checked against the model's and spread over n samples."""
        out = {}
        for argument, value in (cond or {}).items():
            if self.condition(argument) is None or argument in ("labels", "tokens"):
                known = [c.argument for c in self.conditions if c.argument not in ("labels", "tokens")]
                raise ValueError(f"this model takes no condition {argument!r} by keyword"
                                 f"{'; it takes ' + ', '.join(known) if known else ''} (labels and prompts have "
                                 "their own arguments)")
            value = torch.as_tensor(value)
            value = value.expand(n) if value.ndim == 0 else value
            if len(value) != n:
                raise ValueError(f"{len(value)} rows of {argument!r} for n={n} samples")
            out[argument] = value
        return out

    def _non_finite_cause(self, share: float, sampler: str, guidance: float) -> str:
        """What went wrong, with the likeliest cause first: the model's weights, its precision, a
        large guidance weight, else the sampler's settings."""
        parameters = list(getattr(self.model, "parameters", lambda: iter(()))())
        if any(not torch.isfinite(p).all() for p in parameters):
            cause = "the model's weights are not finite (a checkpoint kept after the training diverged?)"
        elif any(p.dtype in (torch.float16, torch.bfloat16) for p in parameters):
            cause = f"the model runs in {parameters[0].dtype}, too narrow for the sampler {sampler!r}; use float32"
        elif guidance > 10:
            cause = f"the guidance weight {guidance:g} is large enough to blow the samples up; try a smaller one"
        else:
            cause = f"the sampler {sampler!r} diverged with these settings; try another sampler or more steps"
        return f"{100 * share:.0f}% of the samples are NaN or infinite: {cause}. Nothing was written."


def _words(prompt: str) -> list[str]:
    from .text import split_words
    return split_words(prompt)


def check_classifier(classifier, pipeline: Pipeline) -> None:
    """Raise unless `classifier` can guide the pipeline's model: the same process (at a given t
    another process has another noise level, so the classifier would read x_t at the wrong one),
    the shape of the model's samples, and the model's classes when it has them."""
    process = getattr(classifier, "process", None)
    model_process = pipeline.process
    if process is None:
        raise ValueError("the classifier must declare the process it was trained on (.process); "
                         "train one with `diffuse train --task classifier` and load it with load_classifier")
    if process.config() != model_process.config():
        raise ValueError(f"the classifier was trained on the process {process!r}, but the model samples "
                         f"{model_process!r}; classifier guidance needs the model's own process "
                         "(train the classifier with it: `diffuse train --task classifier --process ...`)")
    if pipeline.codec is not None:
        raise ValueError("classifier guidance of a latent model is not supported: the classifier reads images, "
                         "the model samples latents")
    shape = getattr(classifier, "shape", None)
    if shape is not None and tuple(shape) != tuple(pipeline.draw_shape):
        raise ValueError(f"the classifier was trained on data of shape {tuple(shape)}; this model samples "
                         f"{tuple(pipeline.draw_shape)}")
    num_classes = pipeline.num_classes
    if num_classes is not None and getattr(classifier, "num_classes", num_classes) != num_classes:
        raise ValueError(f"the classifier has {classifier.num_classes} classes, the model {num_classes}")
