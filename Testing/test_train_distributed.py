"""Training on several processes: real torchrun launches (gloo on this machine's CPUs) of ``python -m
NerveSegLogic.train`` take the single-process steps, resume after a stop, record the world size in the card, and
refuse a process count that does not divide the batch.

Equality with one process, and its tolerance. Two processes, each with one frame of a global batch of 2 (8 frames,
2 epochs: 8 steps), end with the weights of the single-process run on the same global batch and seed to within
1e-6 in every tensor (measured: 1.2e-7, float32 rounding: the batch-norm statistics and the averaged gradients are
summed in another order). The test card is ``unet``'s with a small build, GELU and SGD with momentum, because
rounding differences are amplified by two things in the card's own recipe, between any two runs that round
differently (another thread count, another CPU) as much as between 1 and 2 processes:

- ReLU: a unit within ~1e-7 of the kink can switch sides, which changes that step's gradient for the pixels it
  feeds (seen once, at step 2, while the batch-norm statistics were still summed in float32: gradients then
  differed by up to 5 %, weights by 1e-3). With ReLU and SGD, 6 seeds x 8 steps ended within 1.8e-7; a smooth
  activation has no kink, so the test cannot flip with the platform.
- Adam divides every gradient by its own magnitude, so a gradient that is zero in exact arithmetic (the bias of a
  convolution followed by batch norm, which the normalisation cancels) is rounding noise turned into a step of
  +-lr. With the card's recipe (Adam, ReLU) the 2-process weights equal the single-process ones to 7e-8..4.4e-6
  (6 seeds x 8 steps) except those 6 biases (3.9e-3..6.1e-3 after 8 steps at lr 1e-3); two single-process runs with 1
  and 2 threads differ the same way (4.0e-3 in those biases after 4 steps, 6e-8 elsewhere).

Without synchronised batch norm (``--no-sync-batchnorm``: each process normalises with its own frame) the same run
ends 5.8e-3 away (2.3e-2 with ReLU): the reason the conversion is the default.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from NerveSegLogic import cli  # noqa: E402
from NerveSegLogic.train import data as td  # noqa: E402
from NerveSegLogic.train import distributed  # noqa: E402
from NerveSegLogic.train.checkpoints import CHECKPOINT_JSON  # noqa: E402
from NerveSegLogic.train.loop import TrainOptions, train  # noqa: E402

from test_train_loop import write_frames  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-6  # max abs difference of any weight or buffer after STEPS steps (measured 1.2e-7)
STEPS = 8  # 8 frames, global batch 2, 2 epochs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A Resources folder with ``unet-tiny`` (unet's card: 8-16-32 channels, one residual unit, GELU, SGD with
    momentum, random weights) and an 8-frame image/mask folder."""
    root = tmp_path_factory.mktemp("distributed")
    models = root / "Resources" / "Models"
    models.mkdir(parents=True)
    card = json.loads((REPO / "Resources" / "Models" / "unet.json").read_text(encoding="utf-8"))
    for measured in ("metrics", "int8", "speed"):
        card.pop(measured, None)
    card.update(name="unet-tiny", weights=None, summary="unet's architecture, small, for the distributed tests")
    card["build"] = dict(card["build"], channels=[8, 16, 32], num_res_units=1, act="gelu")
    card["training"]["recipe"]["optimizer"] = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}
    (models / "unet-tiny.json").write_text(json.dumps(card), encoding="utf-8")
    (root / "Resources" / "Sample").symlink_to(REPO / "Resources" / "Sample")
    write_frames(root / "data", count=8)
    return root


def arguments(tiny: Path, out: Path, *extra: str, batch: int = 2):
    return ["--model", "unet-tiny", "--data", str(tiny / "data"), "--format", "folder",
            "--map", "1=nerve,2=blood_vessel", "--input-size", "32", "32", "--folds", "1", "--epochs", "2",
            "--batch-size", str(batch), "--threads", "1", "--no-progress", "--out", str(out), *extra]


