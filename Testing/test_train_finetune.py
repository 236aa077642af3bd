"""Fine-tuning for a site (`nerveseg train --init`, issue 25 item 1): the init's weights and the site recipe, refused
inits that cannot start the model, resume that keeps the init, an annotation store as data (accepted frames, split
by recording), partial labels left out of the loss (marginal loss), and the card's record of it all."""

import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic import cli  # noqa: E402
from NerveSegLogic.store.database import AnnotationStore  # noqa: E402
from NerveSegLogic.classes import USGRA_SEG_MAPPING  # noqa: E402
from NerveSegLogic.datasets.dataset import DatasetError  # noqa: E402
from NerveSegLogic.datasets.readers import detect_format, open_dataset  # noqa: E402
from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models.card import ModelCard  # noqa: E402
from NerveSegLogic.models.weights import WeightsError  # noqa: E402
from NerveSegLogic.train import data as td  # noqa: E402
from NerveSegLogic.train import checkpoints, site  # noqa: E402
from NerveSegLogic.train.data import ClassMismatchError  # noqa: E402
from NerveSegLogic.train.losses import marginal_loss, reduce_to_labelled, semantic_loss  # noqa: E402
from NerveSegLogic.train.loop import TrainOptions, Trainer, train  # noqa: E402

from test_train_loop import write_frames  # noqa: E402


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    return open_dataset(write_frames(tmp_path_factory.mktemp("finetune") / "data"), format="folder",
                        mapping=USGRA_SEG_MAPPING)


def options(out, **overrides):
    settings = dict(model="unet", data=None, out=Path(out), epochs=1, input_size=(32, 32), folds=1, batch_size=4,
                    augmentations=[], threads=1, progress=False)
    settings.update(overrides)
    return TrainOptions(**settings)


def weights_file(path: Path, model: str = "unet", seed: int = 7, **build) -> Path:
    """Random weights of ``model`` saved as safetensors (what a fine-tune may start from)."""
    torch.manual_seed(seed)
    registry.save_weights(registry.build(model, **build), path)
    return path


def run_folder(root: Path, card_data: dict, seed: int = 5) -> Path:
    """A run folder as `nerveseg train` writes it: <model>.safetensors and card.json naming it with its sha256."""
    root.mkdir(parents=True)
    card = ModelCard.from_dict(card_data)
    torch.manual_seed(seed)
    digest = registry.save_weights(registry.build_from_card(card), root / f"{card.name}.safetensors")
    card_data = dict(card_data, weights={"file": f"{card.name}.safetensors", "sha256": digest, "dtype": "float32"})
    (root / "card.json").write_text(json.dumps(card_data))
    return root


def state(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, frames):
    """A trained run folder of unet at 32x32 (weights + card.json) to fine-tune from."""
    out = tmp_path_factory.mktemp("base") / "run"
    train(options(out, seed=3), dataset=frames)
    return out


# ------------------------------------------------------------------------------------------------- init + recipe
def test_the_site_recipe_is_derived_from_the_cards_recipe_in_one_place():
    card = registry.card("effnet2-unet")
    recipe = site.site_recipe(card.training["recipe"])
    factor = site.SITE_RECIPE["lr_factor"]
    assert recipe["optimizer"]["lr"] == pytest.approx(card.training["recipe"]["optimizer"]["lr"] * factor)
    assert recipe["epochs"] == site.SITE_RECIPE["epochs"] == 15
    assert recipe["schedule"]["name"] == "cosine"
    assert recipe["augmentations"] == card.training["recipe"]["augmentations"]
    assert recipe["loss"] == card.training["recipe"]["loss"]
    assert "pretrained" not in recipe  # the init replaces ImageNet weights
    assert (recipe["freeze_norm"], recipe["freeze_encoder"]) == (True, False)
    assert recipe["site"] == site.SITE_RECIPE
    changed = site.site_recipe(card.training["recipe"], dict(site.SITE_RECIPE, epochs=4, lr_factor=0.5))
    assert changed["epochs"] == 4 and changed["site"]["lr_factor"] == 0.5


