"""The memorisation audit: copies are flagged and fresh images sit at the floor, the calibration
states its false-positive rate, planted training duplicates are found, and `diffuse audit
memorisation` runs end to end on a tiny run (trained on a few images with --train-limit)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from _tiny import unet_json
from test_cli import run_main, train

from diffuse.data import load_dataset
from diffuse.metrics.audit import audit, audit_pipeline, training_duplicates


@pytest.fixture(scope="module")
def digits():
    """(train images, held-out images for calibration, other held-out images as a fresh "generator")."""
    test = load_dataset("digits", "test").data
    return load_dataset("digits", "train").data, test[:200], test[200:]


def test_copies_are_flagged_and_fresh_images_sit_at_the_floor(digits):
    train, heldout, fresh = digits
    copies = train[torch.arange(0, len(train), 7)]
    noisy = copies + 0.02 * torch.randn(copies.shape, generator=torch.Generator().manual_seed(0))
    for generated in (copies, noisy):
        report = audit(generated, train, heldout, duplicates=False)
        assert report["generated"]["rate"]["both"] == 1.0
        assert report["generated"]["extracted"] == list(range(len(generated)))
        nearest = torch.tensor(report["generated"]["samples"]["nearest"])
        assert torch.equal(train[nearest], copies)
    report = audit(fresh, train, heldout, duplicates=False)
    rate, floor = report["generated"]["rate"], report["floor"]["rate"]
    # 160 fresh real digits against a 1% threshold: a few at most, like the 100 check-half images.
    assert rate["normalised_l2"] <= 0.05 and floor["normalised_l2"] <= 0.05
    assert rate["both"] <= rate["normalised_l2"] and rate["either"] >= rate["nn_ratio"]
    assert report["floor"]["n"] + report["calibration"]["n"] == len(heldout)


def test_the_threshold_is_the_calibration_halfs_quantile(digits):
    train, heldout, fresh = digits
    loose, strict = (audit(fresh, train, heldout, quantile=q, duplicates=False) for q in (0.2, 0.01))
    assert loose["calibration"]["rate"]["normalised_l2"] <= 0.2
    assert loose["calibration"]["rate"]["normalised_l2"] >= 0.2 - 2 / loose["calibration"]["n"]
    assert loose["criteria"]["normalised_l2"]["threshold"] > strict["criteria"]["normalised_l2"]["threshold"]
    # a looser threshold flags more of every real set, the check half it never saw included
    assert loose["floor"]["rate"]["normalised_l2"] > strict["floor"]["rate"]["normalised_l2"]
    assert loose["generated"]["rate"]["normalised_l2"] > strict["generated"]["rate"]["normalised_l2"]


def test_planted_training_duplicates_are_found(digits):
    train, heldout, _ = digits
    clean = train[:300]
    planted = torch.cat([clean, clean[[5, 50, 150]] + 0.01])   # 300~5, 301~50, 302~150
    threshold = audit(heldout, clean, heldout, duplicates=False)["criteria"]["normalised_l2"]["threshold"]
    found = {(p["a"], p["b"]) for p in training_duplicates(planted, threshold)["pairs"]}
    assert {(5, 300), (50, 301), (150, 302)} <= found
    before = {(p["a"], p["b"]) for p in training_duplicates(clean, threshold)["pairs"]}
    assert found - before == {(5, 300), (50, 301), (150, 302)}
    exact = training_duplicates(torch.cat([clean[:20], clean[:1], clean[:1]]), threshold)
    assert {(0, 20), (0, 21)} & {(p["a"], p["b"]) for p in exact["pairs"]} and exact["pairs"][0]["distance"] == 0


def test_bad_input_is_refused(digits):
    train, heldout, fresh = digits
    with pytest.raises(ValueError, match="at least 2"):
        audit(fresh, train, heldout[:1])
    with pytest.raises(ValueError, match="quantile"):
        audit(fresh, train, heldout, quantile=1.5)
    with pytest.raises(ValueError, match="differ in dimension"):
        audit(fresh[:, :, :4], train, heldout)
    with pytest.raises(ValueError, match="exact copies"):
        audit(fresh, train, train[:50])
    with pytest.raises(ValueError, match="positive integer"):
        audit_pipeline(None, 0, train, heldout)


@pytest.fixture(scope="module")
def few_digits_run(tmp_path_factory):
    """An unconditional digits run trained on 20 images (--train-limit)."""
    folder = tmp_path_factory.mktemp("few")
    code, _, err = train(folder, "--data", "digits", "--train-limit", 20, "--network", unet_json())
    assert code == 0, err
    return folder


def test_the_command_writes_a_report_and_a_picture_of_pairs(few_digits_run, tmp_path):
    code, out, err = run_main(["audit", "memorisation", few_digits_run, "--n", 6, "--steps", 2,
                               "--out", tmp_path / "audit"])
    assert code == 0, err
    assert "held-out images (floor)" in out and "training-set near-duplicates" in out
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["generated"]["n"] == 6 and len(report["generated"]["samples"]["nearest"]) == 6
    assert report["duplicates"]["n_train"] == 20 and report["data"]["train_limit"] == 20
    assert report["floor"]["n"] + report["calibration"]["n"] == 360
    with Image.open(tmp_path / "audit" / "pairs.png") as picture:
        assert picture.width > picture.height  # pairs side by side under a title


def test_the_command_explains_bad_input(few_digits_run, tmp_path):
    code, _, err = run_main(["audit", "memorisation", few_digits_run, "--n", 0, "--out", tmp_path])
    assert code == 2 and "--n" in err
    code, _, err = run_main(["audit", "memorisation", tmp_path / "nowhere", "--n", 4, "--out", tmp_path / "a"])
    assert code == 1 and "nowhere" in err
    (tmp_path / "file").write_text("")
    code, _, err = run_main(["audit", "memorisation", few_digits_run, "--n", 4, "--out", tmp_path / "file"])
    assert code == 1 and "is a file" in err
    code, _, err = run_main(["audit", "memorisation", few_digits_run, "--quantile", 1, "--out", tmp_path / "q"])
    assert code == 1 and "--quantile must lie in (0, 1)" in err and not (tmp_path / "q").exists()
    code, _, err = run_main(["audit"])
    assert code == 2 and "memorisation" in err


def test_train_limit_keeps_a_fixed_class_balanced_few_and_the_whole_test_split():
    full, few = load_dataset("digits", "train"), load_dataset("digits", "train", train_limit=50)
    assert len(few) == 50 and few.labels.bincount().tolist() == [5] * 10
    matches = (few.data[:, None] == full.data[None]).flatten(2).all(-1)       # [50, 1437]
    assert matches.any(1).all()
    assert torch.equal(few.data, load_dataset("digits", "train", train_limit=50).data)
    assert len(load_dataset("digits", "test", train_limit=50)) == len(load_dataset("digits", "test"))
    assert len(load_dataset("digits", "train", train_limit=10**6)) == len(full)
    with pytest.raises(ValueError, match="train_limit"):
        load_dataset("digits", "train", train_limit=0)
