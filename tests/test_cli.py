"""`diffuse train | sample` end to end on tiny settings, mostly in-process through cli.main."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import diffuse
from _tiny import MLP, PYTHON, subprocess_env, unet_json
from diffuse.checkpoint import latest_checkpoint
from diffuse.cli import main
from diffuse.cli_args import parse_labels
from diffuse.plotting import class_grid


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def train(out, *options) -> tuple[int, str, str]:
    return run_main(["train", "--out", out, "--quiet", "--steps", 3, "--batch-size", 16,
                     "--checkpoint-every", 3, "--sample-steps", 2, "--warmup-steps", 1, *options])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A class-conditional digits run trained through the CLI."""
    run = tmp_path_factory.mktemp("digits")
    code, out, err = train(run, "--data", "digits", "--cond", "class", "--network", unet_json(10))
    assert code == 0, err
    return run, out


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    """An unconditional 2-D ring run trained through the CLI."""
    run = tmp_path_factory.mktemp("ring")
    code, _, err = train(run, "--data", "ring", "--network", json.dumps(MLP))
    assert code == 0, err
    return run


def sample(run, out, *options) -> tuple[int, str, str]:
    return run_main(["sample", run, "--steps", 2, "--out", out, *options])


# -- train ---------------------------------------------------------------------------------------

def test_train_writes_checkpoint_pictures_and_the_options_given(digits_run):
    run, printed = digits_run
    assert "trained 3 steps" in printed and "step-00000003" in printed
    assert latest_checkpoint(run).name == "step-00000003"
    assert (run / "samples.png").is_file() and (run / "loss.png").is_file()
    assert (run / "pictures" / "samples-step-00000003.png").is_file()
    pipeline = diffuse.load(run)
    config = pipeline.config
    assert (config.task.cond, config.train.steps, config.train.batch_size, config.task.sample_steps,
            config.train.warmup_steps) == ("class", 3, 16, 2, 1)
    assert config.task.network == json.loads(unet_json(10))
    assert pipeline.num_classes == 10 and pipeline.shape == (1, 8, 8)


def test_train_resume_extends_the_run(tmp_path):
    assert train(tmp_path, "--data", "ring", "--network", json.dumps(MLP))[0] == 0
    code, out, err = run_main(["train", "--out", tmp_path, "--resume", "--steps", 5, "--quiet"])
    assert code == 0, err
    assert "trained 5 steps" in out and latest_checkpoint(tmp_path).name == "step-00000005"


def test_train_stores_the_time_options_given(tmp_path):
    options = ["--data", "ring", "--network", json.dumps(MLP), "--time-sampling", "logit_normal"]
    assert train(tmp_path, *options, "--time-options", '{"logit_mean": 0.5}')[0] == 0
    assert diffuse.load(tmp_path).config.task.time_options == {"logit_mean": 0.5}


@pytest.mark.parametrize("options, message", [
    (["--data", "nonsense"], "unknown data set 'nonsense'"),
    (["--data", "digits", "--cond", "class", "--network", unet_json(None)], "num_classes=10"),
    (["--data", "ring", "--time-options", '{"p_men": 0}'], "'log_normal' has no option(s) ['p_men']"),
    (["--data", "ring", "--network", "[1, 2]"], "flags: task.network must be a JSON object, got [1, 2]"),
    (["--data", "ring", "--batch-size", 0], "train: batch_size must be an integer >= 1, got 0"),
    (["--data", "ring", "--ema-decay", 1.5], "ema_decay must be a finite number in [0, 1), got 1.5"),
])
def test_train_errors_exit_1_with_a_message(tmp_path, options, message):
    code, _, err = train(tmp_path / "run", *options)
    assert code == 1
    assert err.startswith("diffuse train: error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("options, message", [
    (["--network", "{not json"], "argument --network: not valid JSON (Expecting property name"),
    (["--lr", "nan"], "argument --lr: expected a finite number"),
    (["--cond", "words"], "argument --cond: invalid choice: 'words'"),
])
def test_unreadable_flags_exit_2_with_a_one_line_message(tmp_path, options, message):
    code, _, err = train(tmp_path / "run", "--data", "ring", *options)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_non_finite_loss_exits_1_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from diffuse.training.tasks import diffusion as config_module

    class Poisoned(config_module.DenoisingLoss):
        calls = 0

        def __call__(self, *args, **kwargs):
            Poisoned.calls += 1
            loss = super().__call__(*args, **kwargs)
            return loss * float("nan") if Poisoned.calls == 3 else loss

    monkeypatch.setattr(config_module, "DenoisingLoss", Poisoned)  # DiffusionTaskConfig.denoising_loss builds it
    code, out, err = run_main(["train", "--out", tmp_path, "--data", "ring", "--network", json.dumps(MLP),
                               "--steps", 6, "--checkpoint-every", 2, "--quiet"])
    assert code == 1 and out == ""
    assert "diffuse train: error: the loss is nan at step 3" in err and "Traceback" not in err
    assert latest_checkpoint(tmp_path).name == "step-00000002"
    assert not (tmp_path / "checkpoints" / "step-00000003").exists()
    diffuse.load(tmp_path)


