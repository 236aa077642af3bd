"""Correcting a class with a box and clicks: the embedding cache (never computed twice for a model), prompt
versions with their prompts (undoable), the CLI `annotate correct ... prompt` and `annotate embed`, and an old
store gaining the 'prompt' origin."""

import numpy as np
import pytest

from NerveSegLogic.annotate.prompt import FramePrompter, label_for_class, replace_class
from NerveSegLogic.store.database import AnnotationStore, ConflictError
from NerveSegLogic.cli import main
from NerveSegLogic.inference.promptable import PromptableSegmenter
from tiny_promptable import CountingModel, frame, install_tiny_promptable


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    install_tiny_promptable(tmp_path / "Resources", monkeypatch)
    return CountingModel(PromptableSegmenter.from_name("litemedsam", backend="torch", threads=1))


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "p.nsdb") as s:
        yield s


def test_the_embedding_is_computed_once_per_frame_and_model(store, tiny, tmp_path, monkeypatch):
    ids = [store.add_frame(frame(seed=i), "clip", i).id for i in range(2)]
    prompter = FramePrompter(store, tiny)
    for _ in range(3):
        prompter.predict(ids[0], box=(10, 10, 30, 30))
    assert tiny.embeds == 1 and prompter.computed == 1
    cached = store.embedding(ids[0], tiny.model_sha256)
    assert cached.dtype == np.float16 and cached.shape == (256, 8, 8)
    # A later session (another process) finds it in the store: still one computation.
    again = FramePrompter(store, tiny)
    again.predict(ids[0], points=[(20, 20, True)])
    assert tiny.embeds == 1 and again.cached(ids[0]) and not again.cached(ids[1])
    # New weights are a new model: their own embedding, the old one is not reused.
    install_tiny_promptable(tmp_path / "Other", monkeypatch, seed=5)
    other = CountingModel(PromptableSegmenter.from_name("litemedsam", backend="torch", threads=1))
    assert other.model_sha256 != tiny.model_sha256
    FramePrompter(store, other).predict(ids[0], box=(10, 10, 30, 30))
    assert other.embeds == 1


def test_a_background_embedding_and_a_prompt_never_embed_the_same_frame_twice(store, tiny):
    ids = [store.add_frame(frame(seed=i), "clip", i).id for i in range(3)]
    prompter = FramePrompter(store, tiny)
    thread, _ = prompter.embed_in_background(ids)
    for frame_id in ids:
        prompter.predict(frame_id, box=(5, 5, 40, 30))
    thread.join(timeout=60)
    assert tiny.embeds == 3 and prompter.embed_frames(ids) == 0


def test_a_prompt_version_replaces_one_class_keeps_its_prompts_and_is_undone_by_restoring(store, tiny):
    record = store.add_frame(frame(), "clip", 0)
    before = np.zeros((40, 48), np.uint8)
    before[:5, :5] = 2  # a vessel the nerve prompt must not touch outside the predicted region
    before[30:, 40:] = 1
    parent = store.save_mask(record.id, before, {1: "nerve", 2: "blood_vessel"}, "ana", "manual", None)
    prompter = FramePrompter(store, tiny)
    region = prompter.predict(record.id, box=(10, 8, 38, 30), points=[(20, 20, True), (12, 10, False)])
    version = prompter.correct(record.id, "nerve", "ana", parent.id, box=(10, 8, 38, 30),
                               points=[(20, 20, True), (12, 10, False)])
    assert version.origin == "prompt" and version.model_name == "litemedsam"
    assert version.model_sha256 == tiny.model_sha256 and version.parent_id == parent.id
    np.testing.assert_array_equal(version.mask == 1, region)
    np.testing.assert_array_equal(version.mask[~region], np.where(before == 1, 0, before)[~region])
    assert store.prompts(version.id) == {"model": "litemedsam", "model_sha256": tiny.model_sha256,
                                         "class": "nerve", "label": 1, "box": [10.0, 8.0, 38.0, 30.0],
                                         "points": [[20.0, 20.0, True], [12.0, 10.0, False]], "click_mode": "box"}
    assert store.prompts(parent.id) is None
    undone = store.restore(record.id, parent.id, "ana", version.id)
    np.testing.assert_array_equal(undone.mask, before)
    with pytest.raises(ConflictError):  # based on a version that is no longer current
        prompter.correct(record.id, "nerve", "ana", parent.id, box=(10, 8, 38, 30))


def test_a_new_class_gets_the_model_label_or_the_next_free_one():
    assert label_for_class("nerve", {1: "nerve"}, {1: "nerve", 2: "blood_vessel"}) == 1
    assert label_for_class("blood_vessel", {1: "nerve"}, {1: "nerve", 2: "blood_vessel"}) == 2
    assert label_for_class("blood_vessel", {2: "muscle"}, {1: "nerve", 2: "blood_vessel"}) == 3
    assert label_for_class("artery", {}, {1: "nerve", 2: "blood_vessel"}) == 3
    mask = np.array([[1, 2], [1, 0]], np.uint8)
    np.testing.assert_array_equal(replace_class(mask, 1, np.array([[False, True], [False, False]])),
                                  [[0, 1], [0, 0]])


