"""Release tooling for model weights: which stay in the repository, which are release downloads, and checks.

The repository must stay under the Extensions Index's 100 MB, so only the weights the offline paths need stay in it
(:data:`IN_REPOSITORY`: the default live model, which ``make demo`` and the tests run; the default promptable
model, LiteMedSAM tuned on nerve-block ultrasound, which the annotation tools and their tests use; and the seed
models trained with their papers' recipes (issue 29), so that a fresh clone's shipped-models test segments with
them). Every other card names its weights' release address (``weights.url``, ``weights.size``) and users run
``nerveseg models fetch``; the released LiteMedSAM weights (``litemedsam``, float32, 39 MB) are one of those since
the tuned model ships.

    # 1. put each card's weights file into a folder to upload as the release's assets (found next to the card, in
    #    the user models folder, or in this repository's git history), with SHA256SUMS:
    python benchmarks/release/release_weights.py stage --out dist/models-v1
    # 2. write the address and size into every card whose weights are a release download:
    python benchmarks/release/release_weights.py publish-cards --base-url \\
        https://github.com/NerveSeg/SlicerNerveSeg/releases/download/models-v1
    # 3. after uploading: fetch every model from its address and run the shipped-model test on all of them:
    python benchmarks/release/release_weights.py check

``check`` is what a release runs; the test suite itself only checks the models whose weights are present.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]

from NerveSegLogic.models import registry  # noqa: E402
from NerveSegLogic.models.card import write_card  # noqa: E402
from NerveSegLogic.models.fetch import fetch_weights  # noqa: E402

#: Cards whose weights stay in the repository (offline demo, tests and annotation); all others are release downloads.
IN_REPOSITORY = ("effnet2-unet", "litemedsam-nerve", "smistad-unet", "sa-unet", "ragcm")


def find_weights(card) -> Optional[Path]:
    """The card's weights file with the card's sha256: next to the card, fetched, or written out of git history."""
    if card.has_weights:
        return card.weights_path
    relative = (card.path.parent / card.weights["file"]).resolve().relative_to(ROOT)
    revisions = subprocess.run(["git", "-C", str(ROOT), "log", "--all", "--format=%H", "--", str(relative)],
                               capture_output=True, text=True, check=True).stdout.split()
    for revision in revisions:
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{relative.as_posix()}"],
                              capture_output=True)
        if blob.returncode == 0 and hashlib.sha256(blob.stdout).hexdigest() == card.weights["sha256"]:
            handle, temporary = tempfile.mkstemp(suffix=".safetensors")
            with os.fdopen(handle, "wb") as stream:
                stream.write(blob.stdout)
            return Path(temporary)
    return None


def stage(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    sums, missing = [], []
    for card in registry.cards(tasks=None):
        if not card.weights or card.name in IN_REPOSITORY:
            continue
        found = find_weights(card)
        if found is None:
            missing.append(f"{card.name} ({card.weights['file']}, sha256 {card.weights['sha256']})")
            continue
        shutil.copyfile(found, out / card.weights["file"])
        sums.append(f"{card.weights['sha256']}  {card.weights['file']}")
        print(f"staged {card.weights['file']} ({(out / card.weights['file']).stat().st_size / 1e6:.1f} MB)")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    if missing:
        print("not found anywhere (train or fetch them first): " + "; ".join(missing), file=sys.stderr)
        return 1
    return 0


def publish_cards(base_url: str) -> int:
    for card in registry.cards(tasks=None):
        if not card.weights or card.name in IN_REPOSITORY:
            continue
        found = find_weights(card)
        weights = dict(card.weights)
        weights["url"] = f"{base_url.rstrip('/')}/{weights['file']}"
        if found is not None:
            weights["size"] = found.stat().st_size
        elif "size" not in weights:
            print(f"{card.name}: weights not found; url set, size unknown", file=sys.stderr)
        data = card.to_json()
        data["weights"] = weights
        write_card(data, card.path)
        print(f"{card.name}: {weights['url']}")
    return 0


def check() -> int:
    failures = []
    for card in registry.cards(tasks=None):
        if not card.weights:
            continue
        if card.name in IN_REPOSITORY:
            beside = card.path.parent / card.weights["file"]
            if not beside.is_file():
                failures.append(f"{card.name}: its weights must be in the repository ({beside})")
            continue
        if not card.weights_url:
            failures.append(f"{card.name}: weights neither in the repository nor published (no weights.url)")
            continue
        try:
            fetch_weights(card)
        except Exception as error:  # noqa: BLE001 - report every model, then fail
            failures.append(f"{card.name}: {error}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    from NerveSegLogic.models.user_models import user_models_dir

    environment = dict(os.environ, NERVESEG_TEST_MODELS_DIR=str(user_models_dir()))  # the fetched ones too
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "Testing" / "test_shipped_models_segment.py")],
                          cwd=ROOT, env=environment)
    return 1 if failures or done.returncode else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    staging = actions.add_parser("stage", help="copy the release's weights files into a folder, with SHA256SUMS")
    staging.add_argument("--out", type=Path, required=True)
    publishing = actions.add_parser("publish-cards", help="write weights.url and weights.size into the cards")
    publishing.add_argument("--base-url", required=True)
    actions.add_parser("check", help="fetch every released model and run the shipped-model test on all of them")
    args = parser.parse_args()
    if args.action == "stage":
        return stage(args.out)
    if args.action == "publish-cards":
        return publish_cards(args.base_url)
    return check()


if __name__ == "__main__":
    sys.exit(main())
