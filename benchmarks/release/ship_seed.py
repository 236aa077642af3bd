"""Ship a seed model trained with its paper's recipe (issue 29), its card scored by held-out fold runs.

    .venv/bin/python benchmarks/release/ship_seed.py --model smistad-unet --run runs/seed/smistad-unet-he3e-4/fold4 \\
        --heldout benchmarks/accuracy/seed_smistad_fold0.json benchmarks/accuracy/seed_smistad_fold4.json \\
        --paper-epochs 150 --report benchmarks/release/seed_smistad.md

``--run`` is a ``nerveseg train --folds 1`` folder (every frame trained on) or one of the scored fold runs (its
block never trained on; the card's ``training.run.split`` says which, and the README row "trained without block K");
its last epoch's weights are taken.
``--heldout`` are ``benchmarks/accuracy/eval_heldout.py --weights last --report`` results of fold runs with the same recipe
(each fold's last epoch scored on the block it never saw): their per-fold figures become the card's
``metrics.cross_validation`` with ``folds_scored`` saying how many of the blocks were scored. The weights go next to
the card in Resources/Models as float16 after checking that float16 keeps the run's masks on the bundled sample
(< 0.01 Dice change); the card's ``int8`` block, measured on other weights, is dropped (``auto`` then runs float32)
and a note says so, and so is a ``speed`` block timed at another input size (re-time it with
``benchmarks/speed/bench_models.py --models NAME --write-cards``). The report states the budget against the paper's
recipe.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[2]

#: The figures cross_validation carries, as eval_heldout.py names them in ``held_out``.
FIGURES = ("nerve_dice", "vessel_dice", "nerve_f1", "vessel_f1", "nerve_hd95_px", "vessel_hd95_px",
           "false_nerve_frame_rate", "nerve_presence_auc")


def fold_mean(value) -> float:
    """A held-out figure's value: eval_heldout.py stores some as {mean, std, n} over frames, some as a number."""
    return float(value["mean"] if isinstance(value, dict) else value)


def cross_validation(reports: List[Dict], folds: int) -> Dict:
    """{figure: {mean, std, n}} over the scored folds (population std, as compare_models.py), plus provenance."""
    from NerveSegLogic.train.metrics import nan_stats

    out = {
        "data": f"{reports[0]['data']}, 204 frames",
        "folds": folds,
        "folds_scored": len(reports),
        "blocks_scored": sorted(int(r["held_out_block"]["fold"]) for r in reports),
        "split": "contiguous blocks of frames sorted by name",
        "epochs": sorted({int(r["run_epochs"]) for r in reports}),
        "weights": "each fold's weights at the end of training (nothing chosen on its held-out block)",
    }
    for figure in FIGURES:
        out[figure] = nan_stats(fold_mean(r["held_out"][figure]) for r in reports)
    return out


def check_reports(model: str, paths: List[Path], folds: int) -> List[Dict]:
    """The held-out reports, each checked to be ``model``'s last-epoch weights on one of ``folds`` blocks."""
    reports = [json.loads(path.read_text(encoding="utf-8")) for path in paths]
    for path, report in zip(paths, reports):
        if report["model"] != model or report["weights"] != "last (float32)":
            raise SystemExit(f"{path}: model {report['model']!r}, weights {report['weights']!r}; expected "
                             f"{model!r} scored with --weights last")
        if int(report["held_out_block"]["folds"]) != folds:
            raise SystemExit(f"{path}: held_out_block.folds is {report['held_out_block']['folds']}, not {folds}")
    blocks = [int(r["held_out_block"]["fold"]) for r in reports]
    if len(set(blocks)) != len(blocks):
        raise SystemExit(f"{', '.join(map(str, paths))}: a block is scored twice ({blocks})")
    return reports


