"""The loop a site runs to adapt NerveSeg to its scanner, end to end with the real commands (issue 25):
import a recording into a store, pre-label it, correct and accept a few frames (one accepted empty, one with the
nerve only), fine-tune from the shipped model for one short epoch, register the run as a site model, evaluate it on
the store, calibrate it, and replay the recording live with it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from NerveSegLogic import cli
from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.models import registry

FRAMES = ("0194", "0195", "0196", "0197", "0198", "0199", "0200", "0201")


@pytest.mark.slow
def test_record_correct_fine_tune_register_evaluate_calibrate_and_replay(tmp_path, sample_dir, capsys):
    recording = tmp_path / "scan1"
    recording.mkdir()
    for name in FRAMES:
        shutil.copyfile(sample_dir / "images" / f"{name}.png", recording / f"{name}.png")
    store = tmp_path / "site.nsdb"
    assert cli.main(["annotate", "import", "--store", str(store), str(recording), "--author", "tech"]) == 0
    assert cli.main(["annotate", "prelabel", "--store", str(store), "--model", "effnet2-unet", "--author",
                     "model-bot"]) == 0
    capsys.readouterr()

    # the annotator's corrections: the truth of six frames (one of them nerve-only, one accepted empty)
    from NerveSegLogic.datasets.readers import open_dataset

    sample = open_dataset(sample_dir)
    masks = {name: sample[sample.names().index(name)].mask for name in FRAMES}  # 1 nerve, 2 blood vessel
    with AnnotationStore(store) as opened:
        frames = sorted(opened.frames(), key=lambda f: f.index)
        assert len(frames) == len(FRAMES)
        for frame, name in zip(frames[:6], FRAMES):
            truth = masks[name]
            classes = {1: "nerve", 2: "blood_vessel"}
            if name == "0195":
                truth, classes = np.where(truth == 1, 1, 0).astype(np.uint8), {1: "nerve"}
            if name == "0196":
                truth = np.zeros_like(truth)
            current = opened.current(frame.id)
            opened.save_mask(frame.id, truth, classes, "alice", "corrected", current.id)
            opened.set_status(frame.id, "accepted", "alice", opened.current(frame.id).id)

    run = tmp_path / "runs" / "site"
    assert cli.main(["train", "--model", "effnet2-unet", "--init", "effnet2-unet", "--data", str(store),
                     "--out", str(run), "--epochs", "1", "--folds", "3", "--fold", "2", "--threads", "1",
                     "--no-progress"]) == 0
    card = json.loads((run / "card.json").read_text())
    init = card["training"]["init"]
    assert init["sha256"] == registry.card("effnet2-unet").weights["sha256"]  # the shipped model it started from
    assert card["training"]["data_fingerprint"]["frames"] == 6  # the store's accepted frames ...
    used = card["training"]["run"]["frames"]
    assert len(used["train"]) == 4 and len(used["held_out"]) == 2  # ... one contiguous block of them held out
    assert "metrics" not in card or not card["metrics"].get("cross_validation")  # the base's figures are not its

    assert cli.main(["models", "add", str(run), "--name", "test-site"]) == 0
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "test-site")
    assert row["site"] and row["base_model"] == "effnet2-unet" and row["status"] == "ok"

    assert cli.main(["evaluate", "--model", "test-site", "--data", str(store), "--out", str(tmp_path / "eval"),
                     "--pictures", "0", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "test-site" and metrics["n_images"] == 6

    assert cli.main(["calibrate", "--model", "test-site", "--data", str(store), "--negatives", "1", "--write",
                     "--out", str(tmp_path / "cal"), "--threads", "1", "--no-progress"]) == 0
    assert registry.card("test-site").raw["presence"]["calibration"]["nerve"]

    out = tmp_path / "demo"
    assert cli.main(["demo", "--model", "test-site", "--source", str(recording), "--frames", "8", "--fps", "10",
                     "--out", str(out), "--no-video"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "test-site" and summary["frames_applied"] == 8, summary
    assert (out / "scene" / "NerveSeg.mrml").is_file()
