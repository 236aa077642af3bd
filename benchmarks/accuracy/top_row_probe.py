"""Why a shipped model's top input row keeps a class whatever the image (smistad-unet's red strip, issue 29).

For the shipped weights of a semantic model (through ``registry.load``, float32 torch, as training sees it) on
real usgra-seg frames, a black frame and a random one, the script reports per input row: the mean probability of
each class, the mean logit of each class and the logit gap (largest minus smallest), and the size of the gradient
of the card's own training loss with respect to the logits at that row against the frame's own labels. A row whose
class is wrong on every frame while its loss gradient is many orders of magnitude below that of the rest of the
frame is held by a saturated softmax: training cannot move it back once it tips.

    .venv/bin/python benchmarks/accuracy/top_row_probe.py --model smistad-unet --data ../shared/data/usgra-seg \\
        --report benchmarks/accuracy/top_row_probe.md

It runs in seconds on one CPU thread; the frames are every 20th from the 60th (the fold-0 run trained on them).
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

#: Rows reported: the top three, the middle and the bottom one (input pixels).
ROWS = ("0", "1", "2", "mid", "last")


def _row(name: str, height: int) -> int:
    return {"mid": height // 2, "last": height - 1}.get(name, int(name) if name.isdigit() else 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smistad-unet")
    parser.add_argument("--data", type=Path, required=True, help="usgra-seg folder")
    parser.add_argument("--first", type=int, default=60, help="first frame index (sorted by name)")
    parser.add_argument("--step", type=int, default=20)
    parser.add_argument("--count", type=int, default=7)
    parser.add_argument("--report", type=Path, required=True, help="Markdown report (.json beside it)")
    args = parser.parse_args(argv)

    import torch

    from NerveSegLogic.datasets.readers import open_dataset
    from NerveSegLogic.imaging import placement as pp
    from NerveSegLogic.models import registry
    from NerveSegLogic.train.losses import semantic_loss

    torch.set_num_threads(1)
    card = registry.card(args.model)
    if card.task != "semantic":
        raise SystemExit(f"{args.model}: a {card.task} model; the probe reads a semantic model's logits")
    model = registry.load(args.model).float().eval()
    spec = card.input
    dataset = open_dataset(args.data)
    names = dataset.names()
    picked = [args.first + k * args.step for k in range(args.count) if args.first + k * args.step < len(names)]
    x = torch.from_numpy(np.stack([pp.preprocess(dataset[i].image, spec)[0] for i in picked]))
    target = torch.from_numpy(np.stack([pp.place_mask(dataset[i].mask, spec).astype(np.int64) for i in picked]))
    classes = ["background"] + [c.key for c in card.classes]

    logits = model(x).detach().requires_grad_(True)
    loss = semantic_loss(card.training["recipe"]["loss"])(logits, target, model)
    loss.backward()
    gradient = logits.grad.abs().mean(dim=(0, 1, 3))  # per row
    probabilities = torch.softmax(logits.detach(), dim=1)
    height = spec.height
    rows: Dict[str, Dict] = {}
    for name in ROWS:
        r = _row(name, height)
        rows[name] = {
            "row": r,
            "target_classes": sorted({classes[int(v)] for v in target[:, r].unique()}),
            "probability": {c: round(float(probabilities[:, k, r].mean()), 4) for k, c in enumerate(classes)},
            "logit": {c: round(float(logits.detach()[:, k, r].mean()), 2) for k, c in enumerate(classes)},
            "logit_gap": round(float((logits.detach()[:, :, r].max(1).values
                                      - logits.detach()[:, :, r].min(1).values).mean()), 2),
            "loss_gradient": float(gradient[r]),
        }
    others = {}
    with torch.no_grad():
        for label, image in (("black", np.zeros((512, 534), np.uint8)),
                             ("random", np.random.default_rng(0).integers(0, 256, (512, 534), dtype=np.uint8))):
            p = torch.softmax(model(torch.from_numpy(pp.preprocess(image, spec)[0])[None]), dim=1)[0]
            others[label] = {name: {c: round(float(p[k, _row(name, height)].mean()), 4) for k, c in enumerate(classes)}
                             for name in ROWS}
    out = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/accuracy/top_row_probe.py " + shlex.join(argv if argv is not None
                                                                                  else sys.argv[1:]),
           "model": args.model, "weights_sha256": card.weights["sha256"], "input": [spec.height, spec.width],
           "frames": [names[i] for i in picked], "loss": card.training["recipe"]["loss"],
           "loss_value": float(loss.detach()),
           "rows": rows, "black_and_random_frames": others}
    args.report.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    lines = [f"# {args.model}: what holds its top input row (issue 29)", "",
             f"- command: `{out['command']}` ({out['date']})",
             f"- weights: shipped, sha256 {card.weights['sha256'][:12]}..., float32 torch; input {spec.height}x"
             f"{spec.width}; frames {', '.join(out['frames'])} (usgra-seg, training frames of the shipped run)",
             f"- gradient: mean |d loss / d logit| of the card's `{out['loss']}` loss against the frames' labels "
             f"(loss {out['loss_value']:.4f})", "",
             "| row | labels there | " + " | ".join(f"p({c})" for c in classes) + " | "
             + " | ".join(f"logit {c}" for c in classes) + " | logit gap | loss gradient |",
             "|---|---|" + "---|" * (2 * len(classes) + 2)]
    for name, row in rows.items():
        lines.append(f"| {name} ({row['row']}) | {', '.join(row['target_classes'])} | "
                     + " | ".join(f"{row['probability'][c]:.3f}" for c in classes) + " | "
                     + " | ".join(f"{row['logit'][c]:.1f}" for c in classes)
                     + f" | {row['logit_gap']:.1f} | {row['loss_gradient']:.1e} |")
    lines += ["", "Black and random frames, mean probability per row:", "",
              "| frame | row | " + " | ".join(f"p({c})" for c in classes) + " |",
              "|---|---|" + "---|" * len(classes)]
    for label, per_row in others.items():
        for name, p in per_row.items():
            lines.append(f"| {label} | {name} | " + " | ".join(f"{p[c]:.3f}" for c in classes) + " |")
    lines.append("")
    args.report.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
