"""Pre-labelling runs the model on every unlabelled frame and records the model's identity and uncertainty."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

from NerveSegLogic.annotate.prelabel import mean_entropy, prelabel
from NerveSegLogic.store.database import AnnotationStore



class IntensityModel(torch.nn.Module):
    """A fixed 1x1 convolution: bright pixels -> nerve, dark -> background, mid-grey -> vessel (no training)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, kernel_size=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[0.0]]], [[[12.0]]], [[[4.0]]]]))
            self.conv.bias.copy_(torch.tensor([0.0, -8.0, -1.0]))

    def forward(self, x):
        return self.conv(x)


@pytest.fixture
def segmenter(tmp_path, repo_root):
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models.card import load_card

    card_path = tmp_path / "smistad-unet.json"
    shutil.copy(repo_root / "Resources" / "Models" / "smistad-unet.json", card_path)
    torch.set_num_threads(1)
    return Segmenter.from_module(load_card(card_path), IntensityModel(), min_component_area=1)


def _frames(store):
    ids = []
    for i, level in enumerate((0, 120, 250)):
        image = np.full((40, 60), 20, np.uint8)
        image[10:30, 15:45] = level
        ids.append(store.add_frame(image, "clip", i, subject="S1").id)
    return ids


def test_prelabel_saves_the_models_mask_with_its_name_card_sha256_and_entropy(tmp_path, segmenter):
    card_sha = hashlib.sha256(segmenter.card.path.read_bytes()).hexdigest()
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = _frames(store)
        manual = store.add_frame(np.full((40, 60), 77, np.uint8), "clip", 3)
        store.save_mask(manual.id, np.zeros((40, 60), np.uint8), {1: "nerve"}, "alice", "manual", None)
        report = prelabel(store, segmenter, author="runner", progress=False)
        assert len(report.version_ids) == 3 and report.model_name == "smistad-unet"
        assert len(store.history(manual.id)) == 1  # a frame that had a mask is left alone
        for frame_id in ids:
            version = store.current(frame_id)
            image = store.image(frame_id)
            result = segmenter.segment(image)
            assert (version.origin, version.status, version.author) == ("model", "draft", "runner")
            assert version.model_name == "smistad-unet" and version.model_sha256 == card_sha
            assert version.classes == {1: "nerve", 2: "blood_vessel"}
            assert np.array_equal(version.mask, result.labelmap)
            # Entropy of the model's probabilities over the frame's area of the model input (the frame fills the
            # width, so 40 of 60 px become 2/3 of the input's rows; the rows below are padding and not counted).
            rows = round(40 * segmenter.card.input.width / 60)
            assert result.placement.valid_h == rows
            p = result.probabilities[:, :rows, :].astype(np.float64)
            expected = float(np.mean(-np.sum(p * np.log(np.clip(p, 1e-12, 1)), axis=0)))
            assert version.uncertainty == pytest.approx(expected, rel=1e-6)
        labels = {int(v) for i in ids for v in np.unique(store.current(i).mask)}
        assert labels == {0, 1, 2}  # the bright frame got nerve, the grey one vessel: the model really ran
        again = prelabel(store, segmenter, author="runner", progress=False)
        assert again.version_ids == []  # nothing left unlabelled


def test_second_opinion_adds_another_models_version_on_model_only_frames(tmp_path, segmenter):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = _frames(store)
        first = store.save_mask(ids[0], np.zeros((40, 60), np.uint8), {1: "nerve"}, "runner", "model", None,
                                model_name="other-model")
        store.save_mask(ids[1], np.zeros((40, 60), np.uint8), {1: "nerve"}, "runner", "model", None,
                        model_name="other-model")
        store.set_status(ids[1], "accepted", "alice", store.current(ids[1]).id)  # decided: no second opinion
        report = prelabel(store, segmenter, author="runner", second_opinion=True, progress=False)
        assert len(report.version_ids) == 2  # ids[0] (second opinion) and ids[2] (unlabelled)
        top = store.current(ids[0])
        assert top.parent_id == first.id and top.model_name == "smistad-unet"
        assert store.current(ids[1]).status == "accepted"


def test_mean_entropy_in_nats():
    uniform = np.full((2, 3, 3), 0.5)
    assert mean_entropy(uniform) == pytest.approx(np.log(2))
    certain = np.zeros((3, 2, 2))
    certain[1] = 1.0
    assert mean_entropy(certain) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        mean_entropy(np.ones((1, 2, 2)))
