"""How benchmarks/accuracy/compare_models.py turns cross-validation folds into figures: each fold is scored with the weights
at the end of training (not the epoch that scored best on its own held-out block), and `auto`'s INT8 decision uses
the change INT8 makes to the cross-validated Dice (per class, mean over folds of INT8 - float32), not the mean of
each fold's largest |change|, which counts a fold where INT8 scored higher as a loss too."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compare_models():
    spec = importlib.util.spec_from_file_location("compare_models_under_test",
                                                  REPO / "benchmarks" / "accuracy" / "compare_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(nerve, vessel):
    folds = [{"int8_nerve_dice_delta": n, "int8_vessel_dice_delta": v, "int8_max_dice_change": max(abs(n), abs(v))}
             for n, v in zip(nerve, vessel)]
    return {"folds": folds, "live_path_ms": {"onnx": {"ms": 24.0}, "onnx-int8": {"ms": 14.0}},
            "int8_max_dice_change": {"mean": sum(f["int8_max_dice_change"] for f in folds) / len(folds), "std": 0}}


def test_change_is_that_of_the_cross_validated_dice_largest_class(compare_models):
    # INT8 better on two folds, worse on three: each fold moves ~0.01-0.02, the cross-validated Dice by 0.004
    entry = _entry(nerve=[+0.012, -0.015, +0.010, -0.020, -0.007], vessel=[-0.001, +0.002, -0.003, 0.0, -0.003])
    assert compare_models._int8_change(entry) == pytest.approx(0.004)
    assert entry["int8_max_dice_change"]["mean"] == pytest.approx(0.0128)  # the stricter figure: over 0.01
    assert compare_models._live_ms(entry) == 14.0  # auto runs INT8


def test_a_consistent_loss_keeps_float32(compare_models):
    entry = _entry(nerve=[-0.02, -0.01, -0.015, -0.012, -0.011], vessel=[0.0] * 5)
    assert compare_models._int8_change(entry) == pytest.approx(0.0136)
    assert compare_models._live_ms(entry) == 24.0
    # a gain is a change too: the rule is about keeping the float32 model's behaviour, not only its score
    gain = _entry(nerve=[0.02] * 5, vessel=[0.0] * 5)
    assert compare_models._int8_change(gain) == pytest.approx(0.02)


def test_a_fold_without_the_figure_gives_no_decision(compare_models):
    entry = _entry(nerve=[-0.001] * 5, vessel=[0.0] * 5)
    entry["folds"][2]["int8_nerve_dice_delta"] = None
    assert compare_models._int8_change(entry) is None
    assert compare_models._live_ms(entry) == 24.0


def test_a_fold_is_scored_with_the_weights_at_the_end_of_training_not_the_best_on_its_held_out_block(
        tmp_path, compare_models):
    """`nerveseg train` keeps the epoch with the best Dice on its validation block; in a cross-validation fold that
    block is the held-out block, so compare_models replaces those weights by the checkpoint's last state."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from NerveSegLogic.classes import USGRA_SEG_MAPPING
    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.checkpoints import read_checkpoint
    from NerveSegLogic.train.loop import TrainOptions, train
    from NerveSegLogic.train.evaluate_weights import card_for_weights
    from test_train_loop import write_frames

    frames = open_dataset(write_frames(tmp_path / "data"), format="folder", mapping=USGRA_SEG_MAPPING)
    run_dir = tmp_path / "fold1"
    train(TrainOptions(model="unet", data=None, out=run_dir, epochs=3, input_size=(32, 32), folds=4, fold=1,
                       batch_size=3, augmentations=[], threads=1, progress=False), dataset=frames)
    record, tensors = read_checkpoint(run_dir)
    last = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    best = load_file(str(run_dir / "unet.safetensors"))
    card = json.loads((run_dir / "card.json").read_text())
    if card["training"]["run"]["best_epoch"] != 3:  # the loop kept an earlier epoch: the files differ
        assert not all(torch.equal(best[k], last[k]) for k in best)

    after = compare_models.use_last_weights("unet", run_dir)
    assert after["epochs"] == 3
    written = load_file(str(run_dir / "unet.safetensors"))
    assert written.keys() == last.keys() and all(torch.equal(written[k], last[k]) for k in last)
    card = json.loads((run_dir / "card.json").read_text())
    assert card["training"]["run"]["weights"] == compare_models.LAST_WEIGHTS
    assert not any(n.startswith("Weights of the epoch with the best") for n in card["training"]["notes"])
    # the card's checksum is the new file's: the live path's loader accepts it
    loaded_card, path, sha256 = card_for_weights("unet", run_dir / "unet.safetensors")
    registry.load_from_card(loaded_card, weights_path=path, sha256=sha256)


def test_the_speed_re_measurement_times_the_graph_of_the_cards_recipe(compare_models, tmp_path):
    from NerveSegLogic.models import int8

    graphs = tmp_path / "onnx"
    graphs.mkdir()
    (graphs / "m.int8.onnx").write_bytes(b"made with min/max before recipes had names")
    movavg = "qdq-perchannel-movavg-v1"
    # a legacy graph stands for the default recipe only
    assert compare_models.fold_int8_graph("m", tmp_path, int8.INT8_RECIPE) == graphs / "m.int8.onnx"
    with pytest.raises(FileNotFoundError, match=movavg):
        compare_models.fold_int8_graph("m", tmp_path, movavg)
    (graphs / f"m.int8-{movavg}.onnx").write_bytes(b"moving average")
    assert compare_models.fold_int8_graph("m", tmp_path, movavg) == graphs / f"m.int8-{movavg}.onnx"
    (graphs / f"m.int8-{int8.INT8_RECIPE}.onnx").write_bytes(b"min/max, named")
    assert compare_models.fold_int8_graph("m", tmp_path, int8.INT8_RECIPE).name.endswith(
        f"int8-{int8.INT8_RECIPE}.onnx")


def test_the_report_says_when_speeds_were_measured_and_on_which_graph(compare_models):
    table = {"a": {"live_path_ms": {"date": "2026-12-01T17:28:42+00:00"}},
             "b": {"live_path_ms": {"date": "2026-12-01T17:35:01+00:00", "graph": "fold 0 of another run"}},
             "c": {}}
    text = compare_models._speed_provenance(table)
    assert "Measured 2026-12-01 17:28-17:35 UTC." in text
    assert "b: timed on fold 0 of another run." in text
    assert compare_models._speed_provenance({"c": {}}) == ""


def test_model_options_set_the_training_augmentations_and_refuse_unknown_names(compare_models):
    parsed = compare_models.parse_model_options(
        ["effnet2-unet:epochs=44,augment=flip+affine+gaussian_shadow", "unet:augment=none"])
    assert parsed["effnet2-unet"] == {"epochs": 44, "augmentations": ["flip", "affine", "gaussian_shadow"]}
    assert parsed["unet"] == {"augmentations": []}
    with pytest.raises(SystemExit, match="sharpen"):
        compare_models.parse_model_options(["unet:augment=flip+sharpen"])
    with pytest.raises(SystemExit, match="augment"):
        compare_models.parse_model_options(["unet:augment="])