def test_init_from_a_weights_file_replaces_the_initialisation_with_the_site_recipe(tmp_path, frames):
    path = weights_file(tmp_path / "start.safetensors")
    trainer = Trainer(options(tmp_path / "run", init=str(path), epochs=None, batch_size=32), dataset=frames)
    expected = state(path)
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    card_recipe = registry.card("unet").training["recipe"]
    factor = site.SITE_RECIPE["lr_factor"]
    assert trainer.recipe["optimizer"]["lr"] == pytest.approx(card_recipe["optimizer"]["lr"] * factor)
    assert trainer.recipe["epochs"] == 15 and trainer.recipe["freeze_norm"] is True
    assert trainer.init.kind == "weights file" and trainer.init.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # batch-norm frozen: its scale and shift are not trained, and a step leaves its statistics as initialised
    norms = site.norm_layers(trainer.model)
    assert norms and all(not p.requires_grad for layer in norms for p in layer.parameters())
    assert trainer.batch_size == 8  # 32 asked, 8 frames: the batch is the frame count, no frame dropped
    before = [layer.running_mean.clone() for layer in norms]
    trainer.batch_labelled = None
    x, y = trainer._batch(list(range(8)), epoch=0, first_position=0)
    trainer.step(x, y)
    assert all(torch.equal(b, layer.running_mean) for b, layer in zip(before, norms))
    # the usual flags override the site recipe
    overridden = Trainer(options(tmp_path / "run2", init=str(path), epochs=3, lr=0.5, freeze_norm=False),
                         dataset=frames)
    assert overridden.recipe["epochs"] == 3 and overridden.recipe["optimizer"]["lr"] == 0.5
    assert not overridden.recipe["freeze_norm"] and all(p.requires_grad for p in overridden.model.parameters())


def test_init_from_a_run_folder_uses_its_card_and_the_card_records_the_base_model(tmp_path, frames, base_run):
    result = train(options(tmp_path / "site", init=str(base_run), input_size=None, epochs=2, folds=4, fold=3),
                   dataset=frames)
    base_card = json.loads((base_run / "card.json").read_text())
    card = ModelCard.from_dict(json.loads(result.card.read_text()))
    assert (card.input.height, card.input.width) == (32, 32)  # the run's input size, not the registered card's
    init = card.training["init"]
    assert (init["model"], init["sha256"], init["source"]) == ("unet", base_card["weights"]["sha256"], "run folder")
    run = card.training["run"]
    assert run["frames"] == {"train": [f"{i:04d}" for i in range(6)], "held_out": ["0006", "0007"]}
    assert run["budget"]["epochs"] == 2 and run["budget"]["steps"] == 4 and run["budget"]["threads"] == 1
    assert run["budget"]["wall_time_s"] > 0
    assert "held-out frames of this run's own data" in run["validation_data"]
    assert set(run["validation"]["dice"]) == {"nerve", "blood_vessel"}
    fingerprint = card.training["data_fingerprint"]
    assert fingerprint["frames"] == 8 and len(fingerprint["sha256"]) == 64 and "files" in fingerprint["method"]
    assert card.training["labelled_classes"]["classes"] == ["nerve", "blood_vessel"]
    assert card.training["labelled_classes"]["not_labelled"] == []
    assert any(n.startswith("Fine-tuned from unet (run folder") for n in card.training["notes"])
    assert any(n.startswith("Frozen: normalisation") for n in card.training["notes"])
    assert card.training["recipe"]["site"] == site.SITE_RECIPE


def test_init_by_registered_name_is_sha256_checked(tmp_path, frames):
    cards = tmp_path / "cards"
    cards.mkdir()
    data = registry.card("unet").to_json()
    weights = weights_file(cards / "unet.safetensors")
    data["weights"] = {"file": "unet.safetensors", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                       "dtype": "float32"}
    (cards / "unet.json").write_text(json.dumps(data))
    trainer = Trainer(options(tmp_path / "run", init="unet", cards_dir=cards), dataset=frames)
    assert trainer.init.kind == "registered model" and trainer.init.sha256 == data["weights"]["sha256"]
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="sha256"):
        Trainer(options(tmp_path / "run2", init="unet", cards_dir=cards), dataset=frames)
    with pytest.raises(ValueError, match="neither a registered model"):
        Trainer(options(tmp_path / "run3", init="no-such-model", cards_dir=cards), dataset=frames)


