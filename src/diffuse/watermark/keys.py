"""Watermark keys written into the initial noise of a deterministic sampler, and their tests.

Both kinds act on the standard normal noise [n, C, H, W] a sampler starts from, so any model and
any deterministic sampler carry them; a detector inverts an image back to its noise (DDIM
inversion) and tests the noise against the key.

Tree-Ring (Wen et al. 2023, "Tree-Ring Watermarks"): the 2-D Fourier transform of one channel of
the noise is overwritten inside a disc of low frequencies by the key's values: `ring` (one value
per ring, so the pattern survives rotation), `zero` or `random` (the transform of a Gaussian
noise). The key's values here are Hermitian (the transform of a real image), so the watermarked
noise is real with exactly the key inside the disc and the noise's own coefficients outside.
Detection: the distance of the inverted noise's coefficients to the key inside the disc; under
the null (noise that never saw the key) the coefficients are complex Gaussian, which makes the
squared distance a non-central chi-square (the paper's test), computed here over the independent
half of the disc (a real image's coefficients come in conjugate pairs).

Gaussian Shading (Yang et al. 2024): the message bits, each repeated `repetition` times and XOR-ed
with a keyed random bit stream, choose the quantile bucket of each noise element (the sign, or
one of 2^b buckets with b bits per element); the element is drawn inside its bucket. The stream
makes the buckets uniform, so the noise is exactly standard normal. Detection: the inverted
noise's buckets give bits back; their agreement with the key's is Binomial(N, 1/2) under the null.
One stream shared by every picture puts them all in the same buckets (the same signs), which costs
diversity; with `nonces` > 1 each noise takes one of that many streams (its nonce, drawn with it)
and the detector tries them all, paying a factor `nonces` in its p-value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..randomness import seeded

TREE_RING_PATTERNS = ("ring", "zero", "random")
# The paper's radius, 10 on 64x64 latents: by default scaled to the noise's side, so that the disc
# replaces the same share of the spectrum (about 8% of one channel); a larger disc is easier to
# detect and takes more of the noise away from the samples' diversity (docs/watermark.md).
TREE_RING_RADIUS, TREE_RING_SIDE = 10, 64
MAX_MESSAGE_BITS = 32  # the default message: the longest that repeats a whole number of times, up to this
MAX_NONCES = 1 << 16  # a detector tries every nonce
# One stream for every picture puts them all in the same buckets: on Fashion-MNIST FD 385 against
# 145-153 unwatermarked; 256 streams bring it back within that spread (153.8) for a factor 256 in the
# p-value (docs/watermark.md), so a new key takes 256.
DEFAULT_NONCES = 256


def _check_shape(shape) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a key's shape is the noise's [C, H, W], got {list(shape)}")
    return shape


def _check_noise(noise: torch.Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(noise, torch.Tensor) or not noise.is_floating_point() or tuple(noise.shape[1:]) != shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"this key is for noise [n, {', '.join(map(str, shape))}]; got {got}")


def max_radius(shape) -> int:
    """The largest disc radius that fits the Fourier plane of [C, H, W] noise: its frequencies are
    -floor(H/2) .. ceil(H/2) - 1 per side, and a disc closed under k -> -k (so that the watermarked
    noise stays real) must leave out the unpaired Nyquist frequency -H/2 of an even side."""
    return (min(shape[1], shape[2]) - 1) // 2


def _frequencies(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies [H, W] of torch.fft.fft2's layout (rows, columns)."""
    kh = torch.fft.fftfreq(h, 1 / h, dtype=torch.float64).round()
    kw = torch.fft.fftfreq(w, 1 / w, dtype=torch.float64).round()
    return torch.meshgrid(kh, kw, indexing="ij")