# -- image folders -------------------------------------------------------------------------------

def write_digit_folder(root, n: int = 12):
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"img{k:02d}.png")


def test_train_on_an_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_digit_folder(images)
    code, _, err = run_main(["train", "--data", f"folder:{images}", "--out", tmp_path / "run", "--quiet",
                             "--steps", 2, "--batch-size", 4, "--sample-steps", 2,
                             "--network", unet_json(None)])
    assert code == 0, err
    assert diffuse.load(tmp_path / "run").shape == (1, 8, 8)


def test_a_folder_of_mixed_size_rgb_images_trains_with_size_crop_and_flip(tmp_path):
    images = tmp_path / "photos"
    rng = np.random.default_rng(1)
    for k, (w, h) in enumerate([(40, 30), (50, 64), (32, 32), (33, 47), (80, 20), (36, 36)] * 2):
        (images / ("cats" if k % 2 else "dogs")).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / ("cats" if k % 2 else "dogs")
                                                                              / f"{k}.png")
    network = {"kind": "unet", "channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_levels": [1]}
    code, _, err = run_main(["train", "--data", f"folder:{images}", "--size", 32, "--center-crop", "--random-flip",
                             "--cond", "class", "--network", json.dumps(network), "--out", tmp_path / "run", "--quiet",
                             "--steps", 2, "--batch-size", 4, "--sample-steps", 2, "--grid-size", 4])
    assert code == 0, err
    pipeline = diffuse.load(tmp_path / "run")
    assert pipeline.shape == (3, 32, 32) and pipeline.num_classes == 2
    data = pipeline.config.data
    assert (data.size, data.center_crop, data.random_flip) == (32, True, True)
    assert pipeline.config.task.network["in_channels"] == 3


def test_a_folder_run_records_its_data_with_an_absolute_path(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    write_digit_folder(images)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["train", "--data", "folder:images", "--out", "run", "--quiet", "--steps", 1,
                             "--batch-size", 4, "--sample-steps", 2, "--network", unet_json(None)])
    assert code == 0, err
    monkeypatch.chdir("/")
    pipeline = diffuse.load(tmp_path / "run")
    assert pipeline.config.data.name == f"folder:{images.resolve()}"
    assert len(diffuse.data.load_dataset(pipeline.config.data, "test")) == 1  # found from anywhere


