"""Evaluation scores what the live path shows, and refuses data whose classes are not the model's."""

import json
import math

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic.classes import classes_from_mapping  # noqa: E402
from NerveSegLogic.datasets.readers import open_dataset  # noqa: E402
from NerveSegLogic.inference.segmenter import Segmenter  # noqa: E402
from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models.card import ModelCard  # noqa: E402
from NerveSegLogic.train.data import ClassMismatchError, FrameStore, label_translation  # noqa: E402
from NerveSegLogic.train.evaluate import evaluate, write_report  # noqa: E402


class IntensityModel(torch.nn.Module):
    """A stand-in model whose logits follow the grey value: bright = nerve, dark = vessel, mid = background."""

    def forward(self, x):
        grey = x[:, :1] * 255.0
        nerve = grey > 170
        vessel = grey < 40
        background = ~(nerve | vessel)
        return torch.cat([background, nerve, vessel], dim=1).float() * 10.0


def _card(size):
    data = registry.card("unet").to_json()
    data["input"] = dict(data["input"], size=list(size), resize="resize")
    return ModelCard.from_dict(data)


def _write(root, masks, images):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, (image, mask) in enumerate(zip(images, masks)):
        cv2.imwrite(str(root / "images" / f"{index:03d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{index:03d}.png"), mask)
    return root


def _frames(tmp_path, shift=0):
    """Two 64x64 frames; the images show the truth shifted right by ``shift`` pixels."""
    masks, images = [], []
    for index in range(2):
        mask = np.zeros((64, 64), np.uint8)
        mask[10:30, 8 + index:28 + index] = 1  # 400 px nerve
        mask[40:56, 36:56] = 2  # 320 px vessel
        shown = np.roll(mask, shift, axis=1)
        images.append(np.choose(shown, [100, 220, 10]).astype(np.uint8))
        masks.append(mask)
    return _write(tmp_path / "data", masks, images)


def test_a_model_that_sees_the_truth_scores_perfectly_through_the_live_path(tmp_path):
    dataset = open_dataset(_frames(tmp_path), format="folder", mapping={1: "nerve", 2: "blood_vessel"})
    card = _card((64, 64))
    summary = evaluate(Segmenter.from_module(card, IntensityModel()), FrameStore(dataset)).summary
    assert summary["n_images"] == 2
    for key in ("nerve", "blood_vessel", "vessel"):
        scores = summary["per_class"][key]
        assert scores["dice"] == pytest.approx(1.0) and scores["iou"] == pytest.approx(1.0)
        assert scores["hd95_px"] == pytest.approx(0.0)
        assert scores["auc"] == pytest.approx(1.0)
        assert summary["detection"][key]["f1"] == pytest.approx(1.0)
    assert summary["detection"]["nerve"]["pooled"]["tp"] == 2


def test_a_shifted_prediction_gets_the_hand_computed_dice_and_hd95(tmp_path):
    dataset = open_dataset(_frames(tmp_path, shift=4), format="folder", mapping={1: "nerve", 2: "blood_vessel"})
    summary = evaluate(Segmenter.from_module(_card((64, 64)), IntensityModel()), FrameStore(dataset)).summary
    # nerve 20x20 shifted 4 columns: overlap 20x16 -> Dice 2*320/800; vessel 16x20 -> overlap 16x16 -> 2*256/640
    assert summary["per_class"]["nerve"]["dice"] == pytest.approx(0.8)
    assert summary["per_class"]["blood_vessel"]["dice"] == pytest.approx(0.8)
    assert summary["per_class"]["nerve"]["hd95_px"] == pytest.approx(4.0)
    assert summary["detection"]["nerve"]["f1"] == pytest.approx(1.0)  # Dice 0.8 > 0.25: still found


def test_evaluation_goes_back_to_the_frame_size_and_drops_small_regions(tmp_path):
    mask = np.zeros((96, 128), np.uint8)
    mask[20:60, 20:60] = 1
    image = np.choose(mask, [100, 220, 10]).astype(np.uint8)
    image[80:84, 100:104] = 220  # a 16-px bright speck: the live path drops it (< 7-px-radius circle)
    dataset = open_dataset(_write(tmp_path / "data", [mask], [image]), format="folder",
                           mapping={1: "nerve", 2: "blood_vessel"})
    evaluation = evaluate(Segmenter.from_module(_card((48, 64)), IntensityModel()), FrameStore(dataset))
    labelmap = evaluation.frames[0].labelmap
    assert labelmap.shape == (96, 128)
    assert not labelmap[78:86, 98:106].any()
    assert evaluation.summary["detection"]["nerve"]["pooled"] == {
        "tp": 1, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert math.isnan(evaluation.summary["per_class"]["blood_vessel"]["dice"])  # absent on both sides
    # AUC from the model-size probabilities brought back to the frame: only the resampled edge is uncertain
    assert evaluation.summary["per_class"]["nerve"]["auc"] > 0.99


def test_mismatched_classes_are_refused_with_the_mapping_the_model_expects():
    model = classes_from_mapping({1: "nerve", 2: "blood_vessel"})
    with pytest.raises(ClassMismatchError) as error:
        label_translation(model, classes_from_mapping({1: "nerve", 2: "muscle"}), "model unet", "the data set X")
    message = str(error.value)
    assert "model unet segments {1: nerve, 2: blood_vessel}" in message
    assert "the data set X has {1: nerve, 2: muscle}" in message
    assert "--map 1=nerve,2=blood_vessel" in message
    # the same classes under other label values are translated, not refused
    assert label_translation(model, classes_from_mapping({1: "blood_vessel", 2: "nerve"})) == {1: 2, 2: 1}
    assert label_translation(model, classes_from_mapping({1: "nerve", 2: "blood_vessel"})) is None


def test_report_writes_strict_json_markdown_and_best_and_worst_pictures(tmp_path):
    dataset = open_dataset(_frames(tmp_path, shift=2), format="folder", mapping={1: "nerve", 2: "blood_vessel"})
    card = _card((64, 64))
    frames = FrameStore(dataset)
    evaluation = evaluate(Segmenter.from_module(card, IntensityModel()), frames)
    paths = write_report(evaluation, frames, tmp_path / "out", card.classes, {"data": "two frames"}, pictures=1)
    metrics = json.loads(paths["metrics"].read_text())  # strict JSON: NaN would not parse back as a number
    assert metrics["model"] == "unet" and metrics["n_images"] == 2
    assert set(metrics["per_class"]) == {"nerve", "blood_vessel", "vessel"}
    assert {"dice", "iou", "hd95_px", "precision", "recall"} <= set(metrics["per_class"]["nerve"])
    assert {"precision", "recall", "f1"} <= set(metrics["detection"]["nerve"])
    assert metrics["per_class"]["nerve"]["hd95_mm"] is None  # no pixel spacing in this data
    report = paths["report"].read_text()
    assert "| Nerve |" in report and "## Worst frames" in report
    pictures = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert len(pictures) == 2 and pictures[0].startswith("best_") and pictures[1].startswith("worst_")
    assert cv2.imread(str(tmp_path / "out" / "overlays" / pictures[0])).shape == (64, 128, 3)
