"""Pre-label refinement (issue 26 item 2): the semantic model's regions prompt the promptable model with their
grown boxes; a confident promptable mask replaces the region, an unsure one leaves it. Checked on the masks SAVED,
with a scripted promptable model whose answer is known (tiny_promptable.ScriptedPromptable), and once end to end
through the CLI with the tiny LiteMedSAM and a tiny semantic model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from NerveSegLogic.annotate.prelabel import (REFINED_PREFIX, PrelabelRefiner, grown_box, prelabel,
                                             refine_labelmap)
from NerveSegLogic.store.database import AnnotationStore
from NerveSegLogic.classes import segment_class
from tiny_promptable import ScriptedPromptable, disc_frame


class SquareSegmenter:
    """A semantic 'model' that labels a square around every bright disc: nerve (1) left of x = 24, vessel (2)
    right of it; the square is the disc's box grown by 3 px, so it is too large where refinement can fix it."""

    backend = None

    def __init__(self):
        self.card = SimpleNamespace(name="square-net", labels={1: "nerve", 2: "blood_vessel"})
        self.classes = (segment_class("nerve", 1), segment_class("blood_vessel", 2))
        self.card_sha256 = "ab" * 32

    def segment(self, image):
        import cv2

        labelmap = np.zeros(image.shape, np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats((image > 128).astype(np.uint8))
        for index in range(1, count):
            x, y, w, h = stats[index, :4]
            label = 1 if x + w / 2 < 24 else 2
            labelmap[max(0, y - 3):y + h + 3, max(0, x - 3):x + w + 3] = label
        return SimpleNamespace(labelmap=labelmap, probabilities=None, model_name="square-net")


def two_discs():
    image = disc_frame(12, 20, radius=5)
    yy, xx = np.mgrid[:40, :48]
    image[(yy - 20) ** 2 + (xx - 36) ** 2 <= 25] = 220
    return image


def test_a_confident_mask_replaces_its_region_and_an_unsure_one_leaves_it():
    image = two_discs()
    semantic = SquareSegmenter().segment(image).labelmap
    model = ScriptedPromptable()
    unsure_on_right = lambda box: (model.predict(image[None].astype(np.float32), image.shape, box)[0],  # noqa: E731
                                   0.95 if box[0] < 24 else 0.4)
    refined, decisions = refine_labelmap(semantic, {1: "nerve", 2: "blood_vessel"}, unsure_on_right,
                                         ["nerve", "blood_vessel"], grow=0.1, min_iou=0.8)
    disc_left = (image > 128) & (np.arange(48)[None, :] < 24)
    np.testing.assert_array_equal(refined == 1, disc_left)  # the nerve: exactly the disc now
    np.testing.assert_array_equal(refined == 2, semantic == 2)  # the vessel: the semantic square, unchanged
    assert [(d.class_key, d.replaced) for d in decisions] == [("nerve", True), ("blood_vessel", False)]
    assert decisions[0].area_before == int((semantic == 1).sum()) and decisions[0].area_after == int(disc_left.sum())


def test_classes_the_promptable_model_does_not_know_and_tiny_regions_stay():
    image = two_discs()
    labelmap = SquareSegmenter().segment(image).labelmap
    labelmap[0:3, 0:3] = 1  # 9 px of nerve: under the smallest region refined
    model = ScriptedPromptable()
    refined, decisions = refine_labelmap(labelmap, {1: "nerve", 2: "muscle"},
                                         lambda box: model.predict(image[None].astype(np.float32), image.shape, box),
                                         ["nerve", "blood_vessel"], min_area=50)
    np.testing.assert_array_equal(refined == 2, labelmap == 2)  # muscle: not the promptable model's class
    np.testing.assert_array_equal(refined[0:3, 0:3], 1)  # the tiny region is left
    assert [d.class_key for d in decisions] == ["nerve"]


def test_the_box_is_the_region_grown_and_a_replacing_mask_never_leaves_it():
    region = np.zeros((40, 48), bool)
    region[10:20, 10:30] = True
    assert grown_box(region, 0.1) == pytest.approx((8.0, 9.0, 31.0, 20.0))
    everything = lambda box: (np.ones((40, 48), bool), 0.99)  # noqa: E731  a model that claims the whole frame
    refined, _ = refine_labelmap(region.astype(np.uint8), {1: "nerve"}, everything, ["nerve"], grow=0.1)
    expected = np.zeros((40, 48), bool)
    expected[9:21, 8:32] = True
    np.testing.assert_array_equal(refined == 1, expected)


def test_prelabel_refine_saves_the_refined_mask_and_names_both_models(tmp_path):
    model = ScriptedPromptable()
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        frame_id = store.add_frame(two_discs(), "clip", 0).id
        refiner = PrelabelRefiner(store, model, min_iou=0.8)
        report = prelabel(store, SquareSegmenter(), "runner", progress=False, refiner=refiner)
        version = store.current(frame_id)
        np.testing.assert_array_equal(version.mask > 0, two_discs() > 128)  # both squares replaced by their discs
        np.testing.assert_array_equal(version.mask[:, :24] == 1, two_discs()[:, :24] > 128)
        assert version.origin == "model" and version.model_name == "square-net"
        assert version.model_sha256 == "ab" * 32
        assert version.comment.startswith(REFINED_PREFIX + "scripted-sam (sha256 5c5c5c5c5c5c")
        assert "nerve replaced (IoU 0.95)" in version.comment and "blood_vessel replaced" in version.comment
        assert report.regions_replaced == 2 and report.refined_by == "scripted-sam"
        assert store.embedding(frame_id, model.model_sha256) is not None  # cached for later prompts
        assert model.embeds == 1


def test_an_unsure_promptable_model_keeps_the_semantic_mask(tmp_path):
    model = ScriptedPromptable(sure=0.6)
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        frame_id = store.add_frame(two_discs(), "clip", 0).id
        prelabel(store, SquareSegmenter(), "runner", progress=False,
                 refiner=PrelabelRefiner(store, model, min_iou=0.8))
        np.testing.assert_array_equal(store.current(frame_id).mask, SquareSegmenter().segment(two_discs()).labelmap)
        assert "kept (IoU 0.60)" in store.current(frame_id).comment


def test_refiner_refuses_a_threshold_outside_0_1(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        with pytest.raises(ValueError, match="predicted-IoU threshold must be 0..1"):
            PrelabelRefiner(store, ScriptedPromptable(), min_iou=1.5)


def test_cli_prelabel_refine_with_the_tiny_litemedsam(tmp_path, monkeypatch, unet_random):
    """End to end: the refined version saved by the CLI equals refine_labelmap of the semantic model's labelmap with
    the tiny promptable model's own predictions (threshold 0: every region replaced)."""
    from NerveSegLogic.cli import main
    from NerveSegLogic.inference.promptable import PromptableSegmenter
    from NerveSegLogic.inference.segmenter import Segmenter
    from tiny_promptable import install_tiny_promptable

    path = tmp_path / "p.nsdb"
    with AnnotationStore(path) as store:
        frame_id = store.add_frame(two_discs(), "clip", 0).id
    semantic = Segmenter.from_name(unet_random).segment(two_discs()).labelmap  # before the Resources folder changes
    install_tiny_promptable(tmp_path / "Resources", monkeypatch)
    assert main(["annotate", "prelabel", "--store", str(path), "--model", unet_random, "--refine",
                 "--refine-model", "litemedsam", "--min-iou", "0"]) == 0
    tiny = PromptableSegmenter.from_name("litemedsam", backend="onnx", threads=1)
    with AnnotationStore(path) as store:
        version = store.current(frame_id)
        embedding = store.embedding(frame_id, tiny.model_sha256)
        assert embedding is not None
        expected, decisions = refine_labelmap(semantic, version.classes,
                                              lambda box: tiny.predict(embedding, (40, 48), box=box),
                                              list(tiny.card.labels.values()), min_iou=0.0)
        np.testing.assert_array_equal(version.mask, expected)
        assert version.model_name == unet_random and "refined by litemedsam" in version.comment


def test_the_cli_defaults_are_the_modules_defaults():
    from NerveSegLogic.annotate import prelabel as module, propagate as carried
    from NerveSegLogic.commands import annotate

    assert (annotate.REFINE_MIN_IOU, annotate.REFINE_GROW) == (module.REFINE_MIN_IOU, module.REFINE_GROW)
    assert annotate.PROPAGATE_MIN_IOU == carried.MIN_IOU