def test_a_corrupt_image_is_named_in_the_error(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_digit_folder(images)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    code, _, err = run_main(["train", "--data", f"folder:{images}", "--out", tmp_path / "run", "--quiet"])
    assert code == 1
    assert "cannot read image" in err and str(images / "broken.png") in err
    assert "Traceback" not in err


def test_a_missing_image_folder_exits_1(tmp_path):
    code, _, err = run_main(["train", "--data", f"folder:{tmp_path / 'nowhere'}", "--out", tmp_path / "r"])
    assert code == 1 and "does not exist" in err


# -- sample ------------------------------------------------------------------------------------------

def test_sample_png_is_a_class_major_grid_of_the_samples(digits_run, tmp_path):
    run, _ = digits_run
    code, out, err = sample(run, tmp_path / "sub" / "x.png", "--n", 30, "--labels", "0-2")
    assert code == 0, err
    assert "wrote 30 samples" in out
    assert sample(run, tmp_path / "x.npz", "--n", 30, "--labels", "0-2")[0] == 0
    with np.load(tmp_path / "x.npz") as f:
        images, labels = torch.from_numpy(f["images"])[:, None] * 2 - 1, torch.from_numpy(f["labels"])
    with Image.open(tmp_path / "sub" / "x.png") as image:
        drawn = np.asarray(image.convert("RGB"))
    expected = class_grid(images, labels, scale=8)  # 8x8 digits are drawn 8 times larger
    assert drawn.shape == expected.shape and np.abs(drawn.astype(int) - expected).max() <= 1


def test_sample_npz_holds_images_in_unit_range_and_cycled_labels(digits_run, tmp_path):
    run, _ = digits_run
    assert sample(run, tmp_path / "x.npz", "--n", 12, "--labels", "0-9")[0] == 0
    with np.load(tmp_path / "x.npz") as f:
        images, labels = f["images"], f["labels"]
    assert images.dtype == np.float32 and images.shape == (12, 8, 8)
    assert images.min() >= 0 and images.max() <= 1
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]

    assert sample(run, tmp_path / "y.npz", "--n", 5, "--labels", "3,5,7")[0] == 0
    assert np.load(tmp_path / "y.npz")["labels"].tolist() == [3, 5, 7, 3, 5]


def test_sample_is_a_function_of_the_seed_and_guidance_changes_it(digits_run, tmp_path):
    run, _ = digits_run

    def draw(name, *options):
        assert sample(run, tmp_path / name, "--n", 4, "--labels", "2", *options)[0] == 0
        return np.load(tmp_path / name)["images"]

    plain = draw("a.npz")
    assert np.array_equal(plain, draw("b.npz"))
    assert not np.array_equal(plain, draw("c.npz", "--seed", 1))
    guided = draw("d.npz", "--guidance", 2)
    assert np.isfinite(guided).all() and not np.array_equal(plain, guided)
    assert not np.array_equal(plain, draw("e.npz", "--no-ema"))


def test_sample_a_toy_run_writes_points_or_their_scatter(ring_run, tmp_path):
    assert sample(ring_run, tmp_path / "p.npz", "--n", 7)[0] == 0
    with np.load(tmp_path / "p.npz") as f:
        assert f["points"].shape == (7, 2) and f["points"].dtype == np.float32
        assert np.isfinite(f["points"]).all() and f["labels"].tolist() == [-1] * 7
    code, _, err = sample(ring_run, tmp_path / "p.png", "--n", 7)
    assert code == 0, err
    with Image.open(tmp_path / "p.png") as image:
        assert image.size == (480, 480)


@pytest.mark.parametrize("which, options, message", [
    ("ring", ["--labels", "0-3"], "unconditional"),
    ("ring", ["--guidance", "2"], "guidance needs labels"),
    ("digits", ["--labels", "0-10"], "labels must lie in 0..9"),
    ("digits", ["--labels", "three"], "cannot read labels"),
    ("digits", ["--guidance", "inf"], "argument --guidance: expected a finite number >= 0"),
    ("digits", ["--n", "0"], "argument --n: expected a finite number >= 1"),
    ("digits", ["--steps", "0"], "argument --steps: expected a finite number >= 1"),
])
def test_sample_errors_exit_with_a_one_line_message(digits_run, ring_run, tmp_path, which, options, message):
    run = ring_run if which == "ring" else digits_run[0]
    code, out, err = sample(run, tmp_path / "x.npz", *options)
    assert code in (1, 2) and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("diffuse sample: error:") and message in err
    assert not (tmp_path / "x.npz").exists()


def test_sample_refuses_an_unknown_suffix_and_a_missing_run(digits_run, tmp_path):
    code, _, err = sample(digits_run[0], tmp_path / "x.jpg")
    assert code == 1 and "must end in .png or .npz" in err and not (tmp_path / "x.jpg").exists()
    code, _, err = sample(tmp_path / "no-such-run", tmp_path / "x.png")
    assert code == 1 and "no checkpoint found" in err


