"""Drills: the failures a careless or hostile user provokes, run as that user would, through the
command line (in this process, or as a child process where a signal, a second writer or a full
disk is the point). Each asserts a clear one-line error and a non-zero exit, or the correct
result, and that nothing is lost and nothing is left half written. The numbers (D1, D2, ...) are
those of the closing note that lists every drill with its result before and after."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import diffuse
from _tiny import MLP, PYTHON, subprocess_env, unet_json
from diffuse.checkpoint import latest_checkpoint, read_run
from diffuse.cli import main
from diffuse.samplers import Generators

TINY = ["--quiet", "--batch-size", 16, "--sample-steps", 2, "--warmup-steps", 1, "--grid-size", 4]


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(result, command: str, *, code: int | None = None, contains: str = "") -> str:
    """Assert a refusal as a user should see it: a non-zero exit, one line naming the command, no
    traceback; return the line."""
    exit_code, out, err = result
    line = err.strip()
    assert exit_code != 0 and (code is None or exit_code == code), (exit_code, err)
    assert line.startswith(f"diffuse {command}: error:"), err
    assert "Traceback" not in err and len(line.splitlines()) == 1, err
    assert contains in line, line
    return line


def train_ring(out, *options):
    return cli("train", "--data", "ring", "--network", json.dumps(MLP), "--out", out, "--steps", 4,
               "--checkpoint-every", 2, *TINY, *options)


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("drills") / "ring"
    assert train_ring(run)[0] == 0
    return run


@pytest.fixture
def run_copy(ring_run, tmp_path):
    return Path(shutil.copytree(ring_run, tmp_path / "run"))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("drills") / "digits"
    code, _, err = cli("train", "--data", "digits", "--cond", "class", "--network", unet_json(10), "--out", run,
                       "--steps", 2, "--checkpoint-every", 2, *TINY)
    assert code == 0, err
    return run


def as_in_a_terminal() -> None:
    """SIGINT as a foreground process in a terminal has it. A test runner started in the background
    by a shell without job control ignores SIGINT, children inherit that, and Python then installs
    no KeyboardInterrupt handler: a Ctrl-C drill would wait forever."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def child(*argv, **kwargs) -> subprocess.Popen:
    """`python -m diffuse ARGV` as a child process with its own process group; SIGABRT makes it print
    every thread's Python stack (faulthandler), for a child that does not answer."""
    return subprocess.Popen([PYTHON, "-m", "diffuse", *map(str, argv)], env=subprocess_env(PYTHONFAULTHANDLER="1"),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=as_in_a_terminal, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    """The child's stderr once it exits; one that does not within `timeout` fails the test with
    its stacks."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        pytest.fail(f"the child did not exit in {timeout} s; its stacks:\n{process.communicate()[1][-4000:]}")


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the child exited early ({process.returncode}): {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the child never got there")
        time.sleep(0.05)


# -- D1, D2, D22: the run folder has one owner, and a run is never mixed into another ---------------

def test_d1_a_fresh_run_into_a_folder_that_holds_one_is_refused(run_copy):
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    one_line_error(train_ring(run_copy, "--steps", 6), "train", contains="already holds a run; continue it with "
                                                                         "--resume, replace it with --overwrite")
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before  # nothing touched
    (run_copy / "notes.txt").write_text("mine")
    assert train_ring(run_copy, "--steps", 6, "--overwrite")[0] == 0
    assert latest_checkpoint(run_copy).name == "step-00000006"
    assert sorted(p.name for p in (run_copy / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000006"]
    assert (run_copy / "notes.txt").read_text() == "mine"  # only the run's own files were replaced
    assert [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()] == [6]


def test_d1_overwrite_never_clears_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    one_line_error(train_ring(tmp_path, "--overwrite"), "train", contains="holds no run")
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_d2_d22_a_second_writer_is_refused_and_sigint_stops_the_first_cleanly(tmp_path):
    run = tmp_path / "run"
    first = child("train", "--data", "ring", "--network", json.dumps(MLP), "--out", run, "--steps", 100_000,
                  "--checkpoint-every", 5, *TINY)
    try:
        wait_for(lambda: (run / "checkpoints" / "latest").exists(), first)
        for options in ([], ["--resume"]):
            line = one_line_error(train_ring(run, *options), "train", contains=f"in use by process {first.pid}")
            assert "wait for it to finish" in line
        first.send_signal(signal.SIGINT)
        err = finish(first)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130 and err.strip().splitlines()[-1] == "diffuse train: interrupted", err
    assert "Traceback" not in err and not (run / ".lock").exists()
    step = int(latest_checkpoint(run).name.split("-")[1])
    code, out, _ = cli("train", "--out", run, "--resume", "--steps", step + 2, "--quiet")
    assert code == 0 and f"trained {step + 2} steps" in out


def test_d2_a_lock_left_by_a_dead_process_is_taken_over(run_copy):
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run_copy / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename,
                                                "started": "yesterday"}))
    code, out, err = cli("train", "--out", run_copy, "--resume", "--steps", 6, "--quiet")
    assert code == 0, err
    assert not (run_copy / ".lock").exists()


# -- D3, D4, D5: a full disk loses nothing and leaves nothing partial ----------------------------------

FULL_DISK = """
import resource, signal, sys
from diffuse.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # a write past the limit fails with EFBIG, as on a full disk
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def full_disk(limit: int, *argv) -> tuple[int, str, str]:
    done = subprocess.run([PYTHON, "-c", FULL_DISK, str(limit), *map(str, argv)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout, done.stderr


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.name != ".lock")


def test_d3_a_sample_that_cannot_be_written_keeps_the_old_file(digits_run, tmp_path):
    for name in ("grid.npz", "grid.png"):
        out = tmp_path / name
        assert cli("sample", digits_run, "--n", 4, "--labels", "1", "--steps", 2, "--out", out)[0] == 0
        good = out.read_bytes()
        result = full_disk(1000, "sample", digits_run, "--n", 100, "--labels", "0-9", "--steps", 2, "--out", out)
        one_line_error(result, "sample", code=1, contains="File too large")
        assert out.read_bytes() == good and leftovers(tmp_path) == []


def test_d4_training_on_a_full_disk_keeps_the_last_checkpoint(run_copy):
    result = full_disk(2000, "train", "--out", run_copy, "--resume", "--steps", 8, "--quiet")
    one_line_error(result, "train", code=1, contains="File too large")
    assert latest_checkpoint(run_copy).name == "step-00000004" and leftovers(run_copy) == []
    diffuse.load(run_copy).sample(3, steps=2)
    assert cli("train", "--out", run_copy, "--resume", "--steps", 8, "--quiet")[0] == 0


def test_d5_on_a_small_file_system(ring_run, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("this platform does not let the tests mount a small file system (tmpfs); D3/D4 cover it with a "
                    "file-size limit")
    try:
        out = mount / "points.npz"
        assert cli("sample", ring_run, "--n", 10, "--steps", 2, "--out", out)[0] == 0
        good = out.read_bytes()
        one_line_error(cli("sample", ring_run, "--n", 100_000, "--steps", 2, "--out", out), "sample",
                       contains="No space left on device")
        assert out.read_bytes() == good and leftovers(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- D6 - D10: nothing NaN is written, and no sample depends on its batch -------------------------------

@pytest.mark.parametrize("options", [["--guidance", "nan"], ["--guidance", "inf"], ["--guidance", "-1"],
                                     ["--classifier-scale", "nan"], ["--steps", "0"], ["--n", "-3"],
                                     ["--seed", "-1"], ["--sampler", "nosuch"]])
def test_d6_d13_numbers_a_sample_cannot_use_are_refused_before_any_work(digits_run, tmp_path, options):
    out = tmp_path / "x.npz"
    code, _, err = cli("sample", digits_run, "--labels", "1", "--out", out, *options)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "expected a finite number" in err or "invalid choice" in err
    assert not out.exists()


def test_d7_a_checkpoint_kept_after_a_divergence_writes_no_nan(run_copy, tmp_path):
    from safetensors.torch import load_file, save_file
    folder = latest_checkpoint(run_copy)
    for stem in ("ema", "model"):
        tensors = load_file(str(folder / f"{stem}.safetensors"))
        save_file({k: v * float("nan") for k, v in tensors.items()}, str(folder / f"{stem}.safetensors"))
    out = tmp_path / "p.npz"
    one_line_error(cli("sample", run_copy, "--n", 4, "--steps", 2, "--out", out), "sample",
                   contains="the model's weights are not finite")
    assert not out.exists()


def test_d8_a_half_precision_model_samples_in_half_and_never_returns_nan(digits_run):
    from diffuse.samplers import NonFiniteSampleError
    pipeline = diffuse.load(digits_run)
    pipeline.model.half()
    for sampler in ("pc", "heun", "ddpm"):
        try:
            images = pipeline.sample(8, labels=torch.arange(8), sampler=sampler, steps=6)
        except NonFiniteSampleError as e:  # refused, with the reason
            assert "float16, too narrow for the sampler" in str(e) and "Nothing was written" in str(e)
        else:
            assert images.dtype == torch.float32 and torch.isfinite(images).all()
    with pytest.raises(NonFiniteSampleError, match="are NaN or infinite in torch.float16, too narrow"):
        huge = torch.full((4, 2), 6e4, dtype=torch.float16)  # sigma * noise overflows float16's 65504
        diffuse.sample(lambda x, t: x, diffuse.EDM(), huge, sampler="euler", prediction="x0", steps=2)


@pytest.mark.parametrize("sampler", ["ddpm", "euler_ancestral", "sde", "sde_dpmpp_2m", "pc"])
def test_d9_a_stochastic_sample_depends_on_its_seed_and_index_only(digits_run, tmp_path, sampler):
    def draw(name, n, seed=0):
        assert cli("sample", digits_run, "--n", n, "--labels", "0-9", "--sampler", sampler, "--steps", 3,
                   "--seed", seed, "--out", tmp_path / name)[0] == 0
        return np.load(tmp_path / name)["images"]
    # the same noise whatever the batch; the network's batched arithmetic may differ in the last bit
    alone, in_a_batch = draw("ten.npz", 10), draw("twenty.npz", 20)[:10]
    assert np.abs(alone - in_a_batch).max() < 1e-5
    assert np.abs(alone - draw("other.npz", 10, seed=1)).max() > 0.05  # the seed decides


def test_d10_zero_terminal_snr_is_sampled_exactly_or_refused():
    from diffuse import GaussianMixture
    process = diffuse.VP.from_betas("scaled_linear", 1000, beta_start=0.00085, beta_end=0.012,
                                    rescale_zero_terminal_snr=True)
    mixture = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.2, 0.1])
    x0_model = mixture.denoiser(process)
    noise = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for prediction in ("v", "velocity", "eps"):
        model = lambda x, t: diffuse.convert(x0_model(x, t), "x0", prediction, x, t, process)  # noqa: E731
        for name in diffuse.samplers.available():
            run = lambda **o: diffuse.sample(model, process, noise, sampler=name, steps=12, prediction=prediction,  # noqa: E731
                                             generator=Generators.seeded(0, 0, 64), **o)
            if prediction == "v":  # x0 and eps are finite everywhere, alpha = 0 included
                x = run(schedule="trailing")
                assert torch.isfinite(x).all() and torch.cdist(x, mixture.means).min(1).values.median() < 0.3, name
                continue
            with pytest.raises(ValueError, match="zero SNR|velocity d x_t/dt is infinite"):
                run(schedule="trailing")  # t = 1: refused, with the reason
            start = float(process.timestep_to_t(998))  # just below it, where it is defined
            x = diffuse.sample(model, process, sampler=name, steps=12, prediction=prediction, schedule="trailing",
                               x_start=noise * float(process.sigma(start)), t_start=start,
                               generator=Generators.seeded(0, 0, 64))
            assert torch.isfinite(x).all(), (prediction, name)


# -- D11 - D15: flags and files are checked before any work, and mistakes are one line ---------------

def test_d11_resume_applies_and_records_train_changes_and_refuses_the_rest(run_copy):
    code, out, err = cli("train", "--out", run_copy, "--resume", "--steps", 6, "--lr", 1e-4, "--batch-size", 32,
                         "--quiet")
    assert code == 0, err
    stored = read_run(run_copy)
    assert stored.config["train"]["lr"] == 1e-4 and stored.config["train"]["batch_size"] == 32
    assert stored.history == [{"step": 4, "changed": {"train.batch_size": [16, 32], "train.lr": [0.002, 0.0001],
                                                      "train.steps": [4, 6]}}]
    for options, field in ((["--data", "moons"], "data.name"), (["--network", json.dumps({**MLP, "hidden": 8})],
                                                                "task.network.hidden"),
                           (["--process", "vp"], "task.process"), (["--seed", "3"], "train.seed")):
        line = one_line_error(cli("train", "--out", run_copy, "--resume", "--steps", 8, *options), "train",
                              contains="keeps its task, data and seed")
        assert field in line
    assert latest_checkpoint(run_copy).name == "step-00000006"


def test_d12_an_unknown_sampler_is_refused_before_training_and_nothing_is_written(tmp_path):
    code, _, err = train_ring(tmp_path / "run", "--sampler", "nosuch")
    assert code == 2 and "argument --sampler: invalid choice: 'nosuch'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
    line = one_line_error(cli("train", "--data", "ring", "--out", tmp_path / "run", "--set", "task.sampler=nosuch"),
                          "train")
    assert "sampler must be one of" in line and not (tmp_path / "run").exists()


@pytest.mark.parametrize("options, contains", [
    (["--network", "[1, 2]"], "task.network must be a JSON object"),
    (["--time-options", '{"p_mean": "high"}'], "time option p_mean must be a finite number"),
    (["--process", '{"kind": "edm", "sigma_min": "low"}'], "sigma_min must be a finite number"),
    (["--process", '{"kind": "vp", "schedule": "linear", "betas": 3}'], "unknown: ['betas']"),
    (["--data-options", '{"n": -4}'], "n must be at least 1"),
    (["--set", "train.lr=abc"], "train.lr must be a finite number"),
    (["--set", "task.network.hidden=-3"], "hidden must be a positive integer"),
])
def test_d13_config_values_are_checked_with_the_field_named(tmp_path, options, contains):
    one_line_error(train_ring(tmp_path / "run", *options), "train", code=1, contains=contains)
    assert not (tmp_path / "run").exists()


def test_d14_an_out_that_names_a_file_is_refused(tmp_path, ring_run):
    (tmp_path / "afile").write_text("x")
    one_line_error(train_ring(tmp_path / "afile"), "train", contains="is a file, not a folder")
    one_line_error(cli("sample", ring_run, "--out", tmp_path), "sample", contains="must end in .png or .npz")
    (tmp_path / "dir.npz").mkdir()
    one_line_error(cli("sample", ring_run, "--out", tmp_path / "dir.npz"), "sample", contains="is a folder")


def damaged_configs():
    """(name, change to a checkpoint's config.json as a function of its dict, or raw bytes)."""
    def drop(*path):
        def change(d):
            node = d
            for key in path[:-1]:
                node = node[key]
            del node[path[-1]]
            return d
        return change

    def put(value, *path):
        def change(d):
            node = d
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            return d
        return change

    return [
        ("not JSON", b"{not json"), ("empty", b""), ("binary", bytes(range(256))), ("a list", b"[1, 2]"),
        ("no kind", drop("kind")), ("no run", drop("run")), ("no data", drop("data")), ("no state", drop("state")),
        ("run is a string", put("x", "run")), ("history is a dict", put({}, "history")),
        ("unknown kind", put("painting", "kind")), ("task is a list", put([], "run", "task")),
        ("unknown task", put({"kind": "painting"}, "run", "task")), ("cond is a number", put(5, "run", "task", "cond")),
        ("unknown task field", put(1, "run", "task", "colour")), ("process without kind", put({}, "run", "task", "process")),
        ("process with an unknown option", put({"kind": "edm", "sigma_maximum": 80}, "run", "task", "process")),
        ("process with a string", put({"kind": "edm", "sigma_min": "small"}, "run", "task", "process")),
        ("network is a string", put("unet", "run", "task", "network")),
        ("lr is a string", put("fast", "run", "train", "lr")), ("steps negative", put(-1, "run", "train", "steps")),
        ("no data shape", drop("data", "shape")), ("data modality unknown", put("sound", "data", "modality")),
        ("sigma_data zero", put(0, "run", "task", "sigma_data")),
    ]


@pytest.mark.parametrize("name, change", damaged_configs(), ids=[n for n, _ in damaged_configs()])
def test_d15_a_damaged_config_json_is_a_one_line_error(run_copy, tmp_path, name, change):
    file = latest_checkpoint(run_copy) / "config.json"
    file.write_bytes(change if isinstance(change, bytes) else json.dumps(change(json.loads(file.read_text()))).encode())
    for command, argv in (("sample", ["sample", run_copy, "--n", 2, "--steps", 2, "--out", tmp_path / "x.npz"]),
                          ("train", ["train", "--out", run_copy, "--resume", "--steps", 6, "--quiet"]),
                          ("eval", ["eval", run_copy, "--n", 2, "--steps", 2])):
        one_line_error(cli(*argv), command, code=1)
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("name, content", [
    ("not JSON", "{"), ("no step", '{"optimizer": {}}'), ("step is a string", '{"step": "four", "optimizer": {}}'),
    ("step negative", '{"step": -4, "optimizer": {"param_groups": [], "scalars": {}}}'),
    ("no optimizer", '{"step": 4}'), ("optimizer is a list", '{"step": 4, "optimizer": []}'),
    ("optimizer without groups", '{"step": 4, "optimizer": {"scalars": {}}}'),
])
def test_d15_a_damaged_trainer_json_is_a_one_line_error(run_copy, name, content):
    (latest_checkpoint(run_copy) / "trainer.json").write_text(content)
    line = one_line_error(cli("train", "--out", run_copy, "--resume", "--steps", 6, "--quiet"), "train", code=1)
    assert "trainer.json" in line or "trainer state" in line


# -- D16 - D21: interrupted writes, and the smaller failures --------------------------------------------

def test_d16_a_crash_before_the_first_pointer_leaves_a_resumable_run(run_copy):
    for folder in (run_copy / "checkpoints").glob("step-*"):
        if folder.name != "step-00000002":
            shutil.rmtree(folder)
    (run_copy / "checkpoints" / "latest").unlink()  # killed between the folder's rename and the pointer's
    assert latest_checkpoint(run_copy).name == "step-00000002"
    code, out, err = cli("train", "--out", run_copy, "--resume", "--steps", 4, "--quiet")
    assert code == 0 and "trained 4 steps" in out, err


def test_d17_a_line_cut_short_in_metrics_does_not_block_resume(run_copy):
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    assert cli("train", "--out", run_copy, "--resume", "--steps", 6, "--quiet")[0] == 0
    assert [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()] == [4, 6]


def test_d18_a_message_about_a_discrete_schedule_stays_short(tmp_path, digits_run):
    code, _, err = cli("train", "--task", "classifier", "--data", "digits", "--process", "ddpm", "--out",
                       tmp_path / "clf", "--steps", 1, "--quiet", "--batch-size", 16)
    assert code == 0, err
    line = one_line_error(cli("sample", digits_run, "--n", 2, "--labels", 1, "--classifier", tmp_path / "clf",
                              "--out", tmp_path / "x.npz"), "sample", contains="needs the model's own process")
    assert len(line) < 600 and "1000 values" in line


def test_d19_a_sixteen_bit_image_trains_with_its_levels(tmp_path):
    images = tmp_path / "deep"
    images.mkdir()
    for k in range(8):
        level = np.full((8, 8), 4000 * (k + 1), dtype=np.uint16)
        from PIL import Image
        Image.fromarray(level).save(images / f"{k}.png")
    code, _, err = cli("train", "--data", f"folder:{images}", "--network", unet_json(None), "--out", tmp_path / "run",
                       "--steps", 1, *TINY[:-2], "--batch-size", 4)
    assert code == 0, err
    data = diffuse.data.load_dataset(f"folder:{images}").data
    assert data.max() < 1 and len(set(data[:, 0, 0, 0].tolist())) == 7  # distinct levels, none clipped to white


def test_d20_a_pointer_outside_the_run_is_refused(run_copy, tmp_path):
    (run_copy / "checkpoints" / "latest").write_text("../../elsewhere\n")
    one_line_error(cli("sample", run_copy, "--out", tmp_path / "x.npz"), "sample",
                   contains="should name a checkpoint folder like step-00001000")


def test_d21_kill_9_at_random_moments_always_leaves_a_run_that_loads_and_resumes(tmp_path):
    run, rng = tmp_path / "run", random.Random(0)
    argv = ["train", "--data", "ring", "--network", json.dumps(MLP), "--out", run, "--steps", 100_000,
            "--checkpoint-every", 1, "--keep-checkpoints", 2, *TINY]
    for attempt in range(3):
        process = child(*argv, *(["--resume"] if attempt else []))
        try:
            wait_for(lambda: (run / "checkpoints" / "latest").exists(), process)
            time.sleep(rng.uniform(0.05, 1.0))
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        diffuse.load(run).sample(2, steps=2)  # the newest complete checkpoint
    step = int(latest_checkpoint(run).name.split("-")[1])
    code, out, err = cli("train", "--out", run, "--resume", "--steps", step + 1, "--quiet")  # the stale lock is taken over
    assert code == 0 and f"trained {step + 1} steps" in out, err
    assert leftovers(run) == []  # a killed write's temporaries are swept by the next save


def test_d23_corrupt_inputs_are_one_line_errors(tmp_path, run_copy):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 9)
    one_line_error(cli("train", "--data", f"folder:{tmp_path / 'img'}", "--out", tmp_path / "r1"), "train",
                   contains="cannot read image")
    (tmp_path / "images.idx").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 5)
    one_line_error(cli("train", "--data", f"idx:{tmp_path / 'images.idx'}", "--out", tmp_path / "r2"), "train",
                   contains="truncated header")
    weights = latest_checkpoint(run_copy) / "ema.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    one_line_error(cli("sample", run_copy, "--out", tmp_path / "x.npz"), "sample", contains="not a valid safetensors")


