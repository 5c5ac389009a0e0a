"""`diffuse edit` over a tiny trained run: inputs from pictures and .npz files, every task, the
measurement's round trip through an .npz, and the errors a user meets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _tiny import unet_json
from test_cli import run_main, train

from diffuse.inverse import Downsample, Measurement, make_operator
from diffuse.edit_cli import _from_pixels, _to_pixels


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    code, _, err = train(folder, "--data", "digits", "--cond", "class", "--network", unet_json(10))
    assert code == 0, err
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Five 8x8 pictures as a folder and as an .npz (images in [0, 1], as `diffuse sample` writes them)."""
    folder = tmp_path_factory.mktemp("inputs")
    pixels = np.random.default_rng(0).random((5, 8, 8)).astype(np.float32)
    for k, p in enumerate(pixels):
        Image.fromarray((p * 255).round().astype(np.uint8)).save(folder / f"{k}.png")
    np.savez(folder / "images.npz", images=np.round(pixels * 255) / 255)
    return folder


def edit(run, inputs, out, *options):
    return run_main(["edit", run, "--input", inputs, "--out", out, "--steps", 3, *options])


@pytest.mark.parametrize("task, method", [("inpaint", "repaint"), ("inpaint", "ddrm"), ("superres", "ddrm"),
                                          ("deblur", "daps"), ("saturate", "dps")])
def test_every_task_restores_a_picture_folder(run, inputs, tmp_path, task, method):
    code, out, err = edit(run, inputs, tmp_path / "x.npz", "--task", task, "--method", method, "--sigma-y", 0.05,
                          "--method-options", '{"resamplings": 2}' if method == "repaint" else "{}")
    assert code == 0, err
    assert "wrote 5 results" in out and "||y - A(x)||" in out
    with np.load(tmp_path / "x.npz") as f:
        assert f["images"].shape == (5, 8, 8) and 0 <= f["images"].min() and f["images"].max() <= 1
        assert np.allclose(f["inputs"], np.load(inputs / "images.npz")["images"], atol=1e-6)
        assert ("mask" in f) == (task == "inpaint") and ("measurement" in f) == (task != "saturate")


def test_a_png_shows_input_measurement_and_result_per_row(run, inputs, tmp_path):
    code, _, err = edit(run, inputs / "images.npz", tmp_path / "x.png", "--task", "superres", "--factor", 4)
    assert code == 0, err
    with Image.open(tmp_path / "x.png") as image:
        assert image.width > image.height / 5 * 3 * 0.9  # 5 rows of 3 pictures


def test_sdedit_starts_from_the_input_and_strength_frees_it(run, inputs, tmp_path):
    def result(strength):
        code, _, err = edit(run, inputs / "images.npz", tmp_path / "s.npz", "--task", "sdedit", "--strength", strength,
                            "--labels", "3")
        assert code == 0, err
        return np.load(tmp_path / "s.npz")["images"]

    given = np.load(inputs / "images.npz")["images"]
    near, far = result(0.01), result(1.0)
    # a tiny strength barely changes the input; full strength ignores it
    assert np.abs(near - given).mean() < np.abs(far - given).mean() / 3


def test_a_stored_measurement_is_used_as_given(run, inputs, tmp_path):
    images = torch.from_numpy(np.load(inputs / "images.npz")["images"])[:, None] * 2 - 1
    op = Downsample((1, 8, 8), 2)
    # the pixel-unit conversion is exact both ways for a linear operator
    y = op(images)
    assert torch.allclose(_from_pixels(op, _to_pixels(op, y)), y, atol=1e-6)
    measured = _to_pixels(op, op(torch.zeros_like(images))).numpy()  # the measurement of black images
    np.savez(tmp_path / "m.npz", images=np.load(inputs / "images.npz")["images"], measurement=measured)
    code, out, err = edit(run, tmp_path / "m.npz", tmp_path / "r.npz", "--task", "superres", "--steps", 10)
    assert code == 0, err
    result = torch.from_numpy(np.load(tmp_path / "r.npz")["images"])[:, None] * 2 - 1
    # the result explains the stored measurement (zeros), not the images' own
    stored = Measurement(_from_pixels(op, torch.from_numpy(measured)), op)
    assert stored.consistency(result).mean() < Measurement(y, op).consistency(result).mean()