def test_cli_prompt_end_to_end(store, tiny, tmp_path, capsys):
    record = store.add_frame(frame(), "clip", 0)
    path = str(store.path)
    argv = ["annotate", "correct", "--store", path, "--author", "ana", str(record.id), "prompt", "--class", "nerve",
            "--box", "10,8,38,30", "--backend", "torch", "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"frame {record.id}: version" in out and "embedding computed and cached" in out
    first = store.current(record.id)
    assert first.origin == "prompt" and first.classes == {1: "nerve"} and first.author == "ana"
    assert store.prompts(first.id)["box"] == [10.0, 8.0, 38.0, 30.0]
    np.testing.assert_array_equal(first.mask == 1, tiny.mask(store.embedding(record.id, tiny.model_sha256),
                                                             (40, 48), box=(10, 8, 38, 30)))
    # A second prompt (the box and an exclude click) runs on the cached embedding.
    expected = tiny.mask(store.embedding(record.id, tiny.model_sha256), (40, 48), box=(10, 8, 38, 30),
                         points=[(30, 12, False)])
    assert main(argv + ["--point", "30,12,-"]) == 0
    out = capsys.readouterr().out
    assert tiny.embeds == 0  # the CLI's own model computed the one embedding; this wrapper never had to
    latest = store.current(record.id)
    if np.array_equal(expected, first.mask == 1):
        assert "nothing saved" in out and latest.id == first.id
    else:
        assert "cached embedding" in out and latest.parent_id == first.id
        np.testing.assert_array_equal(latest.mask == 1, expected)
        assert store.prompts(latest.id)["points"] == [[30.0, 12.0, False]]


@pytest.mark.parametrize("extra, code, message", [
    ([], 1, "give --box X0,Y0,X1,Y1 and/or at least one --point X,Y,+"),
    (["--point", "30,12,-"], 1, "give --box"),
    (["--point", "300,12,+"], 1, "lies outside the 48x40 frame"),
    (["--box", "100,100,120,120"], 1, "lies outside the 48x40 frame"),
    (["--box", "10,10,10,10"], 1, "has zero size"),
])
def test_cli_prompt_refuses_an_unusable_prompt(store, tiny, capsys, extra, code, message):
    record = store.add_frame(frame(), "clip", 0)
    argv = ["annotate", "correct", "--store", str(store.path), str(record.id), "prompt", "--class", "nerve",
            "--backend", "torch", "--threads", "1"] + extra
    assert main(argv) == code
    assert message in capsys.readouterr().err
    assert store.current(record.id) is None


@pytest.mark.parametrize("bad", ["--box=1,2,3", "--box=5,5,1,1", "--point=3,4", "--point=3,4,x"])
def test_cli_prompt_names_a_malformed_argument(store, capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", "correct", "--store", str(store.path), "1", "prompt", "--class", "nerve", bad])
    assert exit_info.value.code == 2
    assert bad.split("=")[0] in capsys.readouterr().err


def test_cli_embed_caches_every_frame_once(store, tiny, capsys):
    for i in range(3):
        store.add_frame(frame(seed=i), "clip", i)
    argv = ["annotate", "embed", "--store", str(store.path), "--backend", "torch", "--threads", "1"]
    assert main(argv) == 0
    assert "3 frames embedded" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 frames embedded" in capsys.readouterr().out
    assert all(store.embedding(r.id, tiny.model_sha256) is not None for r in store.frames())


def test_a_store_made_before_prompts_gains_the_prompt_origin(tmp_path, monkeypatch):
    import NerveSegLogic.store.database as store_module

    path = tmp_path / "old.nsdb"
    with monkeypatch.context() as patch:  # the schema as it was: no 'prompt' origin, no prompt tables
        patch.setattr(store_module, "_SCHEMA", store_module._SCHEMA.replace("'corrected', 'prompt'", "'corrected'"))
        patch.setattr(AnnotationStore, "_add_prompt_tables", lambda self: None)
        with AnnotationStore(path) as old:
            record = old.add_frame(frame(), "clip", 0)
            first = old.save_mask(record.id, np.zeros((40, 48), np.uint8), {1: "nerve"}, "ana", "manual", None)
            with pytest.raises(Exception, match="CHECK constraint"):
                old.save_mask(record.id, np.ones((40, 48), np.uint8), {1: "nerve"}, "ana", "prompt", first.id,
                              prompts={"box": None})
    with AnnotationStore(path) as upgraded, AnnotationStore(path) as other:
        version = upgraded.save_mask(record.id, np.ones((40, 48), np.uint8), {1: "nerve"}, "ana", "prompt",
                                     first.id, prompts={"box": [1, 2, 3, 4]})
        assert [v.origin for v in other.history(record.id)] == ["manual", "prompt"]
        assert other.prompts(version.id) == {"box": [1, 2, 3, 4]}
        assert upgraded.integrity_check() == "ok"
        with pytest.raises(ValueError, match="only with, a version of origin 'prompt'"):
            upgraded.save_mask(record.id, np.zeros((40, 48), np.uint8), {1: "nerve"}, "ana", "corrected",
                               version.id, prompts={"box": None})