# -- a bounded fuzz pass ---------------------------------------------------------------------------------

NASTY = ["nan", "inf", "-inf", "1e309", "-1", "0", "1.5", "", "abc", "1e-400", "0x10", " 3", "99999999999999999999",
         "none", "[]", "{}", "true"]
NUMERIC_FLAGS = ["--steps", "--batch-size", "--lr", "--ema-decay", "--label-dropout", "--seed", "--warmup-steps",
                 "--grad-clip", "--minutes", "--sigma-data", "--sample-steps", "--grid-size", "--text-lr-scale",
                 "--checkpoint-every", "--weight-decay"]


def test_fuzz_numeric_flags_never_reach_a_traceback(tmp_path):
    rng, deadline = random.Random(1), time.monotonic() + 20
    for flag in NUMERIC_FLAGS:
        for value in rng.sample(NASTY, 6):
            code, out, err = cli("train", "--data", "ring", "--network", json.dumps(MLP), "--print-config", flag, value)
            assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (flag, value, err)
            assert code in (0, 1, 2), (flag, value)
            if code == 0:  # accepted: the printed config holds a finite value for it
                assert "NaN" not in out and "Infinity" not in out, (flag, value)
            if time.monotonic() > deadline:
                return


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 3, 10**30])
    if kind == "float":
        return rng.choice([0.5, -2.5, 1e308])
    if kind == "str":
        return rng.choice(["", "unet", "dit", "mlp", "kind", "x" * 50])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    keys = ["kind", "channels", "hidden", "p_mean", "sigma_min", "n", "depth", "schedule", "dim"]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_fuzz_json_flags_never_reach_a_traceback():
    rng, deadline = random.Random(2), time.monotonic() + 20
    for i in range(120):
        flag = rng.choice(["--network", "--time-options", "--process", "--data-options", "--set"])
        value = random_json(rng)
        if rng.random() < 0.3:  # the shapes these flags usually hold, with a random field
            value = {"kind": rng.choice(["mlp", "unet", "edm", "vp"]), **(value if isinstance(value, dict) else {})}
        text = json.dumps(value) if flag != "--set" else f"{rng.choice(['task.network', 'train.lr', 'data.n'])}=" \
            f"{json.dumps(value)}"
        code, _, err = cli("train", "--data", "ring", "--print-config", flag, text)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1 and code in (0, 1, 2), (flag, text, err)
        if time.monotonic() > deadline:
            break


