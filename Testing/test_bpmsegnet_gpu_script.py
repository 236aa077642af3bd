"""benchmarks/accuracy/train_bpmsegnet_gpu.py, the prepared command that trains BPMSegNet with its paper's recipe on a lent GPU,
is ready before a GPU is: with a two-step budget on the CPU (tiny frames, a tiny FPN) it trains one slice, resumes
from its own checkpoint in the next call, and writes weights, card and mask AP, and what it exports comes back
whole."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models.card import ModelCard  # noqa: E402

SCRIPT = "benchmarks/accuracy/train_bpmsegnet_gpu.py"
# 64x64 frames and a narrow FPN with few proposals: one step takes well under a second on one thread.
TINY_BUILD = ["fpn_channels=32", "anchor_sizes=[8,16,32,64,128]", "rpn_pre_nms_top_n=[100,50]",
              "rpn_post_nms_top_n=[50,20]", "rpn_batch_size=32", "box_batch_size=32", "detections_per_image=10"]


def run_script(repo_root, *arguments, timeout=120):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, SCRIPT, *arguments], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def two_step_call(repo_root, data, out, export):
    """One call of the prepared command on the CPU: 2 epochs of 1 step (2 training frames, batch 2), a slice too
    short for more than one epoch, so the second epoch needs a second call."""
    arguments = ["--device", "cpu", "--threads", "1", "--data", str(data), "--format", "folder",
                 "--map", "1=nerve,2=blood_vessel", "--out", str(out), "--input-size", "64", "64",
                 "--folds", "2", "--epochs", "2", "--slice-minutes", "0.002", "--export", str(export)]
    for item in TINY_BUILD:
        arguments += ["--build", item]
    return run_script(repo_root, *arguments)


def test_two_step_budget_trains_a_slice_resumes_and_writes_weights_card_and_mask_ap(tmp_path, repo_root):
    from test_train_loop import write_frames

    data = write_frames(tmp_path / "data", count=4, height=64, width=64)
    out, first_export, second_export = tmp_path / "run", tmp_path / "export1", tmp_path / "export2"

    first = two_step_call(repo_root, data, out, first_export)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "not complete, run the same command again" in first.stdout
    record = json.loads((out / "checkpoint.json").read_text())
    assert (record["epoch"], record["global_step"]) == (1, 1)  # the slice stopped after one step
    progress = json.loads((out / "mask_ap.json").read_text())
    assert progress["complete"] is False and progress["slices"] == 1 and progress["epochs_done"] == 1
    assert sorted(os.listdir(first_export)) == ["card.json", "learning_curve.png", "progress.json"]  # no weights yet

    second = two_step_call(repo_root, data, out, second_export)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "COMPLETE" in second.stdout
    record = json.loads((out / "checkpoint.json").read_text())
    assert (record["epoch"], record["global_step"]) == (2, 2)  # resumed at step 1, not started again
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    progress = json.loads((out / "mask_ap.json").read_text())
    assert progress["complete"] is True and progress["slices"] == 2
    assert progress["frames"] == 2 and progress["block"] == 1  # the held-out block, never trained on
    for kind in ("segm", "bbox"):
        assert set(progress["coco"][kind]) == {"AP50", "AP60", "AP70", "AP"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in progress["coco"][kind].values())

    # the run's card: the paper's recipe, the tiny build it was trained with, the held-out figures and notes
    card = json.loads((out / "card.json").read_text())
    recipe = card["training"]["recipe"]
    assert recipe["optimizer"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001}
    assert recipe["schedule"] == {"name": "step", "step_epochs": 10, "gamma": 0.1}
    assert card["build"]["fpn_channels"] == 32
    assert card["metrics"]["held_out"]["coco"] == progress["coco"]
    notes = card["training"]["notes"]
    assert any(n.startswith("Trained on a GPU with benchmarks/accuracy/train_bpmsegnet_gpu.py") for n in notes)
    assert not any(n.startswith(("Trained once here (", "Ships without weights")) for n in notes)
    assert card["training"]["run"]["weights"] == "end of training"  # nothing chosen on the held-out block
    registry.load_from_card(ModelCard.from_dict(card), weights_path=out / "bpmsegnet.safetensors",
                            sha256=card["weights"]["sha256"])

    # the export: float16 weights in parts under the device's 16 MiB per file, joined back to the shipped card's sha256
    names = sorted(os.listdir(second_export))
    parts = [n for n in names if n.startswith("bpmsegnet.safetensors.part")]
    assert parts and len(names) <= 8
    assert all((second_export / n).stat().st_size < 16 * 1024 * 1024 for n in names)
    joined = tmp_path / "bpmsegnet.safetensors"
    joined.write_bytes(b"".join((second_export / n).read_bytes() for n in parts))
    shipped = json.loads((second_export / "bpmsegnet.json").read_text())
    assert shipped["weights"]["dtype"] == "float16"
    assert hashlib.sha256(joined.read_bytes()).hexdigest() == shipped["weights"]["sha256"]
    model = registry.load_from_card(ModelCard.from_dict(shipped), weights_path=joined,
                                    sha256=shipped["weights"]["sha256"])
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_refuses_rather_than_training_on_the_cpu(tmp_path, repo_root):
    result = run_script(repo_root, "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "sees no GPU" in result.stderr
    assert not (tmp_path / "run").exists()