@dataclass(frozen=True)
class TreeRingKey:
    shape: tuple[int, int, int]  # the noise's [C, H, W]
    radius: int
    pattern: str = "ring"
    channel: int = 0
    seed: int = 0
    kind: ClassVar[str] = "tree-ring"

    def __post_init__(self):
        object.__setattr__(self, "shape", _check_shape(self.shape))
        if self.pattern not in TREE_RING_PATTERNS:
            raise ValueError(f"tree-ring pattern must be one of {', '.join(TREE_RING_PATTERNS)}, got {self.pattern!r}")
        largest = max_radius(self.shape)
        if largest < 1:
            raise ValueError(f"noise of {self.shape[1]}x{self.shape[2]} has no room for a tree-ring key (3x3 at least)")
        if isinstance(self.radius, bool) or not isinstance(self.radius, int) or not 1 <= self.radius <= largest:
            raise ValueError(f"tree-ring radius must be a whole number in 1..{largest} for {self.shape[1]}x"
                             f"{self.shape[2]} noise, got {self.radius!r}")
        if isinstance(self.channel, bool) or not isinstance(self.channel, int) or not 0 <= self.channel < self.shape[0]:
            raise ValueError(f"tree-ring channel must be in 0..{self.shape[0] - 1}, got {self.channel!r}")

    @classmethod
    def create(cls, shape, pattern: str = "ring", radius: int | None = None, channel: int = 0,
               seed: int = 0) -> "TreeRingKey":
        """A key for noise of `shape`; the radius defaults to the paper's 10 of 64 scaled to the noise's
        shorter side (1 for 8x8, 4 for 28x28), and is capped to what fits, with a warning when a radius asked
        for does not."""
        shape = _check_shape(shape)
        largest = max_radius(shape)
        scaled = max(1, round(TREE_RING_RADIUS * min(shape[1:]) / TREE_RING_SIDE))
        asked = scaled if radius is None else radius
        if radius is not None and radius < 1:
            raise ValueError(f"tree-ring radius must be >= 1, got {radius}")
        if asked > largest >= 1:
            if radius is not None:
                warnings.warn(f"a tree-ring radius of {radius} does not fit {shape[1]}x{shape[2]} noise; capped to "
                              f"{largest}, the largest disc inside its Fourier plane", stacklevel=2)
            asked = largest
        return cls(shape, asked, pattern, channel, seed)

    def mask(self) -> torch.Tensor:
        """[H, W] bool: the disc of frequencies |k| <= radius, in torch.fft.fft2's layout."""
        kh, kw = _frequencies(*self.shape[1:])
        return kh**2 + kw**2 <= self.radius**2

    def values(self) -> torch.Tensor:
        """[H, W] complex128: the key's Fourier coefficients inside the mask (0 outside), Hermitian. Scaled
        like white noise's: E|X_k|^2 = H W."""
        h, w = self.shape[1:]
        mask = self.mask()
        generator = seeded(self.seed, 0)
        if self.pattern == "zero":
            full = torch.zeros(h, w, dtype=torch.complex128)
        elif self.pattern == "random":
            full = torch.fft.fft2(torch.randn(h, w, generator=generator, dtype=torch.float64))
        else:  # ring: one real value per ring ceil(|k|) (the centre joins ring 1, as in the paper's code)
            kh, kw = _frequencies(h, w)
            ring = (kh**2 + kw**2).sqrt().ceil().clamp(min=1).long().clamp(max=self.radius)
            levels = torch.randn(self.radius + 1, generator=generator, dtype=torch.float64) * math.sqrt(h * w)
            full = levels[ring].to(torch.complex128)
        return torch.where(mask, full, torch.zeros((), dtype=torch.complex128))

    def embed(self, noise: torch.Tensor) -> torch.Tensor:
        """The noise with the key written inside the disc of its channel's Fourier transform."""
        _check_noise(noise, self.shape)
        spectrum = torch.fft.fft2(noise[:, self.channel].to(torch.float64))
        spectrum = torch.where(self.mask(), self.values(), spectrum)
        out = noise.clone()
        out[:, self.channel] = torch.fft.ifft2(spectrum).real.to(noise.dtype)
        return out

    def test(self, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per noise [n]: `distance` (the paper's mean |X_k - key_k| inside the disc; lower = watermarked),
        `statistic` (the chi-square distance over the independent half of the disc, each term divided by
        its variance under the null of standard normal noise: H W / 2 for the real and the imaginary part
        of a paired coefficient, H W for the real centre), `p_value` (the chance that standard normal noise
        that never saw the key comes this close: the non-central chi-square's CDF) and `evidence` (the
        statistic standardised by the null's mean and std and negated: higher = watermarked)."""
        _check_noise(noise, self.shape)
        h, w = self.shape[1:]
        spectrum = torch.fft.fft2(noise[:, self.channel].to(torch.float64))  # [n, H, W]
        mask, key = self.mask(), self.values()
        distance = (spectrum - key)[:, mask].abs().mean(1)
        kh, kw = _frequencies(h, w)
        # one of each conjugate pair (k, -k), and the one self-conjugate frequency in the disc, 0
        paired = mask & ((kh > 0) | ((kh == 0) & (kw > 0)))
        centre = (kh == 0) & (kw == 0)
        # The null's variance is known, not estimated: an estimate from the few coefficients outside a small
        # disc would turn the chi-square into an F distribution and its p-values would be wrong.
        coefficient_var = torch.full((len(noise), 1), float(h * w), dtype=torch.float64)
        statistic = (((spectrum - key)[:, paired].abs() ** 2) / (coefficient_var / 2)).sum(1) \
            + ((spectrum - key)[:, centre].real ** 2 / coefficient_var).sum(1)
        df = 2 * int(paired.sum()) + 1
        noncentrality = ((key[paired].abs() ** 2)[None] / (coefficient_var / 2)).sum(1) \
            + (key[centre].real ** 2 / coefficient_var).sum(1)
        p_value = noncentral_chi2_cdf(statistic, df, noncentrality)
        evidence = -(statistic - df - noncentrality) / torch.sqrt(2 * (df + 2 * noncentrality))
        return {"distance": distance, "statistic": statistic, "p_value": p_value, "evidence": evidence}

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "shape": list(self.shape)}


def noncentral_chi2_cdf(x: torch.Tensor, df: int, noncentrality: torch.Tensor) -> torch.Tensor:
    """P(X <= x) for X ~ chi-square(df, noncentrality), as the Poisson(noncentrality / 2) mixture of
    central chi-squares with df + 2j degrees of freedom (float64; each a regularised gamma)."""
    half = torch.as_tensor(noncentrality, dtype=torch.float64) / 2
    x = torch.as_tensor(x, dtype=torch.float64)
    terms = int(float(half.max()) + 12 * math.sqrt(float(half.max()) + 1) + 30)
    j = torch.arange(terms, dtype=torch.float64)
    log_weights = -half[:, None] + j[None] * torch.log(half[:, None].clamp(min=1e-300)) - torch.lgamma(j + 1)[None]
    log_weights = torch.where(half[:, None] > 0, log_weights, torch.where(j == 0, 0.0, -math.inf)[None])
    central = torch.special.gammainc(df / 2 + j[None], (x / 2)[:, None])
    return (log_weights.exp() * central).sum(1).clamp(0, 1)


def binomial_upper_tail(successes: torch.Tensor, trials: int) -> torch.Tensor:
    """P(S >= successes) for S ~ Binomial(trials, 1/2), exactly (a sum of log binomial coefficients)."""
    k = torch.arange(trials + 1, dtype=torch.float64)
    log_pmf = torch.lgamma(torch.tensor(trials + 1.0, dtype=torch.float64)) - torch.lgamma(k + 1) \
        - torch.lgamma(trials - k + 1) - trials * math.log(2)
    successes = torch.as_tensor(successes, dtype=torch.long)
    tails = torch.logcumsumexp(log_pmf.flip(0), 0).flip(0)  # tails[s] = log P(S >= s)
    return tails[successes.clamp(0, trials)].exp()


def _default_message_bits(total: int) -> int:
    return max(d for d in range(1, min(total, MAX_MESSAGE_BITS) + 1) if total % d == 0)


@dataclass(frozen=True)
class GaussianShadingKey:
    shape: tuple[int, int, int]   # the noise's [C, H, W]
    bits: tuple[int, ...]         # the message, 0s and 1s
    repetition: int               # copies of each message bit: len(bits) * repetition = elements * bits_per_element
    seed: int = 0                 # the key streams'
    bits_per_element: int = 1     # b: 2^b quantile buckets per element (1: its sign)
    nonces: int = 1               # key streams: each noise takes one (its nonce), the detector tries them all
    kind: ClassVar[str] = "gaussian-shading"

    def __post_init__(self):
        object.__setattr__(self, "shape", _check_shape(self.shape))
        object.__setattr__(self, "bits", tuple(self.bits))
        if not self.bits or any(b not in (0, 1) or isinstance(b, bool) for b in self.bits):
            raise ValueError("gaussian-shading bits must be a non-empty list of 0s and 1s")
        if isinstance(self.bits_per_element, bool) or self.bits_per_element not in range(1, 9):
            raise ValueError(f"bits_per_element must be 1..8, got {self.bits_per_element!r}")
        for name in ("repetition", "nonces"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.nonces > MAX_NONCES:
            raise ValueError(f"nonces must be at most {MAX_NONCES}, got {self.nonces}")
        total = math.prod(self.shape) * self.bits_per_element
        if len(self.bits) * self.repetition != total:
            raise ValueError(f"{len(self.bits)} bits x {self.repetition} repetitions = "
                             f"{len(self.bits) * self.repetition} element bits, but {list(self.shape)} noise with "
                             f"{self.bits_per_element} bit(s) per element holds {total}; the message length must "
                             f"divide {total}")

    @classmethod
    def create(cls, shape, message_bits: int | None = None, seed: int = 0, bits_per_element: int = 1,
               nonces: int = DEFAULT_NONCES, message_seed: int | None = None) -> "GaussianShadingKey":
        """A key with a random message (from `message_seed`, default `seed`) of `message_bits` bits (default: the
        longest up to 32 that the noise repeats a whole number of times)."""
        shape = _check_shape(shape)
        total = math.prod(shape) * bits_per_element
        n = _default_message_bits(total) if message_bits is None else message_bits
        if n < 1 or total % n:
            raise ValueError(f"a message of {n} bits does not repeat a whole number of times in {total} element "
                             f"bits ({list(shape)} noise, {bits_per_element} bit(s) per element); choose a divisor "
                             f"of {total}")
        generator = seeded(seed if message_seed is None else message_seed, 1)
        bits = torch.randint(0, 2, (n,), generator=generator).tolist()
        return cls(shape, tuple(bits), total // n, seed, bits_per_element, nonces)

    @property
    def levels(self) -> int:
        return 2 ** self.bits_per_element

    def _streams(self) -> torch.Tensor:
        """[nonces, elements * b] keyed random bits, stream j for the noises of nonce j."""
        total = math.prod(self.shape) * self.bits_per_element
        return torch.stack([torch.randint(0, 2, (total,), generator=seeded(self.seed, 0, j))
                            for j in range(self.nonces)])

    def element_bits(self) -> torch.Tensor:
        """[nonces, elements, b] the bits each element carries: the repeated message XOR the nonce's stream."""
        message = torch.tensor(self.bits).repeat_interleave(self.repetition)
        return (message[None] ^ self._streams()).reshape(self.nonces, -1, self.bits_per_element)

    def _nonces(self, noise: torch.Tensor, nonce) -> torch.Tensor:
        nonce = torch.zeros(len(noise), dtype=torch.long) if nonce is None else \
            torch.as_tensor(nonce, dtype=torch.long).reshape(-1).expand(len(noise))
        if ((nonce < 0) | (nonce >= self.nonces)).any():
            raise ValueError(f"a nonce must be in 0..{self.nonces - 1}")
        return nonce

    def embed(self, noise: torch.Tensor, nonce=None) -> torch.Tensor:
        """The noise moved into the key's buckets: u = Phi(z) splits into a bucket floor(u 2^b) and a place
        in it frac(u 2^b), independent and uniform; the bucket is replaced by the key's, the place kept, so
        each element is again exactly standard normal when the key's buckets are uniform (over keys and
        nonces). `nonce` [n] (or one for all, default 0) picks each noise's stream."""
        _check_noise(noise, self.shape)
        weights = 2 ** torch.arange(self.bits_per_element - 1, -1, -1)
        buckets = (self.element_bits() * weights).sum(2)[self._nonces(noise, nonce)].reshape(len(noise), *self.shape)
        scaled = torch.special.ndtr(noise.to(torch.float64)) * self.levels
        place = (scaled - scaled.floor()).clamp(1e-15, 1 - 1e-15)  # the ends would map to +-infinity
        return torch.special.ndtri((buckets + place) / self.levels).to(noise.dtype)

    def read_bits(self, noise: torch.Tensor) -> torch.Tensor:
        """[n, elements, b] the bits that the buckets of `noise` carry."""
        bucket = (torch.special.ndtr(noise.to(torch.float64)) * self.levels).floor().clamp(0, self.levels - 1).long()
        shifts = torch.arange(self.bits_per_element - 1, -1, -1)
        return (bucket.flatten(1)[..., None] >> shifts) & 1

    def test(self, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per noise [n], at the nonce whose stream agrees best: `statistic` (the share of element bits that
        agree with the key's), `bit_accuracy` (the message read back by a majority vote over each bit's
        copies, against the key's message), `nonce`, `p_value` (P(Binomial(N, 1/2) >= agreements) times the
        number of nonces tried, a Bonferroni bound on the chance that noise that never saw the key agrees
        this well with one of them) and `evidence` (the agreements standardised under the one-stream null)."""
        _check_noise(noise, self.shape)
        read = self.read_bits(noise).flatten(1).double()                 # [n, N]
        expected = self.element_bits().flatten(1).double()               # [nonces, N]
        trials = read.shape[1]
        # agreements = N - Hamming distance, for every nonce at once
        agree = trials - (read.sum(1, keepdim=True) + expected.sum(1)[None] - 2 * read @ expected.T)
        best, nonce = agree.max(1)
        best = best.round().long()
        streams = self._streams()[nonce]                                 # [n, N]
        copies = (read.long() ^ streams).reshape(len(noise), len(self.bits), self.repetition).double().mean(2)
        message = torch.tensor(self.bits, dtype=torch.float64)
        # a tie (an even number of copies, half each way) counts as half right
        vote = torch.where(copies == 0.5, 0.5, ((copies > 0.5).double() == message).double())
        return {"statistic": best.double() / trials, "bit_accuracy": vote.mean(1), "nonce": nonce,
                "p_value": (binomial_upper_tail(best, trials) * self.nonces).clamp(max=1),
                "evidence": (best.double() - trials / 2) / math.sqrt(trials / 4)}

    def to_dict(self) -> dict:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "shape": list(self.shape), "bits": "".join(map(str, self.bits))}


KEYS = {TreeRingKey.kind: TreeRingKey, GaussianShadingKey.kind: GaussianShadingKey}
Key = TreeRingKey | GaussianShadingKey


def key_from_dict(data: dict) -> Key:
    """A key from its JSON object, checked: unknown kinds and fields, and bad values, raise ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"a watermark key is a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KEYS:
        raise ValueError(f"a watermark key's kind must be one of {', '.join(KEYS)}, got {kind!r}")
    cls = KEYS[kind]
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in data.items() if k != "kind"}
    unknown = sorted(set(given) - fields)
    missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in given
                     and f.default is dataclasses.MISSING)
    if unknown or missing:
        raise ValueError(f"a {kind} key has fields {', '.join(sorted(fields))}; "
                         + "; ".join(p for p in (f"unknown: {', '.join(unknown)}" if unknown else "",
                                                f"missing: {', '.join(missing)}" if missing else "") if p))
    if kind == GaussianShadingKey.kind:
        bits = given["bits"]
        if not isinstance(bits, str) or set(bits) - {"0", "1"}:
            raise ValueError(f"a gaussian-shading key's bits are a string of 0s and 1s, got {bits!r}")
        given["bits"] = tuple(int(b) for b in bits)
    if not isinstance(given["shape"], list):
        raise ValueError(f"a key's shape is a list [C, H, W], got {given['shape']!r}")
    return cls(**given)


def save_key(key: Key, path) -> None:
    from ..files import write_text_atomic

    write_text_atomic(Path(path), json.dumps(key.to_dict(), indent=2) + "\n")


def load_key(path) -> Key:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no key file {path}; make one with `diffuse watermark key`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    try:
        return key_from_dict(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None
