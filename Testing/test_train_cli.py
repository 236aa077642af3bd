"""`nerveseg train` and `nerveseg evaluate` run end to end on the bundled sample frames."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from NerveSegLogic import cli  # noqa: E402


def nerveseg(*argv) -> int:
    """The `nerveseg` entry point, in this process."""
    return cli.main([str(a) for a in argv])


def test_registering_the_commands_and_importing_the_train_package_imports_no_torch():
    code = ("import argparse, sys\n"
            "from NerveSegLogic.commands import train, evaluate\n"
            "sub = argparse.ArgumentParser().add_subparsers()\n"
            "train.register(sub); evaluate.register(sub)\n"
            "print(sorted(m for m in ('torch', 'cv2', 'monai', 'slicer') if m in sys.modules))\n"
            "from NerveSegLogic.train import metrics, augment, data, evaluate as ev, loop, recipe, checkpoints, reports\n"
            "from NerveSegLogic.train import evaluate_weights\n"
            "print(sorted(m for m in ('torch', 'monai', 'slicer') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]"]


def test_train_one_epoch_on_four_sample_frames_then_evaluate_them(tmp_path, sample_dir, capsys):
    out = tmp_path / "run"
    assert nerveseg("train", "--model", "smistad-unet", "--data", sample_dir, "--out", out, "--epochs", "1",
                    "--input-size", "64", "64", "--limit-images", "4", "--folds", "2", "--batch-size", "2",
                    "--threads", "1", "--no-progress") == 0
    printed = capsys.readouterr().out
    assert "finished: 1 epochs, 1 steps" in printed
    card = json.loads((out / "card.json").read_text())
    assert card["weights"]["file"] == "smistad-unet.safetensors" and len(card["weights"]["sha256"]) == 64
    assert card["input"]["size"] == [64, 64]
    assert card["training"]["run"]["split"]["validation_first_last"] == ["0196", "0197"]
    assert (out / "learning_curve.png").is_file()

    report = tmp_path / "eval"
    assert nerveseg("evaluate", "--model", "smistad-unet", "--data", sample_dir, "--weights",
                    out / "smistad-unet.safetensors", "--out", report, "--limit-images", "4", "--pictures", "1",
                    "--no-progress") == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["context"]["input_size"] == [64, 64]
    assert 0.0 <= metrics["per_class"]["nerve"]["dice"] <= 1.0
    assert metrics["per_class"]["vessel"] == metrics["per_class"]["blood_vessel"]
    assert (report / "report.md").is_file() and len(list((report / "overlays").glob("*.png"))) == 2


def test_evaluate_refuses_data_with_other_classes_and_says_what_it_expected(tmp_path, sample_dir, capsys):
    code = nerveseg("evaluate", "--model", "smistad-unet", "--data", sample_dir, "--map", "1=nerve,2=muscle",
                    "--out", tmp_path / "eval", "--no-progress")
    assert code == 2
    message = capsys.readouterr().err
    assert "segments {1: nerve, 2: blood_vessel}" in message and "--map 1=nerve,2=blood_vessel" in message
    assert not (tmp_path / "eval").exists()