def test_an_init_with_other_classes_architecture_or_input_is_refused_naming_both(tmp_path, frames):
    unet = registry.card("unet").to_json()
    three = run_folder(tmp_path / "three", dict(unet, classes=[{"key": "nerve", "label": 1},
                                                               {"key": "blood_vessel", "label": 2},
                                                               {"key": "muscle", "label": 3}]))
    with pytest.raises(ValueError) as error:
        Trainer(options(tmp_path / "a", init=str(three)), dataset=frames)
    message = str(error.value)
    assert "segments {1: nerve, 2: blood_vessel, 3: muscle} but unet segments {1: nerve, 2: blood_vessel}" in message
    assert str(three) in message
    smistad = run_folder(tmp_path / "smistad", registry.card("smistad-unet").to_json())
    with pytest.raises(ValueError, match=r"architecture 'smistad_unet'; unet is a semantic model of architecture "
                                         r"'monai_unet'"):
        Trainer(options(tmp_path / "b", init=str(smistad)), dataset=frames)
    colour = run_folder(tmp_path / "colour", dict(unet, input=dict(unet["input"], channels=3)))
    with pytest.raises(ValueError, match="takes 3 input channel\\(s\\) but unet takes 1"):
        Trainer(options(tmp_path / "c", init=str(colour)), dataset=frames)
    assert not (tmp_path / "a" / checkpoints.CHECKPOINT_JSON).exists()


def test_an_interrupted_fine_tune_resumes_from_the_same_init_and_refuses_another(tmp_path, frames, base_run,
                                                                                 monkeypatch):
    settings = dict(init=str(base_run), epochs=2, batch_size=3)
    straight = train(options(tmp_path / "straight", **settings), dataset=frames)
    original = Trainer.step
    calls = {"n": 0}

    def crash_on_fourth_step(self, x, y):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C in the second epoch
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "step", crash_on_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        train(options(tmp_path / "crashed", checkpoint_minutes=0, **settings), dataset=frames)
    monkeypatch.setattr(Trainer, "step", original)
    record = json.loads((tmp_path / "crashed" / checkpoints.CHECKPOINT_JSON).read_text())
    assert record["setup"]["init"]["sha256"] == json.loads((base_run / "card.json").read_text())["weights"]["sha256"]
    resumed = train(options(tmp_path / "crashed", **settings), dataset=frames)  # the same command again
    assert resumed.global_step == straight.global_step == 6
    a, b = state(straight.weights), state(resumed.weights)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the checkpoint won over the init, and it is the same run
    other = weights_file(tmp_path / "other.safetensors", seed=11)
    with pytest.raises(checkpoints.CheckpointError, match="init was"):
        Trainer(options(tmp_path / "crashed", init=str(other), epochs=3, batch_size=3), dataset=frames)


def test_freezing_the_encoder_is_a_per_architecture_rule(tmp_path, frames):
    with pytest.raises(ValueError, match="architecture 'monai_unet' has no separable encoder"):
        Trainer(options(tmp_path / "a", freeze_encoder=True), dataset=frames)
    trainer = Trainer(options(tmp_path / "b", model="smistad-unet", freeze_encoder=True, input_size=(64, 64)),
                      dataset=frames)
    encoder = dict(trainer.model.encoder.named_parameters())
    assert encoder and not any(p.requires_grad for p in encoder.values())
    before = {k: v.detach().clone() for k, v in encoder.items()}
    head = [p for p in trainer.model.parameters() if p.requires_grad]
    head_before = [p.detach().clone() for p in head]
    x, y = trainer._batch([0, 1], epoch=0, first_position=0)
    trainer.step(x, y)
    assert all(torch.equal(before[k], v) for k, v in encoder.items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, head))


# ------------------------------------------------------------------------------------------------- partial labels
def _logits_and_target(seed=0, batch=3):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 3, 12, 12, generator=generator) * 2
    target = torch.zeros(batch, 12, 12, dtype=torch.long)
    target[:, 2:6, 2:6] = 1
    target[:, 7:11, 6:11] = 2
    return logits, target