def test_fuzz_damaged_checkpoint_files_never_reach_a_traceback(ring_run, tmp_path):
    rng, deadline = random.Random(3), time.monotonic() + 25
    files = ["config.json", "trainer.json", "ema.safetensors", "model.safetensors", "trainer.safetensors"]
    for i in range(40):
        run = Path(shutil.copytree(ring_run, tmp_path / f"run{i}"))
        target = latest_checkpoint(run) / rng.choice(files)
        data = bytearray(target.read_bytes())
        if rng.random() < 0.5:
            data = data[:rng.randrange(len(data))]            # truncated
        else:
            for _ in range(rng.randint(1, 8)):                # bytes flipped
                data[rng.randrange(len(data))] = rng.randrange(256)
        target.write_bytes(bytes(data))
        command = rng.choice(["sample", "train"])
        argv = ["sample", run, "--n", 2, "--steps", 2, "--out", tmp_path / f"x{i}.npz"] if command == "sample" else \
            ["train", "--out", run, "--resume", "--steps", 5, "--quiet"]
        code, _, err = cli(*argv)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1 and code in (0, 1), (target.name, err)
        if code == 0 and command == "sample":
            assert np.isfinite(np.load(tmp_path / f"x{i}.npz")["points"]).all()
        shutil.rmtree(run)
        if time.monotonic() > deadline:
            break
