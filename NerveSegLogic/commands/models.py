"""``nerveseg models``: list the registered models, show a card, export a semantic model to ONNX."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
The model zoo: every registered model has a card in Resources/Models/<name>.json (architecture, paper, classes,
input size, weights and their sha256, training recipe, measured metrics and speed).

  list          one line per model: name, task, classes, parameters, weights (yes: on this machine; fetch: a
                release download, see fetch; no: none trained), default, CPU ms/frame
                (--json: a list of objects with name, task, classes, parameters, weights, default,
                cpu_ms_per_frame, ...)
  info NAME     the card as JSON
  add RUN_DIR   register a training run (nerveseg train --init ...) as a site model, by --name or the folder's
                name, in the user models folder; from then on every command and the Slicer panel accept its name
  remove NAME   remove a site model (shipped models cannot be removed)
  fetch NAME... download released weights into the user models folder (sha256-checked, resumable; --all for
                every model; --from FILE installs a copy obtained another way, e.g. on an offline machine)
  export-onnx   a semantic model as ONNX: input "image" (B,C,H,W) float32, output "probabilities" (B,K,H,W),
                dynamic batch; uses the card's trained weights (--allow-random-weights exports an untrained
                model, e.g. to test a deployment)
"""

EPILOG = """\
examples:
  nerveseg models list
  nerveseg models list --json
  nerveseg models info smistad-unet
  nerveseg models add runs/site-axillary --name axillary-site
  nerveseg models remove axillary-site
  nerveseg models fetch unet
  nerveseg models fetch --all
  nerveseg models fetch unet --from /media/usb/unet.safetensors
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
    adding = actions.add_parser(
        "add", help="register a training run as a site model",
        description="Register a training run (a 'nerveseg train' output folder: card.json and its weights, "
                    "sha256-checked) as a site model in the user models folder "
                    f"({_user_folder_hint()}; NERVESEG_MODELS_DIR overrides it). Shipped models are never changed.")
    adding.add_argument("run_dir", metavar="RUN_DIR", help="the training run's output folder")
    adding.add_argument("--name", help="the name to pick it by (default: the folder's name)")
    adding.add_argument("--replace", action="store_true", help="replace a site model of the same name")
    removing = actions.add_parser("remove", help="remove a site model",
                                  description="Remove a site model from the user models folder.")
    removing.add_argument("name", help="site model name (see 'nerveseg models list')")
    fetch = actions.add_parser(
        "fetch", help="download released weights (sha256-checked, resumable)",
        description="Download the released weights of models into the user models folder "
                    f"({_user_folder_hint()}; NERVESEG_MODELS_DIR overrides it). The file is checked against the "
                    "card's sha256 before it is used; a cut download resumes when run again.")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="model names (see 'nerveseg models list')")
    fetch.add_argument("--all", action="store_true", help="every model whose card names released weights")
    fetch.add_argument("--from", dest="from_file", metavar="FILE",
                       help="install this file (checked against the card's sha256) instead of downloading")
    fetch.add_argument("--force", action="store_true", help="download again even when the weights are present")
    fetch.add_argument("--retries", type=int, default=3, help="tries after a cut connection (default: 3)")
    parser.set_defaults(func=run, models_parser=parser)


def _user_folder_hint() -> str:
    # The package's own imports inside functions here are lazy on purpose: registering a subcommand stays cheap: what
    # it runs loads only when it runs.
    from NerveSegLogic.models.user_models import user_models_dir

    return str(user_models_dir())


def run(args) -> int:
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.fetch import FetchError
    from NerveSegLogic.models.weights import WeightsError

    action = getattr(args, "models_action", None)
    if action is None:
        args.models_parser.print_help()
        return 2
    try:
        if action == "list":
            from NerveSegLogic.models import sites

            rows = [registry.describe(card) for card in registry.cards()]
            health = sites.status()
            for row in rows:
                row["site"] = row["name"] in health
                row["status"] = health.get(row["name"], "ok")
            listed = {row["name"] for row in rows}
            broken = {name: problem for name, problem in health.items() if name not in listed}
            if args.json:
                rows += [{"name": name, "site": True, "status": problem} for name, problem in broken.items()]
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows)
                for row in rows:
                    if row["status"] != "ok":
                        print(f"warning: site model {row['name']}: {row['status']} (it will not load; add it "
                              f"again or remove it)", file=sys.stderr)
                for name, problem in broken.items():
                    print(f"warning: site model {name} not listed: {problem}", file=sys.stderr)
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
        if action == "fetch":
            return _fetch(args)
        if action == "add":
            from NerveSegLogic.models import sites

            folder = sites.add(args.run_dir, args.name, shipped_names=_shipped_names(), replace=args.replace)
            added = registry.card(folder.name)
            print(f"added site model {added.name} ({folder}); base model "
                  f"{(added.raw.get('site') or {}).get('base_model') or 'not recorded'}; pick it with "
                  f"--model {added.name} or in the Slicer panel")
            return 0
        if action == "remove":
            from NerveSegLogic.models import sites

            print(f"removed site model {args.name} ({sites.remove(args.name)})")
            return 0
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    except (ValueError, WeightsError, FileNotFoundError, FetchError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled models action {action!r}")


def _shipped_names():
    from NerveSegLogic.models import registry
    from NerveSegLogic.resources import models_dir

    return registry.names(models_dir(), tasks=None)


def _fetch(args) -> int:
    from NerveSegLogic.models import registry
    from NerveSegLogic.models.fetch import fetch_weights, install_from_file

    if args.all and args.names:
        raise ValueError("give model names or --all, not both")
    if args.from_file and (args.all or len(args.names) != 1):
        raise ValueError("--from FILE installs one model's weights: give exactly one NAME")
    if args.all:
        chosen = [card for card in registry.cards(tasks=None) if card.weights]
    elif args.names:
        chosen = [registry.card(name) for name in args.names]
    else:
        raise ValueError("name the models to fetch (see 'nerveseg models list'), or --all")
    for card in chosen:
        if args.from_file:
            path = install_from_file(card, args.from_file, force=args.force)
            print(f"{card.name}: installed {path} (sha256 checked)")
            continue
        if card.has_weights and not args.force:
            print(f"{card.name}: present at {card.weights_path}")
            continue
        with _progress_bar(card) as progress:
            path = fetch_weights(card, force=args.force, retries=args.retries, progress=progress)
        print(f"{card.name}: fetched {path} ({path.stat().st_size / 1e6:.1f} MB, sha256 checked)")
    return 0


class _progress_bar:
    """A tqdm bar (on stderr) fed by fetch_weights' progress callback."""

    def __init__(self, card):
        self.card, self.bar = card, None

    def __enter__(self):
        return self

    def __call__(self, done, total):
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=self.card.name, file=sys.stderr, leave=True)
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        return False


def _print_table(rows) -> None:
    header = ("name", "task", "classes", "parameters", "weights", "default", "cpu ms/frame", "site model of")
    lines = [header]
    for row in rows:
        ms = row["cpu_ms_per_frame"]
        weights = "yes" if row["weights"] else ("fetch" if row.get("weights_url") else "no")
        if row.get("status", "ok") != "ok":
            weights = "BROKEN"
        lines.append((row["name"], row["task"], ",".join(row["classes"]), f"{row['parameters'] / 1e6:.2f} M",
                      weights, "*" if row["default"] else "",
                      f"{ms:.1f}" if isinstance(ms, (int, float)) else "-",
                      (row.get("base_model") or "?") if row.get("site") else ""))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip())