@pytest.mark.parametrize("name", ["dice", "dice_ce", "bce_dice_l2"])
def test_with_every_class_labelled_the_marginal_loss_is_the_recipes_loss(name):
    logits, target = _logits_and_target()
    model = torch.nn.Conv2d(1, 3, 1).requires_grad_(False)
    standard = float(semantic_loss(name)(logits, target, model))
    loss = marginal_loss(name)
    assert float(loss(logits, target, model)) == pytest.approx(standard, abs=1e-6)
    assert float(loss(logits, target, model, [None, None, None])) == pytest.approx(standard, abs=1e-6)
    assert float(loss(logits, target, model, [frozenset({1, 2})] * 3)) == pytest.approx(standard, abs=1e-6)


@pytest.mark.parametrize("name", ["dice", "dice_ce"])
def test_a_nerve_only_frame_never_teaches_the_vessel_as_background(name):
    logits, target = _logits_and_target(seed=1)
    nerve_only = torch.where(target == 1, target, torch.zeros_like(target))  # the vessel is not labelled
    loss = marginal_loss(name)
    labelled = [frozenset({1})] * 3
    before = float(loss(logits, nerve_only, None, labelled))
    # move probability between background and vessel wherever the truth is "not nerve", keeping their sum
    generator = torch.Generator().manual_seed(2)
    share = torch.rand(3, 12, 12, generator=generator).clamp(0.05, 0.95)
    merged = logits[:, [0, 2]].logsumexp(dim=1)
    moved = logits.clone()
    outside = nerve_only != 1
    moved[:, 0] = torch.where(outside, merged + share.log(), logits[:, 0])
    moved[:, 2] = torch.where(outside, merged + (1 - share).log(), logits[:, 2])
    assert not torch.allclose(moved, logits)
    assert float(loss(moved, nerve_only, None, labelled)) == pytest.approx(before, abs=1e-6)
    # ...whereas the recipe's own loss would have taught those pixels as background
    standard = semantic_loss(name)
    assert abs(float(standard(moved, nerve_only, None)) - float(standard(logits, nerve_only, None))) > 1e-3
    # and the gradient says the same: no push between background and vessel
    logits = logits.clone().requires_grad_(True)
    loss(logits, nerve_only, None, labelled).backward()
    p = torch.softmax(logits.detach(), dim=1)
    # d loss / d (vessel - background) with their sum fixed: g_v / p_v - g_bg / p_bg = 0 (chain rule on logsumexp)
    assert torch.allclose(logits.grad[:, 2] / p[:, 2], logits.grad[:, 0] / p[:, 0], atol=1e-5)


def test_a_batch_mixing_label_sets_weights_each_groups_loss_by_its_frames():
    logits, target = _logits_and_target(seed=3, batch=3)
    target[2] = torch.where(target[2] == 1, target[2], torch.zeros_like(target[2]))
    loss = marginal_loss("dice_ce")
    mixed = float(loss(logits, target, None, [None, None, frozenset({1})]))
    full = float(semantic_loss("dice_ce")(logits[:2], target[:2], None))
    reduced, mapped = reduce_to_labelled(logits[2:], target[2:], [1])
    assert reduced.shape[1] == 2 and set(mapped.unique().tolist()) <= {0, 1}
    part = float(semantic_loss("dice_ce")(reduced, mapped, None))
    assert mixed == pytest.approx(2 / 3 * full + 1 / 3 * part, abs=1e-6)
    with pytest.raises(ValueError, match="cannot train on partially labelled data"):
        marginal_loss("maskrcnn")
    with pytest.raises(ValueError, match=r"label value\(s\) \[2\] of classes the frame does not label"):
        reduce_to_labelled(logits, _logits_and_target()[1], [1])


