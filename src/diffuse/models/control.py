"""A control adapter in ControlNet's manner (Zhang, Rao and Agrawala 2023, "Adding Conditional
Control to Text-to-Image Diffusion Models"), for this package's U-Net.

`ControlledUNet` is a network like the others (``build_network({"kind": "control", ...})``),
called as ``net(x, noise_level, labels=None, *, control, control_scale=1.0)`` with a control
image [B, control_channels, H, W] at the images' size. It holds the frozen base U-Net and a
`ControlAdapter`: a trainable copy of the base's encoder half (conditioning embedding, input
conv, down path and middle) with the base's weights. The control image enters the copy through
a small "hint" encoder added to the input conv's features, and each feature the copy pushes as
a skip, and its middle output, leaves through a 1x1 convolution. With s = control_scale,

    F_c(x; c) = F(x; skips + s Z_k(E_copy(x + H(c))), middle + s Z_m(E_copy(x + H(c))))

(the paper's eq. 2 with one zero convolution per skip, as its U-Net version applies it). The
hint's last conv and every Z start at zero, so at initialisation every residual is exactly zero
and the controlled network is the base network, whatever the control; and s = 0 is the base
network at any point of training. The gradient of a zero conv's weight is its input times the
incoming gradient, not zero, so the first step moves the Z; the hint's gradient, which passes
through them, follows from the second step on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .unet import UNet, condition_embedding, down_path, embedding_dim, encode, middle_path
from .validation import int_tuple, positive_int

# The modules of a U-Net's encoder half, which the adapter copies by name.
ENCODER = ("condition", "input", "down", "middle", "middle2")


@dataclass
class ControlledUNetConfig:
    """base: the frozen U-Net's description ({"kind": "unet", ...}); control_channels: the control
    image's channels; hint_channels: the widths of the hint encoder's 3x3 convs before its last,
    zero-initialised one (which has the base's ``channels``)."""

    base: dict = dataclasses.field(default_factory=lambda: {"kind": "unet"})
    control_channels: int = 1
    hint_channels: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        owner = "ControlledUNetConfig"
        if not isinstance(self.base, dict) or self.base.get("kind") != "unet":
            kind = self.base.get("kind") if isinstance(self.base, dict) else self.base
            raise ValueError(f"{owner}.base must describe a U-Net ({{\"kind\": \"unet\", ...}}); got {kind!r}: the "
                             "adapter copies a U-Net's encoder and adds to its skip connections")
        positive_int(owner, "control_channels", self.control_channels)
        self.hint_channels = int_tuple(owner, "hint_channels", self.hint_channels)
        for width in self.hint_channels:
            positive_int(owner, "hint_channels entry", width)


def zero_conv(width: int) -> nn.Conv2d:
    conv = nn.Conv2d(width, width, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def hint_encoder(control_channels: int, widths: tuple[int, ...], out_width: int) -> nn.Sequential:
    """3x3 convs with SiLU between, at the images' resolution (the paper's hint encoder also
    downsamples 512 px to the 64 px latents; here control and images have one size), the last
    one zero-initialised."""
    layers: list[nn.Module] = []
    width = control_channels
    for hidden in widths:
        layers += [nn.Conv2d(width, hidden, 3, padding=1), nn.SiLU()]
        width = hidden
    last = nn.Conv2d(width, out_width, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class ControlAdapter(nn.Module):
    """The trainable copy of a U-Net's encoder half, fed the control through the hint encoder;
    returns the residuals for the base's skips and middle, all zero at initialisation."""

    def __init__(self, base: UNet, control_channels: int, hint_channels: tuple[int, ...]):
        super().__init__()
        c = self.config = base.config
        emb_dim = embedding_dim(c)
        self.condition = condition_embedding(c)
        self.input = nn.Conv2d(c.in_channels, c.channels, 3, padding=1)
        self.down, skip_widths = down_path(c, emb_dim)
        self.middle, self.middle2 = middle_path(c, skip_widths[-1], emb_dim)
        self.copy_encoder(base)
        self.hint = hint_encoder(control_channels, hint_channels, c.channels)
        self.skip_outs = nn.ModuleList(zero_conv(width) for width in skip_widths)
        self.middle_out = zero_conv(skip_widths[-1])

    @torch.no_grad()
    def copy_encoder(self, base: UNet) -> None:
        """Set the copy's weights to the base's encoder half (the copy starts where the base is)."""
        ours = {k for k in self.state_dict() if k.split(".", 1)[0] in ENCODER}
        theirs = {k: v for k, v in base.state_dict().items() if k.split(".", 1)[0] in ENCODER}
        if ours != set(theirs):  # the same config builds the same modules; anything else is a bug
            raise RuntimeError(f"the adapter's encoder differs from the base's: {sorted(ours ^ set(theirs))[:4]}")
        self.load_state_dict(theirs, strict=False)

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None, control: Tensor,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        h, skips, _ = encode(self, x, noise_level, labels, context, context_mask, hint=self.hint(control))
        return [out(skip) for out, skip in zip(self.skip_outs, skips)], self.middle_out(h)


class ControlledUNet(nn.Module):
    """A frozen U-Net steered by a trainable control adapter (see the module docstring)."""

    def __init__(self, config: ControlledUNetConfig):
        super().__init__()
        from . import build_network  # the registry holds this class too

        self.config = config
        self.base = build_network(config.base).requires_grad_(False)
        self.adapter = ControlAdapter(self.base, config.control_channels, config.hint_channels)

    def load_base(self, state: dict[str, Tensor]) -> None:
        """Put a trained base network's weights in, and copy its encoder into the adapter, as
        ControlNet initialises its trainable copy; the hint and zero convs are left as they are."""
        self.base.load_state_dict(state)
        self.adapter.copy_encoder(self.base)

    def forward(self, x: Tensor, noise_level: Tensor, labels: Tensor | None = None, *,
                control: Tensor | None = None, control_scale: float | Tensor = 1.0,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """`control_scale` is a number or one per sample [B]; 0 gives the base network."""
        c = self.config
        expected = (x.shape[0], c.control_channels, *x.shape[2:])
        if control is None:
            raise ValueError(f"a controlled network needs its control image [B, {c.control_channels}, H, W] "
                             "(control=...); control_scale=0 gives the base network")
        if tuple(control.shape) != expected:
            raise ValueError(f"control must be {list(expected)} (the images' batch and size), got {list(control.shape)}")
        scale = torch.as_tensor(control_scale, dtype=x.dtype, device=x.device)
        if scale.ndim not in (0, 1) or (scale.ndim == 1 and len(scale) != x.shape[0]):
            raise ValueError(f"control_scale must be a number or one per sample [{x.shape[0]}], "
                             f"got shape {list(scale.shape)}")
        scale = scale.reshape(-1, 1, 1, 1) if scale.ndim == 1 else scale
        skips, middle = self.adapter(x, noise_level, labels, control.to(x.dtype), context, context_mask)
        return self.base(x, noise_level, labels, context=context, context_mask=context_mask,
                         skip_residuals=[scale * r for r in skips], middle_residual=scale * middle)


__all__ = ["ControlAdapter", "ControlledUNet", "ControlledUNetConfig"]