def test_parse_labels():
    assert parse_labels("0-2,7") == [0, 1, 2, 7]
    assert parse_labels(" 4 ") == [4]
    assert parse_labels(None) is None
    with pytest.raises(ValueError, match="no labels"):
        parse_labels("5-3")


def test_python_dash_m_diffuse_samples(digits_run, tmp_path):
    run, _ = digits_run
    result = subprocess.run([PYTHON, "-m", "diffuse", "sample", str(run), "--n", "3", "--labels", "4",
                             "--steps", "2", "--out", str(tmp_path / "x.npz")],
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    in_process = tmp_path / "y.npz"
    assert sample(run, in_process, "--n", 3, "--labels", 4)[0] == 0
    assert np.array_equal(np.load(tmp_path / "x.npz")["images"], np.load(in_process)["images"])
    assert torch.equal(torch.from_numpy(np.load(tmp_path / "x.npz")["labels"]), torch.tensor([4, 4, 4]))


def test_eval_prints_the_metrics_beside_the_floor(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFUSE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--cond", "class", "--steps", "2", "--batch-size", "16",
                 "--network", unet_json(10), "--checkpoint-every", "2", "--sample-steps", "2",
                 "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "scores.json"
    assert main(["eval", str(run), "--n", "50", "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fd" in printed and "accuracy" in printed and "floor" in printed
    scores = json.loads(out.read_text())
    assert scores["model"]["n_generated"] == 50
    # an untrained model is far from the data; real data is at the floor
    assert scores["model"]["fd"] > scores["floor"]["fd"]
    assert scores["floor"]["accuracy"] > 0.95


def test_a_config_file_reproduces_the_run_of_the_flags_and_print_config_round_trips(tmp_path):
    flags = ["--data", "digits", "--cond", "class", "--network", unet_json(10), "--steps", 3, "--batch-size", 16,
             "--checkpoint-every", 3, "--sample-steps", 2, "--warmup-steps", 1, "--lr", 1e-3, "--label-dropout", 0.2,
             "--set", "task.time_options.p_mean=-0.8"]
    code, printed, err = run_main(["train", "--print-config", *flags])
    assert code == 0, err
    (tmp_path / "run.json").write_text(printed)
    assert run_main(["train", "--out", tmp_path / "flags", "--quiet", *flags])[0] == 0
    assert run_main(["train", "--out", tmp_path / "file", "--quiet", "--config", tmp_path / "run.json"])[0] == 0
    a, b = diffuse.load(tmp_path / "flags"), diffuse.load(tmp_path / "file")
    assert a.config.to_dict() == b.config.to_dict() == json.loads(printed)
    assert a.config.task.time_options == {"p_mean": -0.8} and a.config.task.sigma_data is not None
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    # and the printed config of the file is the file itself
    code, again, _ = run_main(["train", "--print-config", "--config", tmp_path / "run.json"])
    assert code == 0 and json.loads(again) == json.loads(printed)


def test_help_shows_every_field_with_its_default_and_the_version(capsys):
    import dataclasses

    from diffuse.cli import build_parser
    from diffuse.training import AutoencoderTaskConfig

    def shown(*argv) -> str:
        with pytest.raises(SystemExit):
            build_parser(list(argv)).parse_args(list(argv))
        return " ".join(capsys.readouterr().out.split())

    # the defaults shown are the task's own
    assert "--time-sampling" in shown("train", "--help") and "(default: log_normal)" in shown("train", "--help")
    autoencoder = shown("train", "--task", "autoencoder", "--help")
    assert "(default: 1e-06)" in autoencoder and "AdamW's peak learning rate (default: 0.001)" in autoencoder
    for f in dataclasses.fields(AutoencoderTaskConfig):
        assert f"--{f.name.replace('_', '-')}" in autoencoder
    assert "start from a named recipe" in shown("train", "--recipe", "shapes", "--help")
    assert shown("--version").startswith("diffuse 0.2")
