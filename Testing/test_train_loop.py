"""The training loop: it learns, it resumes exactly where it stopped, it splits by blocks, it writes a valid card."""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic.classes import USGRA_SEG_MAPPING  # noqa: E402
from NerveSegLogic.datasets.readers import open_dataset  # noqa: E402
from NerveSegLogic.train import checkpoints  # noqa: E402
from NerveSegLogic.train import data as td  # noqa: E402
from NerveSegLogic.train.loop import TrainOptions, Trainer, train  # noqa: E402
from NerveSegLogic.train.recipe import learning_rate  # noqa: E402


def write_frames(root: Path, count: int = 8, height: int = 40, width: int = 48, seed: int = 0) -> Path:
    """An image/mask folder (usgra-seg layout): a bright disc (nerve) and a dark ellipse (vessel) on speckle."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, cols = np.ogrid[:height, :width]
    for index in range(count):
        mask = np.zeros((height, width), np.uint8)
        cy, cx = rng.integers(10, height - 10), rng.integers(9, width // 2 - 4)
        mask[(rows - cy) ** 2 + (cols - cx) ** 2 <= 49] = 1
        cy, cx = rng.integers(10, height - 10), rng.integers(width // 2 + 5, width - 9)
        mask[(rows - cy) ** 2 / 36 + (cols - cx) ** 2 / 64 <= 1] = 2
        image = np.clip(rng.normal(100, 20, mask.shape) + 90 * (mask == 1) - 80 * (mask == 2), 0, 255)
        cv2.imwrite(str(root / "images" / f"{index:04d}.png"), image.astype(np.uint8))
        cv2.imwrite(str(root / "masks" / f"{index:04d}.png"), mask)
    return root


@pytest.fixture
def frames(tmp_path):
    return open_dataset(write_frames(tmp_path / "data"), format="folder", mapping=USGRA_SEG_MAPPING)


def options(out, **overrides):
    settings = dict(model="unet", data=None, out=Path(out), epochs=2, input_size=(32, 32), folds=1, batch_size=3,
                    augmentations=["gamma", "rotation", "elastic"], threads=1, progress=False)
    settings.update(overrides)
    return TrainOptions(**settings)


def test_a_few_training_steps_lower_the_loss_on_a_tiny_set(tmp_path, frames):
    trainer = Trainer(options(tmp_path / "run", augmentations=[]), dataset=frames)
    x, y = trainer._batch(list(range(len(trainer.store))), epoch=0, first_position=0)

    def loss_now():  # in train mode: batch-norm uses this batch's statistics, as during the steps
        with torch.no_grad():
            return float(trainer.loss_fn(trainer.model(x), y, trainer.model))

    before = loss_now()
    for _ in range(12):
        trainer.step(x, y)
    after = loss_now()
    print(f"loss {before:.3f} -> {after:.3f}")
    assert after < 0.75 * before, f"loss went from {before:.3f} to {after:.3f}"


def _tensors(out: Path):
    from safetensors.torch import load_file

    record = json.loads((out / checkpoints.CHECKPOINT_JSON).read_text())
    return record, load_file(str(out / record["tensors"]))


def test_resuming_after_an_epoch_continues_the_same_run(tmp_path, frames):
    straight = train(options(tmp_path / "straight", epochs=3), dataset=frames)
    first = train(options(tmp_path / "resumed", epochs=1), dataset=frames)
    assert first.global_step == 3  # 8 frames in batches of 3
    record, tensors = _tensors(tmp_path / "resumed")
    assert record["epoch"] == 1 and record["global_step"] == 3
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg") for k in tensors)  # Adam's moments are saved
    resumed = train(options(tmp_path / "resumed", epochs=3), dataset=frames)
    assert resumed.global_step == straight.global_step == 9
    _, a = _tensors(tmp_path / "straight")
    _, b = _tensors(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:  # same data order, augmentations and optimiser state: the same weights, bit for bit
        assert torch.equal(a[key], b[key]), key
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]


def test_an_interrupted_epoch_resumes_mid_epoch_with_the_optimizer_state(tmp_path, frames, monkeypatch):
    straight = train(options(tmp_path / "straight", epochs=2), dataset=frames)
    original = Trainer.step
    calls = {"n": 0}

    def crash_on_fifth_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during step 5
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "step", crash_on_fifth_step)
    with pytest.raises(KeyboardInterrupt):
        train(options(tmp_path / "crashed", epochs=2, checkpoint_minutes=0), dataset=frames)
    record, _ = _tensors(tmp_path / "crashed")
    assert (record["epoch"], record["position"], record["global_step"]) == (1, 3, 4)
    monkeypatch.setattr(Trainer, "step", original)

    trainer = Trainer(options(tmp_path / "crashed", epochs=2), dataset=frames)
    assert trainer.global_step == 4 and trainer.position == 3
    state = trainer.optimizer.state_dict()["state"]
    assert all(int(s["step"]) == 4 for s in state.values())  # Adam's step counts came back
    result = trainer.run()
    assert result.global_step == straight.global_step == 6
    _, a = _tensors(tmp_path / "straight")
    _, b = _tensors(tmp_path / "crashed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_another_setup_is_refused_not_silently_mixed(tmp_path, frames):
    train(options(tmp_path / "run", epochs=1), dataset=frames)
    with pytest.raises(checkpoints.CheckpointError, match="input_size was \\[32, 32\\], now \\[48, 48\\]"):
        Trainer(options(tmp_path / "run", epochs=2, input_size=(48, 48)), dataset=frames)


def test_validation_is_a_contiguous_block_and_outputs_are_a_valid_card_curve_and_weights(tmp_path, frames):
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import ModelCard

    result = train(options(tmp_path / "run", epochs=2, folds=4, fold=1), dataset=frames)
    card_data = json.loads(result.card.read_text())
    card = ModelCard.from_dict(card_data)
    run = card.training["run"]
    assert run["split"]["validation_first_last"] == ["0002", "0003"]  # block 1 of 4 over 0000..0007
    assert card.input.height == 32 and card.input.width == 32  # the size actually trained
    assert card.training["recipe"]["epochs"] == 2
    assert any("CPU" in note for note in card.training["notes"])
    assert any("fewer than the recipe's" in note for note in card.training["notes"])
    # Started from a shipped card, whose notes describe the run that made its weights: those are replaced.
    base_notes = registry.card("unet").training["notes"]
    notes = card.training["notes"]
    assert sum(note.startswith("Trained on CPU") for note in notes) == 1
    assert not [note for note in base_notes if note.startswith("Trained for ") and note in notes]
    assert len(result.history) == 2 and all(h["val"]["dice"].keys() == {"nerve", "blood_vessel"}
                                            for h in result.history)
    png = cv2.imread(str(tmp_path / "run" / "learning_curve.png"))
    assert png is not None and png.shape[0] > 100
    model = registry.load_from_card(card, weights_path=result.weights, sha256=card.weights["sha256"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_split_indices_never_mix_frames_of_a_block():
    names = [f"{i:04d}" for i in range(10)]
    train_idx, val_idx = td.split_indices(names, folds=3, fold=None)
    assert val_idx == [7, 8, 9]  # the last block by default
    assert set(train_idx) | set(val_idx) == set(range(10)) and not set(train_idx) & set(val_idx)
    assert td.split_indices(names, folds=1, fold=None) == (list(range(10)), [])
    with pytest.raises(ValueError, match="--fold must be 0..2"):
        td.split_indices(names, folds=3, fold=3)


def test_learning_rate_schedules_follow_the_recipe():
    recipe = {"optimizer": {"lr": 0.01}, "epochs": 10}
    assert learning_rate({**recipe, "schedule": {"name": "constant"}}, 7) == 0.01
    assert learning_rate({**recipe, "schedule": {"name": "poly", "power": 0.9}}, 5) == \
        pytest.approx(0.01 * 0.5 ** 0.9)
    step = {**recipe, "schedule": {"name": "step", "step_epochs": 10, "gamma": 0.1}}
    assert learning_rate(step, 9) == pytest.approx(0.01)
    assert learning_rate(step, 10) == pytest.approx(0.001)


@pytest.mark.parametrize("per", ["epoch", "iteration"])
def test_a_schedule_per_iteration_changes_the_rate_at_every_step_and_per_epoch_once_an_epoch(tmp_path, frames, per):
    trainer = Trainer(options(tmp_path / "run", augmentations=[], epochs=2, batch_size=3), dataset=frames)
    trainer.recipe["schedule"] = {"name": "poly", "power": 0.9, "per": per}
    seen = []
    step = trainer.step

    def recording_step(x, y):
        seen.append((trainer.epoch, trainer.position, trainer.optimizer.param_groups[0]["lr"]))
        return step(x, y)

    trainer.step = recording_step
    trainer.run()
    frames_per_epoch = len(trainer.store)
    assert [(e, p) for e, p, _ in seen] == [(e, p) for e in (0, 1) for p in range(0, frames_per_epoch, 3)]
    for epoch, position, lr in seen:
        at = epoch + position / frames_per_epoch if per == "iteration" else epoch
        assert lr == pytest.approx(learning_rate(trainer.recipe, at)), (epoch, position)
    rates_in_first_epoch = {lr for e, _, lr in seen if e == 0}
    assert len(rates_in_first_epoch) == (3 if per == "iteration" else 1)


def test_stop_after_epoch_stops_at_that_epoch_end_and_the_same_command_resumes_with_the_recipe_schedule(
        tmp_path, frames):
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import ModelCard

    base = registry.card("unet")
    data = base.to_json()
    data["training"]["recipe"]["schedule"] = {"name": "poly", "power": 0.9}  # a schedule that depends on epochs
    data["input"]["size"] = [16, 16]  # the runs below train at 32x32: larger than the card's
    card = ModelCard.from_dict(data, base.path)
    out = tmp_path / "run"
    sliced = options(out, augmentations=[], epochs=3, batch_size=4)
    sliced.stop_after_epoch = 1
    first = train(sliced, dataset=frames, card=card)
    assert first.epochs_done == 1 and first.stop_reason == "stopped after epoch 1 of 3 (--stop-after-epoch)"
    record = json.loads((out / "checkpoint.json").read_text())
    assert record["epoch"] == 1 and record["position"] == 0  # a whole epoch's weights, not a mid-epoch state
    notes = json.loads((out / "card.json").read_text())["training"]["notes"]
    assert any(n.endswith("(stopped after epoch 1 of 3 (--stop-after-epoch)).") for n in notes), notes
    assert "Input 32x32 instead of the card's 16x16 (larger); the live path feeds this size." in notes, notes
    again = train(sliced, dataset=frames, card=card)  # nothing more to do at the same N
    assert again.epochs_done == 1 and again.global_step == first.global_step
    sliced.stop_after_epoch = None
    rest = train(sliced, dataset=frames, card=card)
    assert rest.epochs_done == 3 and rest.stop_reason == "finished"
    whole = train(options(tmp_path / "whole", augmentations=[], epochs=3, batch_size=4), dataset=frames, card=card)
    rates = [h["lr"] for h in rest.history]
    assert rates == [h["lr"] for h in whole.history] and rates[0] > rates[1] > rates[2]  # 3-epoch poly throughout
    assert [h["train_loss"] for h in rest.history] == pytest.approx([h["train_loss"] for h in whole.history])
    bad = options(tmp_path / "bad", epochs=2)
    bad.stop_after_epoch = 0
    with pytest.raises(ValueError, match="--stop-after-epoch must be a positive number of epochs, got 0"):
        train(bad, dataset=frames)


def test_a_schedule_applied_per_something_else_is_refused_by_name():
    from NerveSegLogic.train.recipe import per_iteration

    with pytest.raises(ValueError, match=r"schedule.per is 'batch'; expected one of \('epoch', 'iteration'\)"):
        per_iteration({"schedule": {"name": "poly", "per": "batch"}})


def test_balanced_sampling_alternates_frames_with_and_without_structures():
    store = td.FrameStore.__new__(td.FrameStore)
    blank = np.zeros((4, 4), np.uint8)
    store.frames = [td.Frame(str(i), blank, blank if i >= 6 else blank + 1) for i in range(8)]
    order = td.epoch_order(store, list(range(8)), seed=0, epoch=0, sampling="balanced")
    assert len(order) == 8
    assert [td.has_foreground(store[i]) for i in order] == [True, False] * 4
    assert td.epoch_order(store, list(range(8)), 0, 3, "uniform") == td.epoch_order(store, list(range(8)), 0, 3,
                                                                                      "uniform")


def test_instance_targets_are_one_box_and_mask_per_connected_region():
    target = np.zeros((30, 40), np.int64)
    target[2:8, 3:10] = 1
    target[20:28, 5:9] = 1
    target[10:20, 25:39] = 2
    target[0:2, 38:40] = 2  # 4 px: below the minimum, skipped
    t = td.instance_targets(target, [1, 2])
    assert t["labels"].tolist() == [1, 1, 2]
    assert t["boxes"].tolist() == [[3, 2, 10, 8], [5, 20, 9, 28], [25, 10, 39, 20]]
    assert t["masks"].shape == (3, 30, 40) and t["masks"].dtype == np.uint8
    assert [int(m.sum()) for m in t["masks"]] == [42, 32, 140]
    empty = td.instance_targets(np.zeros((30, 40), np.int64), [1, 2])
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 30, 40)


def test_losses_of_each_recipe_are_finite_and_fall_to_zero_for_a_perfect_prediction():
    from NerveSegLogic.train.losses import semantic_loss

    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 2:8, 2:8] = 1
    target[:, 10:14, 9:15] = 2
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40.0
    poor = torch.zeros(2, 3, 16, 16)
    model = torch.nn.Conv2d(1, 3, 1)
    for name in ("dice", "dice_ce", "bce_dice_l2"):
        loss = semantic_loss(name, l2=0.0)
        assert loss(perfect, target, model).item() < 1e-3, name
        assert loss(poor, target, model).item() > 0.3, name
    with_l2 = semantic_loss("bce_dice_l2", l2=1e-3)(perfect, target, model)
    assert with_l2.item() == pytest.approx(1e-3 * model.weight.pow(2).sum().item(), abs=1e-3)
    with pytest.raises(ValueError, match="unknown loss"):
        semantic_loss("focal")
    assert math.isfinite(semantic_loss("dice")(poor, target, model).item())


def test_scoring_the_last_weights_of_a_run_stopped_mid_epoch_is_refused(tmp_path, frames):
    from NerveSegLogic.train.crossval import load_run

    trainer = Trainer(options(tmp_path / "run", augmentations=[], epochs=2, batch_size=4), dataset=frames)
    trainer.run()
    try:
        card, model, record = load_run(tmp_path / "run", "last")  # after a whole epoch: the last epoch's weights
    finally:
        torch.set_grad_enabled(True)  # load_run turns gradients off, as the scoring scripts want
    assert record["epoch"] == 2 and record["position"] == 0 and card.name == "unet"
    x, y = trainer._batch([0, 1, 2, 3], epoch=2, first_position=0)
    trainer.step(x, y)
    trainer.position = 4  # as a time limit leaves it: a checkpoint four frames into epoch 3
    trainer.checkpoint()
    with pytest.raises(SystemExit, match="written 4 frames into epoch 3, so its weights are no epoch's"):
        load_run(tmp_path / "run", "last")
