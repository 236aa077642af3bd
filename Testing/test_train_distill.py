"""Distillation (`nerveseg train --teacher`): the soft term's arithmetic, a run that learns from its teachers'
probabilities, the card that says so, and teachers that cannot teach this student refused by name."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic import cli  # noqa: E402
from NerveSegLogic.classes import USGRA_SEG_MAPPING  # noqa: E402
from NerveSegLogic.datasets.readers import open_dataset  # noqa: E402
from NerveSegLogic.train import checkpoints, distill  # noqa: E402
from NerveSegLogic.train.loop import TrainOptions, Trainer, train  # noqa: E402

from test_train_loop import write_frames  # noqa: E402


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = write_frames(tmp_path_factory.mktemp("distill") / "data")
    return open_dataset(root, format="folder", mapping=USGRA_SEG_MAPPING)


def options(out, **overrides):
    settings = dict(model="unet", data=None, out=Path(out), epochs=1, input_size=(32, 32), folds=1, batch_size=4,
                    augmentations=["flip"], threads=1, progress=False)
    settings.update(overrides)
    return TrainOptions(**settings)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, frames):
    """A trained run folder (weights + card.json at 32x32) to teach from."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(options(out, epochs=2, seed=3), dataset=frames)
    return out


def test_the_soft_term_is_zero_when_the_student_matches_the_teacher_and_pulls_it_there_otherwise():
    generator = torch.Generator().manual_seed(0)
    teacher_logits = torch.randn(2, 3, 5, 6, generator=generator)
    for temperature in (1.0, 2.0):
        soft = torch.softmax(teacher_logits / temperature, dim=1)
        assert float(distill.distillation_loss(teacher_logits, soft, temperature)) == pytest.approx(0.0, abs=1e-6)
        student = torch.zeros_like(teacher_logits, requires_grad=True)
        start = float(distill.distillation_loss(student, soft, temperature).detach())
        # KL of the uniform student against the teacher, by hand: sum p log(p / (1/3)), mean over pixels, x T^2
        by_hand = float((soft * (soft.log() + torch.log(torch.tensor(3.0)))).sum(dim=1).mean()) * temperature ** 2
        assert start == pytest.approx(by_hand, rel=1e-5) and start > 0.01
        optimiser = torch.optim.SGD([student], lr=60.0 / temperature)  # the mean over 60 pixels scales each gradient
        for _ in range(300):
            optimiser.zero_grad()
            distill.distillation_loss(student, soft, temperature).backward()
            optimiser.step()
        assert float(distill.distillation_loss(student, soft, temperature).detach()) < 0.02 * start
        agree = (student.detach().argmax(1) == teacher_logits.argmax(1)).float().mean()
        assert float(agree) == 1.0


def test_a_step_mixes_the_recipe_loss_and_the_teachers_mean_probabilities(tmp_path, frames, teacher_run):
    from NerveSegLogic.models import registry

    trainer = Trainer(options(tmp_path / "student", teachers=[str(teacher_run), f"unet@{teacher_run}/unet.safetensors"],
                              distill_weight=0.3, distill_temperature=2.0), dataset=frames)
    assert len(trainer.teachers) == 2
    x, y = trainer._batch(list(range(4)), epoch=0, first_position=0)
    # the teachers, loaded independently of the trainer: the run's own card and weights
    card = distill.read_run_card(teacher_run / "card.json")
    teacher = registry.load_from_card(card, weights_path=teacher_run / "unet.safetensors").eval()
    with torch.no_grad():
        soft = torch.softmax(teacher(x) / 2.0, dim=1)  # both teachers are the same file: their mean is this
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.train()
    with torch.no_grad():
        logits = trainer.model(x)
        expected = 0.7 * float(trainer.loss_fn(logits, y, trainer.model)) \
            + 0.3 * float(distill.distillation_loss(logits, soft, 2.0))
    trainer.model.load_state_dict(student_before)  # batch norm's running statistics as before the check
    loss = trainer.step(x, y)
    assert loss == pytest.approx(expected, rel=1e-4)
    # the teachers did not learn: their weights are still the file's
    for t in trainer.teachers:
        for name, value in t.module.state_dict().items():
            assert torch.equal(value, teacher.state_dict()[name]), name


def test_a_distilled_run_moves_towards_its_teacher_and_its_card_names_the_teacher(tmp_path, frames, teacher_run):
    from NerveSegLogic.models import registry

    result = train(options(tmp_path / "student", epochs=3, teachers=[str(teacher_run)], distill_weight=1.0),
                   dataset=frames)
    card = json.loads(result.card.read_text())
    record = card["training"]["run"]["distillation"]
    digest = json.loads((teacher_run / "card.json").read_text())["weights"]["sha256"]
    assert record["teachers"][0]["sha256"] == digest and record["weight"] == 1.0
    assert any(note.startswith("Distilled from 1 teacher(s)") for note in card["training"]["notes"])
    # weight 1: the labels play no part, so the student can only have learnt the teacher's answer; it agrees with
    # the teacher on more pixels than an untrained network of the same seed does
    teacher = registry.load_from_card(distill.read_run_card(teacher_run / "card.json"),
                                      weights_path=teacher_run / "unet.safetensors")
    student = registry.load_from_card(distill.read_run_card(result.card), weights_path=result.weights)
    untrained = Trainer(options(tmp_path / "untrained", epochs=0), dataset=frames).model.eval()
    x, _ = Trainer(options(tmp_path / "batch"), dataset=frames)._batch(list(range(8)), epoch=9, first_position=0)
    with torch.no_grad():
        target = teacher(x).argmax(1)
        learnt = float((student(x).argmax(1) == target).float().mean())
        before = float((untrained(x).argmax(1) == target).float().mean())
    print(f"agreement with the teacher: untrained {before:.3f}, distilled {learnt:.3f}")
    assert learnt > before + 0.1


def test_teachers_that_cannot_teach_this_student_are_refused_by_name(tmp_path, frames, teacher_run):
    with pytest.raises(ValueError, match="differs from the student's"):
        Trainer(options(tmp_path / "a", input_size=(48, 48), teachers=[str(teacher_run)]), dataset=frames)
    with pytest.raises(ValueError, match="no weights file"):
        Trainer(options(tmp_path / "b", teachers=[str(tmp_path / "nowhere")]), dataset=frames)
    with pytest.raises(ValueError, match="distillation weight must be in"):
        Trainer(options(tmp_path / "c", teachers=[str(teacher_run)], distill_weight=0.0), dataset=frames)
    with pytest.raises(ValueError, match="is the card of unet, not of sa-unet"):
        Trainer(options(tmp_path / "d", teachers=[f"sa-unet@{teacher_run}/unet.safetensors"]), dataset=frames)


def test_resuming_with_another_teacher_is_refused(tmp_path, frames, teacher_run):
    train(options(tmp_path / "run", teachers=[str(teacher_run)]), dataset=frames)
    with pytest.raises(checkpoints.CheckpointError, match="distillation"):
        Trainer(options(tmp_path / "run", epochs=2, teachers=[str(teacher_run)], distill_weight=0.9),
                dataset=frames)


def test_the_command_line_refuses_a_missing_teacher_with_its_name(tmp_path, sample_dir, capsys):
    code = cli.main(["train", "--model", "unet", "--data", str(sample_dir), "--out", str(tmp_path / "run"),
                     "--epochs", "1", "--limit-images", "4", "--folds", "2", "--no-progress",
                     "--teacher", str(tmp_path / "missing.safetensors")])
    assert code == 2
    assert "missing.safetensors" in capsys.readouterr().err
