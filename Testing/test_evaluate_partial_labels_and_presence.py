"""`nerveseg evaluate` scores a set that labels only some of the model's classes (the Kaggle nerve set), refuses a
class the model lacks or a set that shares none, and reports per-frame presence: false-nerve frames and the AUC of
"a nerve is in this frame"."""

import json
import math

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic import cli  # noqa: E402
from NerveSegLogic.classes import classes_from_mapping  # noqa: E402
from NerveSegLogic.datasets.readers import open_dataset  # noqa: E402
from NerveSegLogic.inference.segmenter import Segmenter  # noqa: E402
from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models.card import ModelCard  # noqa: E402
from NerveSegLogic.train.data import ClassMismatchError, FrameStore  # noqa: E402
from NerveSegLogic.train.evaluate import evaluate, evaluation_classes, presence, write_report  # noqa: E402

MODEL = classes_from_mapping({1: "nerve", 2: "blood_vessel"})


class IntensityModel(torch.nn.Module):
    """Logits follow the grey value: bright = nerve, dark = vessel, mid = background."""

    def forward(self, x):
        grey = x[:, :1] * 255.0
        nerve = grey > 170
        vessel = grey < 40
        return torch.cat([~(nerve | vessel), nerve, vessel], dim=1).float() * 10.0


def _card():
    data = registry.card("unet").to_json()
    data["input"] = dict(data["input"], size=[64, 64], resize="resize")
    return ModelCard.from_dict(data)


def _kaggle(root, frames):
    """Kaggle layout: N_M.tif + N_M_mask.tif, nerve 255. ``frames``: (image, nerve mask) pairs."""
    root.mkdir(parents=True)
    for index, (image, nerve) in enumerate(frames):
        cv2.imwrite(str(root / f"1_{index + 1}.tif"), image)
        cv2.imwrite(str(root / f"1_{index + 1}_mask.tif"), np.where(nerve, 255, 0).astype(np.uint8))
    return root


def _scan(false_nerve_frames=(3,)):
    """Five 64x64 frames: 0-1 hold a labelled nerve the image shows bright; 2-4 hold none, and the frames in
    ``false_nerve_frames`` show a bright 16x16 blob anyway (above the live path's 154-pixel floor), so the model
    marks a nerve that is not labelled. Frame 0 also shows a dark vessel, which this data does not label."""
    frames = []
    for index in range(5):
        image = np.full((64, 64), 100, np.uint8)
        nerve = np.zeros((64, 64), bool)
        if index < 2:
            nerve[10:30, 8:28] = True
            image[nerve] = 220
        if index in false_nerve_frames:
            image[40:56, 40:56] = 220
        if index == 0:
            image[40:56, 36:56] = 10
        frames.append((image, nerve))
    return frames


# ------------------------------------------------------------------------------------------------ which classes
def test_a_set_that_labels_only_the_nerve_is_scored_on_the_nerve_and_names_the_vessel_as_not_labelled():
    translation, scored, unlabelled = evaluation_classes(MODEL, classes_from_mapping({1: "nerve"}), "model unet",
                                                         "the data set K")
    assert translation is None  # the data's nerve is already label 1
    assert [c.key for c in scored] == ["nerve"] and [c.key for c in unlabelled] == ["blood_vessel"]
    translation, scored, unlabelled = evaluation_classes(MODEL, classes_from_mapping({1: "blood_vessel"}))
    assert translation == {1: 2} and [c.key for c in scored] == ["blood_vessel"]
    assert [c.key for c in unlabelled] == ["nerve"]
    assert evaluation_classes(MODEL, classes_from_mapping({1: "blood_vessel", 2: "nerve"}))[0] == {1: 2, 2: 1}


def test_a_label_mapped_to_a_class_the_model_lacks_is_an_error_naming_the_value_the_class_and_the_model():
    data = classes_from_mapping({1: "nerve", 2: "artery"})
    with pytest.raises(ClassMismatchError) as error:
        evaluation_classes(MODEL, data, "model unet", "the data set K", value_table={0: 0, 255: 1, 128: 2})
    message = str(error.value)
    assert "label value 128 is 'artery'" in message and "model unet" in message
    assert "model unet segments {1: nerve, 2: blood_vessel}" in message
    assert "--map 1=nerve,2=blood_vessel" in message


def test_a_set_that_shares_no_class_with_the_model_is_refused():
    with pytest.raises(ClassMismatchError, match=r"shares no class with model unet: model unet segments \{1: nerve, "):
        evaluation_classes(MODEL, (), "model unet", "the data set K")
    # a class the model lacks is refused before the (empty) overlap is looked at: the error names it
    with pytest.raises(ClassMismatchError, match="label value 1 is 'vein'"):
        evaluation_classes(MODEL, classes_from_mapping({1: "vein"}), "model unet", "the data set K")


