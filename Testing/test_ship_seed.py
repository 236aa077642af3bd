"""benchmarks/release/ship_seed.py: how held-out fold reports become a card's cross_validation, and what it refuses."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ship_seed():
    spec = importlib.util.spec_from_file_location("ship_seed_under_test", REPO / "benchmarks" / "release" / "ship_seed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(fold, nerve, rate, weights="last (float32)", model="smistad-unet", folds=5):
    stat = lambda v: {"mean": v, "std": 0.1, "n": 40}  # noqa: E731  (over frames, as eval_heldout.py writes it)
    held = {k: stat(0.5) for k in ("vessel_dice", "nerve_f1", "vessel_f1", "nerve_hd95_px", "vessel_hd95_px")}
    held.update(nerve_dice=stat(nerve), false_nerve_frame_rate=rate, nerve_presence_auc=0.9, frames=40)
    return {"model": model, "weights": weights, "data": "usgra-seg", "run_epochs": 150, "run_training_s": 3600.0,
            "held_out_block": {"folds": folds, "fold": fold, "first_last": ["a", "b"]}, "held_out": held}


def test_figures_are_mean_and_population_std_over_the_scored_folds(ship_seed):
    cv = ship_seed.cross_validation([_report(4, 0.6, 0.1), _report(0, 0.4, 0.3)], folds=5)
    assert (cv["folds"], cv["folds_scored"], cv["blocks_scored"]) == (5, 2, [0, 4])
    assert cv["nerve_dice"] == pytest.approx({"mean": 0.5, "std": 0.1, "n": 2})  # std over folds, not frames
    assert cv["false_nerve_frame_rate"] == pytest.approx({"mean": 0.2, "std": 0.1, "n": 2})
    assert cv["weights"].startswith("each fold's weights at the end of training")


@pytest.mark.parametrize("bad, message", [
    ({"weights": "best (float32)"}, "scored with --weights last"),
    ({"model": "unet"}, "scored with --weights last"),
    ({"folds": 3}, "held_out_block.folds is 3"),
])
def test_reports_of_another_model_weights_or_split_are_refused(ship_seed, tmp_path, bad, message):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_report(0, 0.5, 0.1)))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_report(4, 0.5, 0.1, **bad)))
    with pytest.raises(SystemExit) as stopped:
        ship_seed.check_reports("smistad-unet", [good, wrong], 5)
    assert message in str(stopped.value) and "wrong.json" in str(stopped.value)


def test_one_block_scored_twice_is_refused(ship_seed, tmp_path):
    paths = []
    for name in ("a.json", "b.json"):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(_report(2, 0.5, 0.1)))
    with pytest.raises(SystemExit, match=r"a block is scored twice \(\[2, 2\]\)"):
        ship_seed.check_reports("smistad-unet", paths, 5)


def test_only_the_models_row_of_the_readme_table_changes(ship_seed, tmp_path):
    from NerveSegLogic.models.readme_table import README_BEGIN, README_END

    readme = tmp_path / "README.md"
    before = (f"intro\n{README_BEGIN}\n| model | from |\n|---|---|\n| **effnet2-unet** (default) | Tan 2019 |\n"
              f"| smistad-unet | Smistad 2021 |\n{README_END}\nafter\n")
    readme.write_text(before)
    reports = [_report(0, 0.4, 0.3), _report(4, 0.6, 0.1)]
    for r in reports:
        r["held_out"]["ms_per_frame_median"] = 20.0
    cv = ship_seed.cross_validation(reports, folds=5)
    from NerveSegLogic.models import registry

    row = ship_seed.readme_row(registry.card("smistad-unet"), cv, reports, 150, [256, 256], held=4)
    assert row.startswith("| smistad-unet | Smistad 2021 | 1.97 M | 256x256 | 0.50 ± 0.10 |")
    assert row.endswith("150 epochs, 60 min, 2/5 folds (blocks 0, 4) | 150 epochs at 256x256, float16, trained without block 4 |")
    ship_seed.replace_readme_row(readme, "smistad-unet", row)
    assert readme.read_text() == before.replace("| smistad-unet | Smistad 2021 |", row)
    with pytest.raises(SystemExit, match="expected one row of ragcm"):
        ship_seed.replace_readme_row(readme, "ragcm", row)
