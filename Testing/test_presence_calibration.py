"""Per-frame presence: Platt calibration recovers a known curve, ECE and operating points by hand, the card block is
validated, and ``nerveseg calibrate`` fits a site model's block from labelled frames with nerve-free windows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from NerveSegLogic import cli
from NerveSegLogic.inference import presence as pr
from NerveSegLogic.models import registry
from NerveSegLogic.models.card import ModelCard


def test_platt_fit_recovers_the_curve_that_made_the_labels():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.001, 0.999, 20000)
    truth = rng.uniform(size=scores.size) < 1 / (1 + np.exp(-(2.0 * pr.logit(scores) - 1.0)))
    fitted = pr.fit_platt(scores, truth)
    assert fitted.a == pytest.approx(2.0, abs=0.1) and fitted.b == pytest.approx(-1.0, abs=0.1)
    assert fitted(0.5) == pytest.approx(1 / (1 + math.exp(1.0)), abs=0.03)


def test_platt_fit_of_a_separable_set_stays_finite_and_ordered():
    fitted = pr.fit_platt([0.01, 0.02, 0.05, 0.97, 0.99, 0.999], [False, False, False, True, True, True])
    assert math.isfinite(fitted.a) and math.isfinite(fitted.b) and fitted.a > 0
    assert fitted(0.01) < 0.5 < fitted(0.999)


def test_platt_fit_needs_both_kinds_of_frames():
    with pytest.raises(ValueError, match="got 3 with and 0 without"):
        pr.fit_platt([0.2, 0.5, 0.9], [True, True, True])


def test_expected_calibration_error_by_hand():
    # bin [0.1, 0.2): predicted 0.1 and 0.15 (mean 0.125), one of two holds it (0.5): |0.5 - 0.125| = 0.375
    # bin [0.9, 1.0]: predicted 0.95 twice, both hold it: |1 - 0.95| = 0.05.   ECE = (2 * 0.375 + 2 * 0.05) / 4
    ece, bins = pr.expected_calibration_error([0.1, 0.15, 0.95, 0.95], [True, False, True, True])
    assert ece == pytest.approx((2 * 0.375 + 2 * 0.05) / 4)
    assert [b["frames"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    point = pr.operating_point([0.1, 0.6, 0.7, 0.2], [False, False, True, True], 0.5)
    assert point["false_frame_rate"] == 0.5 and point["recall"] == 0.5


def test_states_and_card_block():
    model = pr.PresenceModel.from_block({"calibration": {"nerve": {"a": 1.0, "b": 0.0}},
                                         "thresholds": {"nerve": {"show": 0.5, "uncertain": 0.2}}})
    assert model.states({"nerve": 0.7, "blood_vessel": 0.1}) == {"nerve": "shown", "blood_vessel": "shown"}
    assert model.states({"nerve": 0.3})["nerve"] == "uncertain" and model.states({"nerve": 0.1})["nerve"] == "hidden"
    assert model.presence({"nerve": 0.8})["nerve"] == pytest.approx(0.8)
    data = registry.card("effnet2-unet").to_json()
    data["presence"] = {"thresholds": {"nerve": {"show": 0.2, "uncertain": 0.5}}}
    with pytest.raises(ValueError, match=r"field 'presence': thresholds.nerve: expected 0 <= uncertain <= show"):
        ModelCard.from_dict(data)
    assert pr.PresenceModel.from_card(registry.card("smistad-unet")).thresholds == {}


def test_calibrate_command_fits_a_site_model_and_refuses_to_touch_a_shipped_one(unet_random, sample_dir, tmp_path,
                                                                               capsys):
    import shutil

    from NerveSegLogic.models import sites

    out = tmp_path / "cal"
    assert cli.main(["calibrate", "--model", "effnet2-unet", "--data", str(sample_dir), "--write",
                     "--no-progress"]) == 1
    assert "shipped model, which is never modified" in capsys.readouterr().err
    # a site model of its own (the shared one stays uncalibrated for the other tests)
    shutil.copytree(registry.card(unet_random).path.parent, tmp_path / "run")
    name = sites.add(tmp_path / "run", "unet-calibrated").name
    code = cli.main(["calibrate", "--model", name, "--data", str(sample_dir), "--negatives", "1",
                     "--out", str(out), "--write", "--no-progress", "--threads", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    saved = json.loads((out / "calibration.json").read_text())
    rows = saved["rows"]
    assert len(rows) > 24 and sum(not r["truth"]["nerve"] for r in rows) > 0  # nerve-free windows were scored
    nerve = saved["report"]["classes"]["nerve"]
    assert nerve["fitted"] and nerve["frames_with"] == 24 and nerve["frames_without"] == len(rows) - 24
    block = registry.card(name).raw["presence"]  # written into the site model's card
    assert block == saved["presence"] and set(block["calibration"]) == {"nerve", "blood_vessel"}
    # the block reproduces the report: calibrated presence of each row from its raw score
    model = pr.PresenceModel.from_card(registry.card(name))
    again = [model.presence(r["scores"])["nerve"] for r in rows]
    assert pr.expected_calibration_error(again, [r["truth"]["nerve"] for r in rows])[0] == pytest.approx(nerve["ece"])
    assert (out / "reliability.png").stat().st_size > 10_000
    assert "ECE" in printed.out