# ------------------------------------------------------------------------------------------------ presence
def test_presence_rates_and_auc_match_a_hand_computation():
    # frames 0, 1 hold a nerve; the model marks 0 and 2; scores rank 0.9, 0.4 against 0.8, 0.1, 0.2
    result = presence([True, True, False, False, False], [True, False, True, False, False],
                      [0.9, 0.4, 0.8, 0.1, 0.2])
    assert (result["frames_with"], result["frames_without"]) == (2, 3)
    assert result["false_frames"] == 1 and result["false_frame_rate"] == pytest.approx(1 / 3)
    assert result["missed_frames"] == 1 and result["missed_frame_rate"] == pytest.approx(1 / 2)
    assert result["auc"] == pytest.approx(5 / 6)  # 0.9 beats all three, 0.4 beats two of three
    assert math.isnan(result["auc_area"])  # no areas given
    by_area = presence([True, True, False, False], [True, True, True, False], [0.9, 0.9, 0.9, 0.1],
                       areas=[400, 300, 200, 0])
    assert by_area["auc"] == pytest.approx(0.75) and by_area["auc_area"] == pytest.approx(1.0)
    assert math.isnan(presence([True, True], [True, True], [0.5, 0.7])["false_frame_rate"])  # no frame without
    assert math.isnan(presence([True, True], [True, True], [0.5, 0.7])["auc"])
    assert presence([True, False], [False, False], [0.5, 0.5])["auc"] == pytest.approx(0.5)  # ties count half
    with pytest.raises(ValueError, match="differ in length"):
        presence([True], [True, False], [0.1])


def test_evaluation_counts_frames_where_the_model_marks_a_nerve_that_is_not_labelled(tmp_path):
    dataset = open_dataset(_kaggle(tmp_path / "k", _scan(false_nerve_frames=(3,))), format="kaggle")
    _, scored, _ = evaluation_classes(MODEL, dataset.classes)
    frames = FrameStore(dataset)
    evaluation = evaluate(Segmenter.from_module(_card(), IntensityModel()), frames, scored=scored)
    summary = evaluation.summary
    assert summary["classes"] == {"nerve": 1} and summary["not_labelled"] == ["blood_vessel"]
    assert set(summary["per_class"]) == {"nerve"}  # the unlabelled vessel is scored nowhere
    # Dice 1 on the two labelled frames, 0 on frame 3 (a nerve marked, none labelled), undefined on 2 and 4
    assert summary["per_class"]["nerve"]["dice"] == pytest.approx(2 / 3)
    nerve = summary["presence"]["nerve"]
    assert (nerve["frames_with"], nerve["frames_without"], nerve["false_frames"]) == (2, 3, 1)
    assert nerve["false_frame_rate"] == pytest.approx(1 / 3) and nerve["missed_frames"] == 0
    # frame scores (highest nerve probability): ~1 in frames 0, 1, 3; ~0 in 2, 4 -> 2 of 3 negatives ranked below
    assert nerve["auc"] == pytest.approx((2 * 2 + 2 * 0.5) / 6, abs=1e-6)
    # marked areas: 400, 400 px with a nerve; 0, 256, 0 without -> every positive above every negative
    assert nerve["auc_area"] == pytest.approx(1.0)
    assert len(summary["per_image"]) == 5 and "presence_score" in summary["per_image"][0]
    paths = write_report(evaluation, frames, tmp_path / "out", _card().classes, {"data": "k"}, pictures=1)
    report = paths["report"].read_text()
    assert "does not label blood_vessel" in report and "| Nerve | 2 / 3 | 1 (0.333) |" in report
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["presence"]["nerve"]["false_frames"] == 1


# ------------------------------------------------------------------------------------------------ the command
@pytest.fixture
def random_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w" / "smistad-unet.safetensors"
    path.parent.mkdir()
    registry.save_weights(registry.build_from_card(registry.card("smistad-unet")), path)
    return path


def test_the_command_scores_a_nerve_only_kaggle_set_and_says_what_it_does_not_label(tmp_path, random_weights,
                                                                                      capsys):
    data = _kaggle(tmp_path / "kaggle", _scan())
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--model", "smistad-unet", "--weights", str(random_weights), "--data", str(data),
                     "--out", str(out), "--pictures", "1", "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "not scored (the data does not label them): blood_vessel" in printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == {"nerve": 1} and metrics["not_labelled"] == ["blood_vessel"]
    assert metrics["presence"]["nerve"]["frames_without"] == 3 and metrics["n_images"] == 5


def test_the_command_refuses_a_label_mapped_to_a_class_the_model_lacks(tmp_path, random_weights, capsys):
    data = _kaggle(tmp_path / "kaggle", _scan())
    code = cli.main(["evaluate", "--model", "smistad-unet", "--weights", str(random_weights), "--data", str(data),
                     "--map", "255=artery", "--out", str(tmp_path / "eval"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "label value 255 is 'artery'" in err and "model smistad-unet segments {1: nerve, 2: blood_vessel}" in err
    assert not (tmp_path / "eval").exists()


def test_negative_windows_give_the_presence_figures_frames_without_a_nerve(tmp_path, random_weights):
    data = _kaggle(tmp_path / "kaggle", _scan())
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", "smistad-unet", "--weights", str(random_weights), "--data", str(data),
                     "--negatives", "1", "--out", str(out), "--pictures", "0", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    added = metrics["context"]["negative_windows"]
    assert added >= 3 and metrics["n_images"] == 5 + added
    assert metrics["presence"]["nerve"]["frames_without"] == 3 + added  # windows hold no labelled pixel
    assert metrics["presence"]["nerve"]["frames_with"] == 2
    assert f"{added} of them windows cut where nothing is labelled" in (out / "report.md").read_text()