def _kaggle(root: Path, count: int = 6) -> Path:
    """Kaggle layout, nerve-only masks (255): a bright nerve, and a dark vessel the masks do not label."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        image = np.clip(rng.normal(100, 15, (40, 48)), 0, 255)
        nerve = np.zeros((40, 48), bool)
        nerve[8:18, 6 + index:16 + index] = True
        image[nerve] += 80
        image[25:33, 30:40] = 10
        cv2.imwrite(str(root / f"1_{index + 1}.tif"), image.astype(np.uint8))
        cv2.imwrite(str(root / f"1_{index + 1}_mask.tif"), np.where(nerve, 255, 0).astype(np.uint8))
    return root


def test_nerve_only_data_trains_only_the_nerve_and_the_card_says_so(tmp_path):
    dataset = open_dataset(_kaggle(tmp_path / "kaggle"), format="kaggle", mapping={255: "nerve"})
    result = train(options(tmp_path / "run", folds=3, batch_size=2), dataset=dataset)
    card = json.loads(result.card.read_text())
    record = card["training"]["labelled_classes"]
    assert record == {"classes": ["nerve"], "not_labelled": ["blood_vessel"], "frames_per_label_set": {"nerve": 6}}
    assert any(n.startswith("Partial labels: 6 frame(s) label nerve") for n in card["training"]["notes"])
    assert math.isnan(result.history[0]["val"]["dice"]["blood_vessel"])  # not labelled: not scored
    assert card["training"]["data_fingerprint"]["frames"] == 6
    trainer = Trainer(options(tmp_path / "again", folds=1), dataset=dataset)
    assert trainer.partial and all(f.labelled == frozenset({1}) for f in trainer.store.frames)


def test_mask_values_that_map_to_no_class_are_named_with_the_models_classes(tmp_path):
    root = write_frames(tmp_path / "data", count=3)
    mask = cv2.imread(str(root / "masks" / "0001.png"), cv2.IMREAD_UNCHANGED)
    mask[0:3, 0:3] = 7
    cv2.imwrite(str(root / "masks" / "0001.png"), mask)
    dataset = open_dataset(root, format="folder", mapping=USGRA_SEG_MAPPING)
    with pytest.raises(DatasetError) as error:
        Trainer(options(tmp_path / "run"), dataset=dataset)
    message = str(error.value)
    assert "unknown label value(s) [7]" in message and "model unet segments {1: nerve, 2: blood_vessel}" in message
    with pytest.raises(ClassMismatchError, match="extra \\['muscle'\\]"):
        td.label_translation(registry.card("unet").classes,
                             open_dataset(root, format="folder", mapping={1: "nerve", 2: "muscle"}).classes)


# ------------------------------------------------------------------------------------------------- annotation store
def _store(path: Path) -> dict:
    """Two recordings: clip A (6 frames, index 10..15) and clip B (4 frames, index 0..3), saved in shuffled order.
    Accepted: A 10-14 (A 12 accepted empty: no structure), B 0-3 (B 1 nerve-only). A 15 is a draft; one more
    frame is rejected; one has no version."""
    rng = np.random.default_rng(1)
    rows, cols = np.ogrid[:40, :48]
    ids = {}
    with AnnotationStore(path) as store:
        plan = [("A", i) for i in (13, 10, 15, 12, 11, 14)] + [("B", i) for i in (2, 0, 3, 1)] + [("C", 0), ("C", 1)]
        for source, index in plan:
            image = np.clip(rng.normal(100, 20, (40, 48)), 0, 255).astype(np.uint8)
            record = store.add_frame(image, source=f"/recordings/{source}/clip.mha", index=index)
            ids[(source, index)] = record.id
            if (source, index) == ("C", 1):
                continue  # never labelled
            mask = np.zeros((40, 48), np.uint8)
            classes = {1: "nerve", 2: "blood_vessel"}
            if (source, index) != ("A", 12):
                mask[(rows - 15) ** 2 + (cols - 12) ** 2 <= 30] = 1
                mask[(rows - 25) ** 2 / 36 + (cols - 34) ** 2 / 64 <= 1] = 2
            if (source, index) == ("B", 1):
                mask[mask == 2] = 0
                classes = {1: "nerve"}  # the annotator drew the nerve only
            status = {("A", 15): "draft", ("C", 0): "rejected"}.get((source, index), "accepted")
            first = store.save_mask(record.id, mask, classes, author="a", origin="manual", parent_id=None,
                                    status="draft")
            if status != "draft":
                store.set_status(record.id, status, author="b", parent_id=first.id)
    return ids


def test_an_annotation_store_is_a_data_set_of_its_accepted_frames(tmp_path):
    path = tmp_path / "project.nsdb"
    ids = _store(path)
    assert detect_format(path)[0] == "store"
    dataset = open_dataset(path)
    assert dataset.format == "store" and len(dataset) == 9
    assert [c.key for c in dataset.classes] == ["nerve", "blood_vessel"]
    names = dataset.names()
    assert names[:5] == [f"A_clip~{i:06d}" for i in range(10, 15)]
    assert names[5:] == [f"B_clip~{i:06d}" for i in range(4)]
    empty = dataset[names.index("A_clip~000012")]
    assert not empty.mask.any() and empty.metadata["labelled"] == ("nerve", "blood_vessel")  # teaches absence
    nerve_only = dataset[names.index("B_clip~000001")]
    assert nerve_only.metadata["labelled"] == ("nerve",) and set(np.unique(nerve_only.mask)) == {0, 1}
    wider = open_dataset(path, statuses=["accepted", "draft"])
    assert len(wider) == 10 and "A_clip~000015" in wider.names()
    # held out: the last block of EACH recording, contiguous in index order
    trainer = Trainer(options(tmp_path / "run", folds=3, fold=2), dataset=dataset)
    assert trainer.val_names == ["A_clip~000014", "B_clip~000003"]
    assert trainer.train_names == [n for n in names if n not in trainer.val_names]
    assert "each recording" in trainer.split_kind
    by_name = {f.name: f for f in trainer.store.frames}
    assert by_name["B_clip~000001"].labelled == frozenset({1}) and by_name["A_clip~000010"].labelled is None
    assert trainer.partial and ids


def test_a_store_without_accepted_frames_says_what_it_holds(tmp_path, capsys):
    path = tmp_path / "project.nsdb"
    with AnnotationStore(path) as store:
        for index, status in enumerate(("draft", "draft", "rejected", None)):
            record = store.add_frame(np.full((20, 20), index * 40, np.uint8), source="clip", index=index)
            if status:
                store.save_mask(record.id, np.zeros((20, 20), np.uint8), {1: "nerve"}, author="a", origin="manual",
                                parent_id=None, status=status)
    with pytest.raises(DatasetError) as error:
        open_dataset(path)
    message = str(error.value)
    assert str(path) in message
    assert "4 frames: 2 draft, 0 accepted, 1 rejected, 0 needs-review, 1 unlabelled" in message
    assert "--statuses accepted,draft" in message
    code = cli.main(["train", "--model", "unet", "--data", str(path), "--out", str(tmp_path / "run"),
                     "--no-progress"])
    assert code == 2 and "0 accepted" in capsys.readouterr().err


def test_fine_tuning_on_a_store_from_the_command_line_records_the_store_and_versions(tmp_path, base_run, capsys):
    path = tmp_path / "project.nsdb"
    _store(path)
    out = tmp_path / "site"
    argv = ["train", "--model", "unet", "--init", str(base_run), "--data", str(path), "--out", str(out),
            "--epochs", "1", "--folds", "3", "--threads", "1", "--no-progress"]
    assert cli.main(argv) == 0
    assert "nerveseg models add" in capsys.readouterr().out
    card = ModelCard.from_dict(json.loads((out / "card.json").read_text()))
    fingerprint = card.training["data_fingerprint"]
    with AnnotationStore(path) as store:
        accepted = sorted(store.current(f.id).id for f in store.frames(statuses=["accepted"]))
    assert fingerprint["kind"] == "annotation store" and fingerprint["versions"] == accepted
    assert fingerprint["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card.training["labelled_classes"]["frames_per_label_set"] == {"nerve+blood_vessel": 8, "nerve": 1}
    assert card.training["run"]["frames"]["held_out"] == ["A_clip~000014", "B_clip~000003"]
    assert card.training["init"]["model"] == "unet"
    # evaluate reads the store too
    assert cli.main(["evaluate", "--model", "unet", "--weights", str(out / "unet.safetensors"), "--data", str(path),
                     "--out", str(tmp_path / "eval"), "--pictures", "0", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] == 9
    per_image = {row["name"]: row for row in metrics["per_image"]}
    assert set(per_image["B_clip~000001"]["per_class"]) == {"nerve"}  # its version labels the nerve only
    assert set(per_image["B_clip~000002"]["per_class"]) == {"nerve", "blood_vessel"}