def readme_row(card, cv: Dict, reports: List[Dict], run_epochs: int, input_size, held=None) -> str:
    """The model's row of the README model table, in compare_models.py's columns; the CV cell names the folds scored
    and the report, since the other rows are 5-fold figures of compare_models.py's run. ``held``: the block the
    shipped weights never trained on (a fold run), else None."""
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.readme_table import origin
    from NerveSegLogic.train.crossval import format_stat as _pm  # compare_models.py's table cells

    ms = float(np.median([r["held_out"]["ms_per_frame_median"] for r in reports]))
    epochs = sorted({int(r["run_epochs"]) for r in reports})
    minutes = float(np.mean([r["run_training_s"] for r in reports])) / 60
    size = "x".join(str(v) for v in input_size)
    return (f"| {card.name} | {origin(card)} | {registry.parameter_count(card) / 1e6:.2f} M | {size} | "
            f"{_pm(cv['nerve_dice'], 2)} | {_pm(cv['vessel_dice'], 2)} | {_pm(cv['nerve_f1'], 2)} | "
            f"{_pm(cv['false_nerve_frame_rate'], 2)} | {ms:.1f} (float32) | "
            f"{epochs[0] if len(epochs) == 1 else f'{epochs[0]}-{epochs[-1]}'} epochs, {minutes:.0f} min, "
            f"{cv['folds_scored']}/{cv['folds']} folds (blocks {', '.join(map(str, cv['blocks_scored']))}) | "
            f"{run_epochs} epochs at {size}, float16" + ("" if held is None else f", trained without block {held}")
            + " |")


def replace_readme_row(readme: Path, name: str, row: str) -> None:
    """Swap ``name``'s row between compare_models.py's table markers for ``row`` (the row must be there)."""
    from NerveSegLogic.models.readme_table import README_BEGIN, README_END

    text = readme.read_text(encoding="utf-8")
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme}: the model table's markers are missing")
    head, rest = text.split(README_BEGIN, 1)
    table, tail = rest.split(README_END, 1)
    lines = table.split("\n")
    found = [i for i, line in enumerate(lines) if line.startswith(f"| {name} |") or line.startswith(f"| **{name}**")]
    if len(found) != 1:
        raise SystemExit(f"{readme}: expected one row of {name} in the model table, found {len(found)}")
    lines[found[0]] = row
    readme.write_text(head + README_BEGIN + "\n".join(lines) + README_END + tail, encoding="utf-8")


