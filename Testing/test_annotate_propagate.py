"""Propagation through a recording (issue 26 item 3): from an accepted frame, each next frame of the same recording
is prompted with the previous mask's box and a point inside it and saved as a draft 'propagated' version with its
prompts, stopping where the model is unsure, the structure leaves the view or a frame is accepted already. The
masks SAVED are checked against the disc each synthetic frame holds (tiny_promptable.ScriptedPromptable segments
the bright pixels inside the box); once end to end through the CLI with the tiny LiteMedSAM."""

from __future__ import annotations

import numpy as np
import pytest

from NerveSegLogic.annotate.propagate import PropagationError, propagate, propagation_prompts
from NerveSegLogic.store.database import AnnotationStore
from tiny_promptable import ScriptedPromptable, disc_frame


def recording(store, centres, source="scan1"):
    """Frames of one recording with a disc at each centre (None: no disc); returns their ids."""
    return [store.add_frame(disc_frame(*(c if c else (None, None))), source, i).id for i, c in enumerate(centres)]


def accept_truth(store, frame_id, label=1, key="nerve"):
    mask = (store.image(frame_id) > 128).astype(np.uint8) * label
    version = store.save_mask(frame_id, mask, {label: key}, "ana", "manual", None)
    return store.set_status(frame_id, "accepted", "ana", version.id)


def test_a_slowly_moving_structure_is_carried_to_every_next_frame(tmp_path):
    model = ScriptedPromptable()
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(14, 20), (16, 20), (18, 21), (20, 21), (22, 22)])
        other = store.add_frame(disc_frame(30, 20), "scan2", 1).id  # another recording: never touched
        start = accept_truth(store, ids[0])
        report = propagate(store, model, ids[0], "ana", grow=0.3)
        assert [f.frame_id for f in report.frames] == ids[1:]
        assert report.stopped_at is None and "end of the recording" in report.stop_reason
        for frame_id in ids[1:]:
            version = store.current(frame_id)
            np.testing.assert_array_equal(version.mask, (store.image(frame_id) > 128).astype(np.uint8))
            assert version.origin == "propagated" and version.status == "draft" and version.author == "ana"
            assert version.model_name == "scripted-sam" and version.classes == {1: "nerve"}
        assert store.current(other) is None
        prompts = propagation_prompts(store, store.current(ids[1]))
        assert prompts["from_frame"] == ids[0] and prompts["from_version"] == start.id
        (structure,) = prompts["structures"]
        x0, y0, x1, y1 = structure["box"]
        assert x0 < 14 - 6 and x1 > 14 + 6 and y0 < 20 - 6 and y1 > 20 + 6  # the previous disc's box, grown
        assert structure["points"] == [[14.0, 20.0, True]]  # the previous disc's centre
        assert structure["predicted_iou"] == pytest.approx(0.95) and structure["class"] == "nerve"
        assert prompts["previous_frame"] == ids[0]
        assert propagation_prompts(store, store.current(ids[2]))["previous_frame"] == ids[1]


def test_it_stops_where_the_structure_jumps_out_of_the_box(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(12, 20), (13, 20), (30, 20), (31, 20)])
        accept_truth(store, ids[0])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        assert [f.frame_id for f in report.frames] == [ids[1]]
        assert report.stopped_at == ids[2]
        assert f"stopped at frame {ids[2]}" in report.stop_reason and "leaves the view" in report.stop_reason
        assert store.current(ids[2]) is None and store.current(ids[3]) is None  # nothing saved past the stop


def test_it_stops_before_a_frame_of_another_size_and_says_so(tmp_path):
    """A recording whose frame size changes (another scan, a depth change): a box near the edge of the larger frame
    would fall outside the smaller one, and any box would land at the wrong pixels. It stops there, saying why."""
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(40, 30), (41, 30)])
        ids.append(store.add_frame(disc_frame(20, 15, height=32, width=36), "scan1", 2).id)  # smaller: no room for x=41
        ids.append(store.add_frame(disc_frame(21, 15, height=32, width=36), "scan1", 3).id)
        accept_truth(store, ids[0])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        assert [f.frame_id for f in report.frames] == [ids[1]]
        np.testing.assert_array_equal(store.current(ids[1]).mask, (store.image(ids[1]) > 128).astype(np.uint8))
        assert report.stopped_at == ids[2]
        assert "36x32 pixels, the frame before it 48x40" in report.stop_reason
        assert store.current(ids[2]) is None and store.current(ids[3]) is None  # nothing saved past the stop


def test_it_stops_where_the_model_is_unsure(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        # the disc grows past the grown box: the mask touches the box, the scripted model says IoU 0.5
        ids = recording(store, [(20, 20), (21, 20)])
        store_image = disc_frame(20, 20, radius=12)
        ids.append(store.add_frame(store_image, "scan1", 2).id)
        accept_truth(store, ids[0])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3, min_iou=0.8)
        assert [f.frame_id for f in report.frames] == [ids[1]]
        assert report.stopped_at == ids[2] and "predicted IoU 0.50 < 0.8" in report.stop_reason


def test_it_stops_when_the_structure_leaves_the_view(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(20, 20), (21, 20), None])
        accept_truth(store, ids[0])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        assert report.stopped_at == ids[2] and "leaves the view" in report.stop_reason
        assert store.current(ids[2]) is None


