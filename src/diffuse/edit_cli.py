"""`diffuse edit`: restore or edit images with a trained model as the prior.

    diffuse edit RUN --task inpaint --mask box --input IMAGES --method ddrm --out OUT.png
    diffuse edit RUN --task sdedit --strength 0.5 --input IMAGES --out OUT.png

IMAGES is a picture, a folder of pictures (scaled to cover the model's size and centre-cropped)
or an .npz holding `images` [N, H, W(, C)] in [0, 1], as `diffuse sample` writes them, and
optionally `measurement` (y of the [0, 1] images, A(images) + noise, so an .npz can carry a
measurement taken elsewhere) and `mask`. Masks follow inpainting tools: white (1) is what is to be
filled in. Without a given measurement the images are measured here, with noise `--sigma-y` (in
[0, 1] pixel units). The output .npz holds `images` (the results), `inputs`, `measurement` and
`mask` (inpainting); the output picture shows input, measurement and result side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

# What each method costs and does by default: the steps (a method's own options via --method-options).
METHOD_STEPS = {"ddrm": 50, "daps": 50, "dps": 200, "repaint": 50}


def add_parser(commands) -> None:
    from .cli_args import number, sampling_arguments
    from .inverse import TASKS, MASKS
    from .samplers import posterior_samplers

    edit = commands.add_parser("edit", help="restore (inpaint, super-resolve, deblur, colorize) or edit (sdedit) "
                                            "images with a trained model as the prior")
    sampling_arguments(edit)
    edit.add_argument("--task", required=True, choices=(*TASKS, "sdedit"), help="what to do to the input images")
    edit.add_argument("--input", required=True, help="a picture, a folder of pictures or an .npz of images")
    edit.add_argument("--out", required=True, help="FILE.png (input | measurement | result per row) or FILE.npz")
    edit.add_argument("--method", choices=posterior_samplers(),
                      help="the posterior sampler (default: ddrm for a linear task, dps for saturate)")
    edit.add_argument("--method-options", dest="method_options", default="{}",
                      help='the method\'s own options as JSON, e.g. \'{"scale": 0.5}\' for dps')
    edit.add_argument("--sigma-y", dest="sigma_y", type=number(float, 0.0), default=0.0,
                      help="the measurement noise's std in [0, 1] pixel units (default: 0)")
    edit.add_argument("--mask", default="box",
                      help=f"inpainting: {', '.join(MASKS)} or a mask picture, white where to fill in (default: box)")
    edit.add_argument("--factor", type=number(int, 1), default=2, help="super-resolution factor (default: 2)")
    edit.add_argument("--blur", choices=("gaussian", "motion"), default="gaussian", help="deblurring's kernel")
    edit.add_argument("--blur-size", dest="blur_size", type=number(int, 1), default=5, help="kernel side (odd)")
    edit.add_argument("--blur-std", dest="blur_std", type=number(float, 0.0), default=1.0,
                      help="the Gaussian kernel's std in pixels (default: 1)")
    edit.add_argument("--angle", type=float, default=0.0, help="the motion blur's direction in degrees")
    edit.add_argument("--gain", type=number(float, 0.0), default=2.0, help="saturate: the sensor's gain (default 2)")
    edit.add_argument("--strength", type=number(float, 0.0), default=0.5,
                      help="sdedit: how far in (0, 1] the input is noised, as the time of DDPM's linear schedule "
                           "with the same signal-to-noise ratio, on any process; larger is freer (default: 0.5)")
    edit.add_argument("--labels", help="class labels to condition on, cycled (default: the unconditional model)")
    edit.set_defaults(handler=run)


def read_inputs(path: str, shape: tuple[int, ...]):
    """(images [N, C, H, W] in [-1, 1], the .npz's measurement in [0, 1] units or None, its mask or None)."""
    import numpy as np
    import torch

    from .data.folder import IMAGE_SUFFIXES, list_images, read_picture

    source = Path(path)
    c, h, w = shape
    if source.suffix == ".npz":
        with np.load(source) as stored:
            if "images" not in stored:
                raise ValueError(f"{source} has no 'images' array (it has {', '.join(stored.files) or 'nothing'})")
            pixels = torch.from_numpy(np.asarray(stored["images"], dtype=np.float32))
            extra = {k: torch.from_numpy(np.asarray(stored[k], dtype=np.float32)) for k in ("measurement", "mask")
                     if k in stored}
        given = tuple(pixels.shape)
        pixels = pixels[..., None] if pixels.ndim == 3 else pixels
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (h, w, c):
            raise ValueError(f"{source}: images must be [N, {h}, {w}{', ' + str(c) if c > 1 else ''}] for this "
                             f"model, got {given}")
        return pixels.permute(0, 3, 1, 2) * 2 - 1, extra.get("measurement"), extra.get("mask")
    if source.is_dir():
        files = list_images(source)[0]
        if not files:
            raise ValueError(f"{source} has no pictures ({', '.join(IMAGE_SUFFIXES)})")
    elif source.is_file():
        files = [source]
    else:
        raise ValueError(f"no such input: {source}")
    return torch.stack([read_picture(f, c, h, w) for f in files]), None, None


def _mask(args, shape, given):
    """The inpainting mask as the operator wants it (1 seen), from --mask or the .npz."""
    import torch

    from .data.folder import read_picture
    from .inverse import MASKS, as_mask

    if given is not None:
        if given.ndim == 3 and not (given == given[:1]).all():
            raise ValueError("the .npz's masks differ between images; one edit takes one mask for all of them")
        return as_mask(given[0] if given.ndim == 3 else given)
    if args.mask in MASKS:
        return args.mask
    picture = Path(args.mask)
    if not picture.is_file():
        raise ValueError(f"--mask is a name ({', '.join(MASKS)}) or a mask picture; {picture} is neither")
    return as_mask((read_picture(picture, 1, *shape[1:])[0] + 1) / 2).to(torch.float32)


def run(args, given: dict) -> int:
    import numpy as np
    import torch

    from .cli_args import check_out, cycled_labels, npz_images, npz_labels
    from .files import atomic_write
    from .inverse import Measurement, make_operator, measure
    from .plotting import save_image_grid
    from .runs import load

    out = check_out(args.out, (".png", ".npz"))
    try:
        method_options = json.loads(args.method_options)
    except json.JSONDecodeError as e:
        raise ValueError(f"--method-options is not JSON: {e}") from None
    if not isinstance(method_options, dict):
        raise ValueError("--method-options must be a JSON object, e.g. '{\"scale\": 0.5}'")
    pipeline = load(args.run, ema=not args.no_ema, device=args.device or "cpu", diffusers_config=args.diffusers_config)
    if pipeline.info.modality != "image":
        raise ValueError(f"diffuse edit works on images; this run's data are {pipeline.info.modality}s")
    images, stored_measurement, stored_mask = read_inputs(args.input, pipeline.shape)
    n = len(images)
    labels = cycled_labels(args.labels, n)
    common = dict(labels=labels, guidance=args.guidance, steps=args.steps, schedule=args.schedule, seed=args.seed)
    operator = measurement = None
    if args.task == "sdedit":
        if method_options != {} or args.method:
            raise ValueError("sdedit runs the model's own sampler (--sampler); it takes no --method")
        results = pipeline.sample(n, init=images, t_start=strength_time(pipeline.process, args.strength),
                                  sampler=args.sampler, **common)
    else:
        mask = _mask(args, pipeline.shape, stored_mask) if args.task == "inpaint" else None
        operator = make_operator(args.task, pipeline.shape, mask=mask, factor=args.factor, blur=args.blur,
                                 blur_size=args.blur_size, blur_std=args.blur_std, angle=args.angle, gain=args.gain)
        if stored_measurement is not None:
            measurement = Measurement(_from_pixels(operator, stored_measurement), operator, args.sigma_y)
        else:
            measurement = measure(operator, images, args.sigma_y, seed=args.seed)
        method = args.method or ("ddrm" if operator.linear else "dps")
        if args.sampler:
            raise ValueError(f"restoration samples with --method ({method}); --sampler is sdedit's")
        common["steps"] = args.steps or METHOD_STEPS[method]
        results = pipeline.sample(n, measurement=measurement, sampler=method, **common, **method_options)
    view = images if measurement is None else operator.preview(measurement.y)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        save_image_grid(torch.stack([images, view.float(), results], 1).flatten(0, 1), out, nrow=3)
    else:
        arrays = {"images": npz_images(results), "inputs": npz_images(images)}
        if measurement is not None and operator.linear:
            arrays["measurement"] = _to_pixels(operator, measurement.y).numpy().astype(np.float32)
        if args.task == "inpaint":
            arrays["mask"] = (1 - operator.mask[0]).numpy().astype(np.float32)
        with atomic_write(out) as f:
            np.savez(f, **arrays, labels=npz_labels(labels, n))
    consistency = "" if measurement is None else \
        f"; ||y - A(x)|| {float(measurement.consistency(results).mean()):.4f} per image (sigma_y {args.sigma_y:g})"
    print(f"wrote {n} results to {out}{consistency}")
    return 0


def strength_time(process, strength: float) -> float:
    """SDEdit's strength as a time of `process`: the time at which it has the log-SNR that DDPM's
    linear schedule (VP, beta 0.1..20) has at t = strength, so one strength means one noise level
    on every process (on the EDM path t is sigma / 80, and t = 0.5 would be sigma 40, pure noise)."""
    import torch

    from .configs import in_range
    from .process import VP

    in_range("strength", strength, 0, 1, low_open=True)
    t = process.t_from_log_snr(VP("linear").log_snr(torch.tensor(strength, dtype=torch.float64)))
    return float(t.clamp(process.t_min, process.t_max))


def _ones_measured(operator):
    import torch
    return operator(torch.ones(1, *operator.shape))[0]


def _from_pixels(operator, y_pixels):
    """A measurement of [0, 1] images, as an .npz holds it, in the model's range: A is linear, so
    A(2p - 1) = 2 A(p) - A(1)."""
    if not operator.linear:
        raise ValueError(f"a stored measurement needs a linear operator; {operator.name} measures here only")
    y = (y_pixels[..., None] if y_pixels.ndim == 3 else y_pixels).permute(0, 3, 1, 2)  # [N, h, w(, c)] as stored
    expected = tuple(operator.measurement_shape)
    if tuple(y.shape[1:]) != expected:
        raise ValueError(f"the stored measurement is {tuple(y_pixels.shape)}; this task measures {expected} per image")
    return 2 * y - _ones_measured(operator)


def _to_pixels(operator, y):
    """The inverse of _from_pixels: [N, h, w(, c)] in [0, 1] units."""
    p = (y.float() + _ones_measured(operator)) / 2
    p = p.permute(0, 2, 3, 1)
    return p[..., 0] if p.shape[-1] == 1 else p
