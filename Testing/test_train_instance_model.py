"""The instance model (bpmsegnet) trains through the same loop, from connected-component targets, and its
evaluation adds COCO AP."""

import json

import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic.classes import USGRA_SEG_MAPPING  # noqa: E402
from NerveSegLogic.datasets.readers import open_dataset  # noqa: E402
from NerveSegLogic.inference.segmenter import Segmenter  # noqa: E402
from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models.card import ModelCard  # noqa: E402
from NerveSegLogic.train.data import FrameStore  # noqa: E402
from NerveSegLogic.train.evaluate import evaluate  # noqa: E402
from NerveSegLogic.train.loop import TrainOptions, Trainer  # noqa: E402

# Small enough for a test: 64x64 input, narrow FPN, few proposals.
TINY = dict(rpn_pre_nms_top_n=[100, 50], rpn_post_nms_top_n=[50, 20], rpn_batch_size=32, box_batch_size=32,
            anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=32, detections_per_image=10)


def test_bpmsegnet_trains_from_connected_components_and_is_scored_with_coco_ap(tmp_path):
    from test_train_loop import write_frames

    dataset = open_dataset(write_frames(tmp_path / "data", count=4, height=64, width=64), format="folder",
                           mapping=USGRA_SEG_MAPPING)
    trainer = Trainer(TrainOptions(model="bpmsegnet", data=None, out=tmp_path / "run", epochs=1, input_size=(64, 64),
                                   folds=2, batch_size=2, threads=1, progress=False, augmentations=[],
                                   build_overrides=TINY), dataset=dataset)
    images, targets = trainer._batch([0, 1], epoch=0, first_position=0)
    assert [t["labels"].tolist() for t in targets] == [[1, 2], [1, 2]]  # one instance per region, class = label
    assert targets[0]["masks"].shape == (2, 64, 64)
    losses = [trainer.step(images, targets) for _ in range(3)]
    assert losses[-1] < losses[0]

    result = trainer.run()
    card = ModelCard.from_dict(json.loads(result.card.read_text()))
    assert card.task == "instance" and card.training["recipe"]["loss"] == "maskrcnn"
    assert card.training["recipe"]["optimizer"]["name"] == "sgd"

    assert card.build["fpn_channels"] == 32  # the build arguments it was trained with, so it can be rebuilt
    model = registry.load_from_card(card, weights_path=result.weights, sha256=card.weights["sha256"])
    summary = evaluate(Segmenter.from_module(card, model), FrameStore(dataset, None, [2, 3])).summary
    assert set(summary["coco"]) == {"bbox", "segm"}
    assert set(summary["coco"]["segm"]) == {"AP50", "AP60", "AP70", "AP"}
    assert all(0.0 <= v <= 1.0 for v in summary["coco"]["bbox"].values())
    assert 0.0 <= summary["per_class"]["nerve"]["dice"] <= 1.0