def test_count_and_to_end_it_and_an_accepted_frame_stops_it(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(14, 20), (15, 20), (16, 20), (17, 20), (18, 20)])
        accept_truth(store, ids[0])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3, count=2)
        assert [f.frame_id for f in report.frames] == ids[1:3]
    with AnnotationStore(tmp_path / "q.nsdb") as store:
        ids = recording(store, [(14, 20), (15, 20), (16, 20), (17, 20), (18, 20)])
        accept_truth(store, ids[0])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3, to_frame=ids[2])
        assert [f.frame_id for f in report.frames] == ids[1:3]
        assert store.current(ids[3]) is None
    with AnnotationStore(tmp_path / "r.nsdb") as store:
        ids = recording(store, [(14, 20), (15, 20), (16, 20), (17, 20)])
        accept_truth(store, ids[0])
        kept = accept_truth(store, ids[2])
        report = propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        assert [f.frame_id for f in report.frames] == [ids[1]] and report.stopped_at == ids[2]
        assert "has an accepted mask" in report.stop_reason
        assert store.current(ids[2]).id == kept.id  # the annotator's accepted mask is never replaced


def test_a_draft_on_the_next_frame_gets_the_propagated_version_on_top(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(14, 20), (15, 20)])
        accept_truth(store, ids[0])
        draft = store.save_mask(ids[1], np.zeros((40, 48), np.uint8), {1: "nerve"}, "model", "model", None,
                                model_name="square-net")
        propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        version = store.current(ids[1])
        assert version.parent_id == draft.id and version.origin == "propagated"
        np.testing.assert_array_equal(version.mask, store.image(ids[1]) > 128)


def test_propagation_from_a_frame_without_an_accepted_mask_names_the_frame(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        ids = recording(store, [(14, 20), (15, 20)])
        with pytest.raises(PropagationError, match=f"frame {ids[0]} has no accepted mask .*no mask at all"):
            propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        draft = store.save_mask(ids[0], (store.image(ids[0]) > 128).astype(np.uint8), {1: "nerve"}, "ana", "manual",
                                None)
        with pytest.raises(PropagationError, match=f"frame {ids[0]} has no accepted mask .*{draft.id} is draft"):
            propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3)
        other = store.add_frame(disc_frame(5, 5), "scan2", 9).id
        store.set_status(ids[0], "accepted", "ana", draft.id)
        with pytest.raises(PropagationError, match=f"frame {other} .* is not after frame {ids[0]}"):
            propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3, to_frame=other)
        with pytest.raises(PropagationError, match="has no class blood_vessel"):
            propagate(store, ScriptedPromptable(), ids[0], "ana", grow=0.3, class_keys=["blood_vessel"])
        assert store.current(ids[1]) is None  # nothing saved by any refusal


def test_two_structures_are_carried_with_their_own_classes(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as store:
        frames = []
        for i, shift in enumerate((0, 1, 2)):
            image = disc_frame(12 + shift, 20, radius=5)
            yy, xx = np.mgrid[:40, :48]
            image[(yy - 20) ** 2 + (xx - 34 - shift) ** 2 <= 25] = 220
            frames.append(store.add_frame(image, "scan1", i).id)
        first = store.image(frames[0]) > 128
        mask = np.where(first, np.where(np.arange(48)[None, :] < 24, 1, 2), 0).astype(np.uint8)
        v = store.save_mask(frames[0], mask, {1: "nerve", 2: "blood_vessel"}, "ana", "manual", None)
        store.set_status(frames[0], "accepted", "ana", v.id)
        propagate(store, ScriptedPromptable(), frames[0], "ana", grow=0.3)
        for frame_id in frames[1:]:
            bright = store.image(frame_id) > 128
            version = store.current(frame_id)
            np.testing.assert_array_equal(version.mask == 1, bright & (np.arange(48)[None, :] < 24))
            np.testing.assert_array_equal(version.mask == 2, bright & (np.arange(48)[None, :] >= 24))
            assert version.classes == {1: "nerve", 2: "blood_vessel"}


def test_cli_propagate_with_the_tiny_litemedsam_saves_its_masks(tmp_path, monkeypatch, capsys):
    from NerveSegLogic.annotate.prompt import FramePrompter
    from NerveSegLogic.cli import main
    from NerveSegLogic.inference.promptable import PromptableSegmenter
    from tiny_promptable import install_tiny_promptable

    install_tiny_promptable(tmp_path / "Resources", monkeypatch)
    path = tmp_path / "p.nsdb"
    with AnnotationStore(path) as store:
        ids = recording(store, [(20, 20), (21, 20), (22, 20)])
        accept_truth(store, ids[0])
    assert main(["annotate", "propagate", "--store", str(path), "--from", str(ids[0]), "--count", "1",
                 "--min-iou", "0", "--model", "litemedsam"]) == 0
    out = capsys.readouterr().out
    assert f"frame {ids[1]} (#1): version" in out and "carried frame" in out
    tiny = PromptableSegmenter.from_name("litemedsam", backend="onnx", threads=1)
    with AnnotationStore(path) as store:
        version = store.current(ids[1])
        prompts = propagation_prompts(store, version)
        (structure,) = prompts["structures"]
        region = FramePrompter(store, tiny).predict(ids[1], structure["box"],
                                                    [tuple(p) for p in structure["points"]])
        if region.any():
            from NerveSegLogic.annotate.propagate import largest_component

            region = largest_component(region)
        np.testing.assert_array_equal(version.mask == 1, region)
        assert store.current(ids[2]) is None  # --count 1
    assert main(["annotate", "propagate", "--store", str(path), "--from", str(ids[1]), "--model", "litemedsam"]) == 1
    assert f"frame {ids[1]} has no accepted mask" in capsys.readouterr().err