def test_a_mask_picture_is_white_where_to_fill(run, inputs, tmp_path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255  # fill the left half
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, _, err = edit(run, inputs / "images.npz", tmp_path / "x.npz", "--task", "inpaint", "--mask",
                        tmp_path / "mask.png", "--method", "ddrm")
    assert code == 0, err
    with np.load(tmp_path / "x.npz") as f:
        assert f["mask"][:, :4].min() == 1 and f["mask"][:, 4:].max() == 0
        # sigma_y = 0: the seen half is kept exactly
        assert np.allclose(f["images"][:, :, 4:], f["inputs"][:, :, 4:], atol=1e-5)


def test_edit_errors_are_one_clear_line(run, inputs, tmp_path):
    cases = [
        (["--task", "colorize"], "needs RGB images"),
        (["--task", "inpaint", "--mask", "nothing"], "is a name"),
        (["--task", "saturate", "--method", "ddrm"], "needs a linear operator"),
        (["--task", "sdedit", "--method", "dps"], "takes no --method"),
        (["--task", "superres", "--factor", 3], "must divide"),
        (["--task", "deblur", "--method-options", "[1]"], "JSON object"),
        (["--task", "deblur", "--method-options", '{"nope": 1}'], "has no option"),
    ]
    for options, message in cases:
        code, _, err = edit(run, inputs, tmp_path / "x.npz", *options)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (options, err)
    code, _, err = edit(run, tmp_path / "missing", tmp_path / "x.npz", "--task", "deblur")
    assert code == 1 and "no such input" in err
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 6, 6), dtype=np.float32))
    code, _, err = edit(run, tmp_path / "bad.npz", tmp_path / "x.npz", "--task", "deblur")
    assert code == 1 and "must be [N, 8, 8]" in err


def test_make_operator_names_what_it_accepts():
    with pytest.raises(ValueError, match="tasks: inpaint"):
        make_operator("paint", (1, 8, 8))
    with pytest.raises(ValueError, match="choose gaussian or motion"):
        make_operator("deblur", (1, 8, 8), blur="box")


def test_pipeline_checks_measurements_and_start_images(run):
    import diffuse

    pipe = diffuse.load(run)
    images = torch.zeros(3, *pipe.shape)
    m = diffuse.measure(Downsample(pipe.shape, 2), images)
    with pytest.raises(ValueError, match="posterior sampler"):
        pipe.sample(3, measurement=m, sampler="heun")
    with pytest.raises(ValueError, match="a measurement of 3 images for n=2"):
        pipe.sample(2, measurement=m, sampler="ddrm")
    with pytest.raises(ValueError, match="init and t_start go together"):
        pipe.sample(3, init=images)
    with pytest.raises(ValueError, match=r"init must be \[n=3, 1, 8, 8\]"):
        pipe.sample(3, init=images[:, :, :4], t_start=0.5)
    # a restoration is a function of the seed and the image, batch by batch as in one go (to float32
    # rounding: the network's and the SVD's matrix products block differently by batch size)
    for method in ("ddrm", "daps", "dps", "repaint"):
        whole = pipe.sample(3, measurement=m, sampler=method, steps=3, seed=4)
        parts = pipe.sample(3, measurement=m, sampler=method, steps=3, seed=4, batch_size=2)
        assert torch.allclose(whole, parts, atol=1e-5), method
        assert not torch.allclose(whole, pipe.sample(3, measurement=m, sampler=method, steps=3, seed=5)), method