def sample_dice(segmenter, sample: Path) -> Dict[str, float]:
    """Mean Dice per class of ``segmenter`` on the bundled sample, by the project's evaluator (frames where a class's
    Dice is defined; the sample is the shipped weights' own training frames: a sanity figure, not accuracy)."""
    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.train import data as td
    from NerveSegLogic.train.evaluate import evaluate

    dataset = open_dataset(sample)
    translation = td.label_translation(segmenter.card.classes, dataset.classes, segmenter.card.name, str(sample))
    store = td.FrameStore(dataset, translation, range(len(dataset)))
    per_class = evaluate(segmenter, store, auc=False, keep_labelmaps=False).summary["per_class"]
    return {c.key: float(per_class[c.key]["dice"]) for c in segmenter.card.classes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--run", type=Path, required=True,
                        help="nerveseg train output folder: --folds 1, or one of the scored fold runs")
    parser.add_argument("--heldout", type=Path, nargs="+", required=True, help="eval_heldout.py --report files")
    parser.add_argument("--folds", type=int, default=5, help="blocks the held-out runs split the data into")
    parser.add_argument("--paper-epochs", type=int, required=True)
    parser.add_argument("--paper", default="", help="the paper's own figures on its own data, one line")
    parser.add_argument("--report", type=Path, required=True, help="Markdown report (.json beside it)")
    parser.add_argument("--sample", type=Path, default=REPO / "Resources" / "Sample")
    parser.add_argument("--drop-note", action="append", default=[], metavar="PREFIX",
                        help="leave out the card's training notes that start with PREFIX (stale ones about earlier "
                             "weights); repeatable")
    parser.add_argument("--readme", type=Path, default=None, metavar="README.md",
                        help="also rewrite this model's row of the model table (compare_models.py's markers)")
    parser.add_argument("--note", action="append", default=[], metavar="TEXT",
                        help="a training note to add after the budget (e.g. why the recipe departs from the paper's); "
                             "repeatable")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    from NerveSegLogic.train.crossval import load_run, portable  # as eval_heldout.py: the run's last epoch as a model
    from NerveSegLogic.inference.backends import OnnxBackend
    from NerveSegLogic.inference.segmenter import Segmenter
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.card import write_card

    torch.set_num_threads(2)
    card, model, record = load_run(args.run, "last")
    if card.name != args.model:
        raise SystemExit(f"{args.run}: a run of {card.name}, not {args.model}")
    setup = record["setup"]
    reports = check_reports(args.model, args.heldout, args.folds)
    if int(setup["folds"]) != 1 and (int(setup["folds"]) != args.folds
                                     or int(setup["fold"]) not in [int(r["held_out_block"]["fold"]) for r in reports]):
        raise SystemExit(f"{args.run}: trained with --folds {setup['folds']} --fold {setup['fold']}; ship a run on "
                         f"every frame (--folds 1) or one of the scored fold runs (--folds {args.folds})")

    # float16 must keep the masks: both graphs on the bundled sample
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Segmenter(card, OnnxBackend(registry.export_onnx(model, Path(tmp) / "fp32.onnx", card=card), threads=2))
        before = sample_dice(fp32, args.sample)
        half = registry.build_from_card(card)
        half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        fp16 = Segmenter(card, OnnxBackend(registry.export_onnx(half.eval(), Path(tmp) / "fp16.onnx", card=card),
                                           threads=2))
        after = sample_dice(fp16, args.sample)
    change = {k: after[k] - before[k] for k in before}
    if max(abs(v) for v in change.values()) >= 0.01:
        raise SystemExit(f"float16 changes the sample Dice by {change}; not shipping float16")

    registered = registry.card(args.model)
    weights = registered.path.parent / f"{args.model}.safetensors"
    data = registered.to_json()
    run_card = json.loads((args.run / "card.json").read_text(encoding="utf-8"))
    data["input"] = dict(data["input"], size=list(setup["input_size"]))
    training = dict(run_card["training"])
    run = dict(training.get("run") or {})
    if run.get("validation_data"):
        # The run's card describes the epoch that scored best on its held-out block; what ships is the last epoch,
        # scored in metrics.cross_validation. Say so, rather than let the run record claim the best epoch ships.
        run["validation_data"] = (run["validation_data"].split("; the weights are")[0]
                                  + f"; ``validation`` is the best epoch's ({run.get('best_epoch')}) score on them, "
                                  f"kept as the run's record: the shipped weights are the last epoch's "
                                  f"({record['epoch']}), scored in metrics.cross_validation")
        training["run"] = run
    held = ("" if not setup.get("val_names") else
            f", block {setup['fold']} of {setup['folds']} contiguous blocks ({len(setup['val_names'])} frames "
            f"{setup['val_names'][0]}..{setup['val_names'][-1]}) held out")
    training["data"] = (f"{reports[0]['data']} (see its ATTRIBUTION.md for credit and license): "
                        f"{len(setup['train_names'])} frames {setup['train_names'][0]}..{setup['train_names'][-1]} "
                        f"for training{held}; classes "
                        + ", ".join(f"{c.label}={c.key}" for c in card.classes))
    cv = cross_validation(reports, args.folds)
    minutes = [r["run_training_s"] / 60 for r in reports]
    budget = (f"Budget: {record['epoch']} of the paper's {args.paper_epochs} epochs "
              f"({100 * record['epoch'] / args.paper_epochs:.0f} % of its recipe) at {setup['input_size'][0]}x"
              f"{setup['input_size'][1]}, {record['elapsed_s'] / 60:.0f} min of training for these weights; each "
              f"held-out fold {min(minutes):.0f}-{max(minutes):.0f} min (one CPU thread each, "
              f"runs sharing the 2 cores); {cv['folds_scored']} of {args.folds} blocks scored ({', '.join(map(str, cv['blocks_scored']))}).")
    notes = [n for n in training.get("notes", [])
             if not n.startswith("Budget:") and not any(n.startswith(p) for p in args.drop_note)]
    training["notes"] = [budget] + list(args.note) + notes
    data["training"] = training
    data["metrics"] = {"cross_validation": dict(cv, input_size=list(setup["input_size"]),
                                                source=f"benchmarks/release/ship_seed.py ({args.report.as_posix().split('/')[-1]})",
                                                updated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))}
    data.pop("int8", None)
    if (data.get("speed") or {}).get("input") not in (None, list(setup["input_size"])):
        # timed at another input size: the panel would show it beside this size (re-time with bench_models.py)
        data.pop("speed")
    data["notes"] = [n for n in data.get("notes", []) if not n.startswith("INT8:")] + [
        "INT8: not measured for these weights (the earlier INT8 figures were of other weights), so `auto` runs "
        "float32 ONNX."]
    sha256 = registry.save_weights(model, weights, dtype="float16")
    data["weights"] = {"file": weights.name, "sha256": sha256, "dtype": "float16"}
    write_card(data, registered.path)
    shipped = Segmenter.from_name(args.model, backend="auto", device="cpu", threads=2)
    shipped_dice = sample_dice(shipped, args.sample)

    out = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/release/ship_seed.py " + shlex.join(portable(argv if argv is not None else sys.argv[1:])),
           "model": args.model, "run_epochs": record["epoch"], "paper_epochs": args.paper_epochs,
           "run_training_s": record["elapsed_s"], "input_size": list(setup["input_size"]),
           "recipe": setup["recipe"], "cross_validation": cv,
           "folds": [{"block": r["held_out_block"], "epochs": r["run_epochs"], "training_s": r["run_training_s"],
                      **{f: fold_mean(r["held_out"][f]) for f in FIGURES}} for r in reports],
           "float16_sample_dice_change": change, "shipped_sample_dice": shipped_dice,
           "shipped_backend": shipped.describe(), "weights_mb": weights.stat().st_size / 1e6, "paper": args.paper}
    args.report.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    lines = [f"# {args.model} trained with its paper's recipe (issue 29)", "",
             f"- command: `{out['command']}` ({out['date']})",
             f"- recipe: {setup['recipe']['loss']} loss, {setup['recipe']['optimizer']['name']} lr "
             f"{setup['recipe']['optimizer']['lr']}, batch {setup['recipe']['batch_size']}, augmentations "
             f"{', '.join(setup['recipe']['augmentations'])}; input {setup['input_size'][0]}x{setup['input_size'][1]}",
             f"- {budget[len('Budget: '):]}", "",
             "| held-out block | frames | epochs | train min | nerve Dice | vessel Dice | nerve F1 | vessel F1 | "
             "false-nerve frames | nerve presence AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        h, b = r["held_out"], r["held_out_block"]
        lines.append(f"| {b['fold']} ({b['first_last'][0]}..{b['first_last'][1]}) | {h['frames']} | {r['run_epochs']} | "
                     f"{r['run_training_s'] / 60:.0f} | {fold_mean(h['nerve_dice']):.3f} | {fold_mean(h['vessel_dice']):.3f} | "
                     f"{fold_mean(h['nerve_f1']):.3f} | {fold_mean(h['vessel_f1']):.3f} | "
                     f"{h['false_nerve_frame_rate']:.3f} | {h['nerve_presence_auc']:.3f} |")
    lines.append(f"| mean ± std ({cv['folds_scored']} folds) | | | | "
                 + " | ".join(f"{cv[f]['mean']:.3f} ± {cv[f]['std']:.3f}" for f in
                              ("nerve_dice", "vessel_dice", "nerve_f1", "vessel_f1", "false_nerve_frame_rate",
                               "nerve_presence_auc")) + " |")
    lines += ["", f"Shipped: {weights.relative_to(REPO)} ({out['weights_mb']:.1f} MB float16, {shipped.describe()}); "
                  f"float16 changed the bundled sample's Dice by "
                  + ", ".join(f"{k} {v:+.4f}" for k, v in change.items())
                  + "; the shipped file on the sample (its own training frames, a sanity figure, not accuracy): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in shipped_dice.items()) + "."]
    if args.paper:
        lines += ["", f"The paper, on its own data (not usgra-seg, not comparable fold for fold): {args.paper}"]
    args.report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    if args.readme:
        row = readme_row(registry.card(args.model), cv, reports, record["epoch"], setup["input_size"],
                         None if int(setup["folds"]) == 1 else int(setup["fold"]))
        replace_readme_row(args.readme, args.model, row)
        print(f"{args.readme}: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