def torchrun(tiny: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m NerveSegLogic.train ARGS``."""
    env = dict(os.environ, NERVESEG_RESOURCES=str(tiny / "Resources"), OMP_NUM_THREADS="1")
    for name in distributed.TORCHRUN_VARIABLES:
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(processes), "-m", "NerveSegLogic.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def read_weights(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_two_processes_take_the_single_process_steps_resume_after_a_stop_and_say_so_in_the_card(tiny, tmp_path):
    single = train(TrainOptions(model="unet-tiny", data=tiny / "data", data_format="folder",
                                mapping={1: "nerve", 2: "blood_vessel"}, out=tmp_path / "single", epochs=2,
                                input_size=(32, 32), folds=1, batch_size=2, threads=1, progress=False,
                                cards_dir=tiny / "Resources" / "Models"))
    assert single.global_step == STEPS

    out = tmp_path / "two"
    # stopped by the time limit after at most the first epoch (its checkpoint and learning curve take longer)
    stopped = torchrun(tiny, *arguments(tiny, out, "--limit-minutes", "0.005"))
    assert stopped.returncode == 0, stopped.stderr[-4000:]
    assert stopped.stdout.count("time limit of 0.005 minutes") == 1, stopped.stdout  # rank 0 alone reports
    record = json.loads((out / CHECKPOINT_JSON).read_text())
    assert 0 < record["global_step"] < STEPS, record["global_step"]

    resumed = torchrun(tiny, *arguments(tiny, out))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert resumed.stdout.count(f"finished: 2 epochs, {STEPS} steps") == 1, resumed.stdout

    ours, theirs = read_weights(out / "unet-tiny.safetensors"), read_weights(single.weights)
    assert ours.keys() == theirs.keys()
    differences = {key: float((ours[key].double() - theirs[key].double()).abs().max()) for key in ours}
    worst = max(differences, key=differences.get)
    print(f"2 processes (stopped at step {record['global_step']}, resumed) vs 1 process after {STEPS} steps: "
          f"max abs difference {differences[worst]:.2g} ({worst})")
    assert differences[worst] <= TOLERANCE, f"{worst} differs by {differences[worst]:.3g}"

    card = json.loads((out / "card.json").read_text())
    run = card["training"]["run"]
    assert run["world_size"] == 2 and run["steps"] == STEPS and run["stop_reason"] == "finished"
    assert run["distributed"]["backend"] == "gloo"
    assert (run["distributed"]["per_process_batch"], run["distributed"]["global_batch"]) == (1, 2)
    assert run["distributed"]["batch_norm"].startswith("synchronised over the 2 processes")
    assert [s["world_size"] for s in run["distributed"]["sessions"]] == [2]
    assert sum(note.startswith("Distributed over 2 processes (torchrun, gloo)") for note in
               card["training"]["notes"]) == 1
    # the loss of each epoch is the loss of the global batches, as one process computes it
    history = json.loads((out / CHECKPOINT_JSON).read_text())["history"]
    assert np.allclose([h["train_loss"] for h in history], [h["train_loss"] for h in single.history], rtol=1e-5)


def test_a_process_count_that_does_not_divide_the_batch_is_refused_with_the_numbers(tiny, tmp_path):
    out = tmp_path / "run"
    result = torchrun(tiny, *arguments(tiny, out, batch=3))
    assert result.returncode != 0
    message = result.stderr
    assert message.count("does not divide") == 1, message  # told once, by rank 0
    assert ("the global batch of 3 frames (--batch-size) does not divide among the 2 processes torchrun started "
            "(WORLD_SIZE 2): each would train on 1.5 frames") in message
    assert "--batch-size 2 or 4" in message and "(1 or 3;" in message
    assert not out.exists()  # refused before anything was read or written


def test_distributed_without_torchrun_names_the_torchrun_commands(tiny, tmp_path, monkeypatch, capsys):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    argv = ["train", *arguments(tiny, tmp_path / "run"), "--distributed"]
    monkeypatch.setattr(sys, "argv", ["nerveseg", *argv])
    assert cli.main(argv) == 2
    message = capsys.readouterr().err
    assert "this process was not started by it" in message
    assert "torchrun --nproc-per-node N -m NerveSegLogic.train --model unet-tiny" in message
    assert "torchrun --nnodes M --nproc-per-node N --node-rank NODE_RANK --rdzv-backend c10d" in message
    assert "--distributed" not in message.split("run:", 1)[1]
    assert not (tmp_path / "run").exists()

    # started by torchrun but without --distributed, 'nerveseg train' would have N processes train alone into --out
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)
    assert cli.main(argv[:-1]) == 2
    assert "without --distributed" in capsys.readouterr().err


def test_the_sharded_epoch_is_the_single_process_epoch_cut_among_the_processes():
    store = td.FrameStore.__new__(td.FrameStore)
    blank = np.zeros((4, 4), np.uint8)
    store.frames = [td.Frame(str(i), blank, blank) for i in range(7)]
    for world, batch in ((1, 4), (2, 4), (4, 4), (3, 6)):
        shards = [td.ShardedEpoch(store, range(7), seed=3, sampling="uniform", global_batch=batch, rank=rank,
                                  world_size=world) for rank in range(world)]
        order = td.epoch_order(store, range(7), 3, 5, "uniform")  # every rank derives it from seed and epoch
        assert shards[-1].order(5) == order
        # over the ranks, every position of the single-process epoch exactly once; a frame keeps its position
        # (and with it its augmentation, a function of seed, epoch and position)
        assert sorted(p for shard in shards for p in shard.positions(5)) == list(range(7))
        for shard in shards:
            shard.set_epoch(5)
            assert list(shard) == [order[p] for p in shard.positions(5)]
        # each step's slices are the single-process batch
        for step, (position, batch_frames, _, _) in enumerate(shards[0].batches(5)):
            slices = [order[position + lo:position + hi] for lo, hi in
                      (shard.shard(len(batch_frames)) for shard in shards)]
            assert sum(slices, []) == order[position:position + batch] == batch_frames
    # the last batch of 7 frames in batches of 4 holds 3: ranks take 2 and 1 (of 2), or 1, 1, 1 and none (of 4)
    assert td.ShardedEpoch(store, range(7), 0, "uniform", 4, 0, 2).shard_sizes(3) == [2, 1]
    assert td.ShardedEpoch(store, range(7), 0, "uniform", 4, 0, 4).shard_sizes(3) == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="does not divide among 2 processes"):
        td.ShardedEpoch(store, range(7), 0, "uniform", 3, 0, 2)


def test_the_batch_split_names_the_batch_the_processes_and_what_would_divide():
    assert distributed.split_batch(8, 4) == 2 and distributed.split_batch(5, 1) == 5
    with pytest.raises(distributed.BatchSplitError) as caught:
        distributed.split_batch(6, 4, "the recipe's batch_size")
    message = str(caught.value)
    assert "the global batch of 6 frames (the recipe's batch_size) does not divide among the 4 processes" in message
    assert "each would train on 1.5 frames" in message
    assert "--batch-size 4 or 8" in message and "(1, 2, 3 or 6;" in message
