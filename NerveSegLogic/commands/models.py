"""``nerveseg models``: list the registered models, show a card, export a semantic model to ONNX."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
The model zoo: every registered model has a card in Resources/Models/<name>.json (architecture, paper, classes,
input size, weights and their sha256, training recipe, measured metrics and speed).

  list          one line per model: name, task, classes, parameters, weights present, default, CPU ms/frame
                (--json: a list of objects with name, task, classes, parameters, weights, default,
                cpu_ms_per_frame, ...)
  info NAME     the card as JSON
  export-onnx   a semantic model as ONNX: input "image" (B,C,H,W) float32, output "probabilities" (B,K,H,W),
                dynamic batch; uses the card's trained weights (--allow-random-weights exports an untrained
                model, e.g. to test a deployment)
"""

EPILOG = """\
examples:
  nerveseg models list
  nerveseg models list --json
  nerveseg models info smistad-unet
  nerveseg models export-onnx smistad-unet --out smistad-unet.onnx
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("models", help="list models, show a model card, export to ONNX",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")
    listing = actions.add_parser("list", help="the registered models", description="One line per registered model.")
    listing.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    info = actions.add_parser("info", help="print a model card", description="Print a model card as JSON.")
    info.add_argument("name", help="registered model name (see 'nerveseg models list')")
    export = actions.add_parser("export-onnx", help="export a semantic model to ONNX",
                                description="Export a semantic model to ONNX (softmax probabilities output).")
    export.add_argument("name", help="registered model name (semantic models only)")
    export.add_argument("--out", required=True, help="output .onnx file")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    export.add_argument("--allow-random-weights", action="store_true",
                        help="export with random initial weights when the card ships none (default: refuse)")
    parser.set_defaults(func=run, models_parser=parser)


def run(args) -> int:
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.weights import WeightsError

    action = getattr(args, "models_action", None)
    if action is None:
        args.models_parser.print_help()
        return 2
    try:
        if action == "list":
            rows = [registry.describe(card) for card in registry.cards()]
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows)
            return 0
        if action == "info":
            card = registry.card(args.name)
            print(json.dumps(card.to_json(), indent=2, ensure_ascii=False))
            return 0
        if action == "export-onnx":
            path = registry.export_onnx(args.name, args.out, opset=args.opset,
                                        allow_random_weights=args.allow_random_weights)
            print(f"wrote {path}")
            return 0
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    except (ValueError, WeightsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled models action {action!r}")


def _print_table(rows) -> None:
    header = ("name", "task", "classes", "parameters", "weights", "default", "cpu ms/frame")
    lines = [header]
    for row in rows:
        ms = row["cpu_ms_per_frame"]
        lines.append((row["name"], row["task"], ",".join(row["classes"]), f"{row['parameters'] / 1e6:.2f} M",
                      "yes" if row["weights"] else "no", "*" if row["default"] else "",
                      f"{ms:.1f}" if isinstance(ms, (int, float)) else "-"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip())
