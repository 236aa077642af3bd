"""Render the README's pictures from a scene that ``nerveseg demo`` saved, reading only the saved files.

    .venv/bin/nerveseg demo --out nerveseg-demo
    .venv/bin/python docs/make_pictures.py nerveseg-demo            # writes docs/demo-scene.png, docs/screenshot-live.png

The pictures show what 3D Slicer loads from the scene: the recorded image sequence (``.seq.nrrd``) with the
recorded segmentation sequence (``.seq.mrb``) drawn over it in each segment's own colour and name, so they also
check that the saved files (not just the demo's in-memory results) hold the frames and masks.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_out", type=Path, help="the folder nerveseg demo wrote (holds scene/NerveSeg.mrml)")
    parser.add_argument("--out", type=Path, default=HERE, help="where the PNGs go (default: docs/)")
    parser.add_argument("--count", type=int, default=8, help="frames in the contact sheet (default: 8)")
    args = parser.parse_args()

    import cv2

    from NerveSegLogic.annotate.importers import read_sequence
    from NerveSegLogic.classes import canonical_key, segment_class
    from NerveSegLogic.imaging.overlay import contact_sheet, render_overlay
    from NerveSegLogic.scene.readback import read_saved_scene, read_segmentation_sequence_items

    mrml = args.demo_out / "scene" / "NerveSeg.mrml"
    scene = read_saved_scene(mrml)
    files = scene.referenced_files()
    image_seq = next((f for f in files if f.name.endswith("_image_sequence.seq.nrrd")), None)
    seg_seq = next((f for f in files if f.name.endswith(".seq.mrb")), None)
    if image_seq is None or seg_seq is None:
        raise SystemExit(f"{mrml}: expected an image sequence (.seq.nrrd) and a segmentation sequence (.seq.mrb) "
                         f"among its files, found: {', '.join(f.name for f in files)}")

    frames = read_sequence(image_seq).frames  # (items, rows, columns), as the annotation importer reads it
    items = read_segmentation_sequence_items(seg_seq)
    if len(items) != len(frames):
        raise SystemExit(f"{mrml}: {len(frames)} recorded images but {len(items)} recorded segmentations")

    first = items[0]
    # name, label value and colour as saved; the class catalogue only supplies the terminology fields
    classes = [replace(segment_class(canonical_key(s.id), s.label_value), name=s.name, color=tuple(s.color))
               for s in first.segments]
    pictures, present = [], []
    chosen = np.linspace(0, len(frames) - 1, min(args.count, len(frames))).round().astype(int)
    for index in chosen:
        labelmap = items[index].labelmap(classes)
        image = frames[index]
        if labelmap.shape != image.shape:
            raise SystemExit(f"{seg_seq}: item {index} is {labelmap.shape}, its image {image.shape}")
        pictures.append(render_overlay(image, labelmap, classes, caption=f"recorded item {index}"))
        present.append(len(set(np.unique(labelmap).tolist()) - {0}))
    args.out.mkdir(parents=True, exist_ok=True)
    sheet = args.out / "demo-scene.png"
    cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(pictures, columns=4, width=320), cv2.COLOR_RGB2BGR))
    single = args.out / "screenshot-live.png"
    best = int(np.argmax(present))  # the first picture showing the most classes
    cv2.imwrite(str(single), cv2.cvtColor(pictures[best], cv2.COLOR_RGB2BGR))
    print(f"{sheet}: {len(pictures)} of {len(frames)} recorded frames; {single}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
