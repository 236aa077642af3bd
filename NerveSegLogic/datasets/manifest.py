"""Provenance of an export: ``manifest.json`` (every file with its sha256, every frame with where it came from) and
the data set card ``README.md`` (counts, spacing, scanners, license, attribution, how to cite).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from NerveSegLogic.checksums import sha256_file  # noqa: F401 - also this module's name for it (tests)
from NerveSegLogic.classes import SegmentClass

from .dataset import DatasetError
from .layout import MANIFEST, SPLIT_NAMES
from .safe_paths import resolve_inside

MANIFEST_VERSION = 1

#: Public data sets NerveSeg knows how to credit. A frame belongs to one when its metadata["dataset"] is the key or
#: its source path contains it.
KNOWN_SOURCES: Dict[str, Dict[str, str]] = {
    "usgra-seg": {
        "title": "usgra-seg: ultrasound-guided regional anaesthesia nerve and vessel segmentation images",
        "author": "Timm Kandaouroff",
        "url": "https://github.com/tmkand/usgra-seg",
        "license": "Creative Commons Attribution 4.0 International (CC BY 4.0), "
                   "https://creativecommons.org/licenses/by/4.0/",
        "scanner": "Mindray TE7, L14-6Ns linear probe",
        "cite": "Kandaouroff, T. usgra-seg (2025). https://github.com/tmkand/usgra-seg. CC BY 4.0.",
    },
}


def source_dataset(source: str, metadata: Mapping) -> Optional[str]:
    """The :data:`KNOWN_SOURCES` key a frame comes from, or None."""
    named = str(metadata.get("dataset") or "").lower()
    if named in KNOWN_SOURCES:
        return named
    lowered = str(source or "").lower()
    for key in KNOWN_SOURCES:
        if key in lowered:
            return key
    return None


def known_source_of_folder(folder: Path) -> Optional[str]:
    """The :data:`KNOWN_SOURCES` key a data set folder declares in its ``ATTRIBUTION.md``, ``README.md`` or
    ``sample.json`` (as usgra-seg copies do), or None."""
    for name in ("ATTRIBUTION.md", "README.md", "sample.json"):
        path = Path(folder) / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="ignore").lower()
            for key in KNOWN_SOURCES:
                if key in text:
                    return key
    return None


def file_entries(root: Path) -> List[dict]:
    """``[{"path", "sha256", "bytes"}]`` for every file under ``root`` except the manifest itself, sorted by path
    (POSIX separators, relative to ``root``)."""
    root = Path(root)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative == MANIFEST:
            continue
        entries.append({"path": relative, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    return entries


def write_manifest(root: Path, header: Mapping, frames: Sequence[Mapping]) -> Path:
    """Write ``root/manifest.json``: ``header`` fields, then ``frames``, then ``files`` (hashed now, so this is the
    last file written)."""
    content = dict(header)
    content["manifest_version"] = MANIFEST_VERSION
    content["frames"] = list(frames)
    content["files"] = file_entries(root)
    path = Path(root) / MANIFEST
    path.write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    return path


def verify_manifest(root: Path) -> List[str]:
    """Problems found when checking every file of ``root/manifest.json`` against its sha256 (empty when all match),
    including files present but not listed."""
    root = Path(root)
    content = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    problems = []
    listed = set()
    for entry in content["files"]:
        listed.add(entry["path"])
        try:  # a manifest is input too: never hash a file outside the export it describes
            path = resolve_inside(root, root, entry["path"], f"{root / MANIFEST}: files entry field 'path'")
        except DatasetError as error:
            problems.append(str(error))
            continue
        if not path.is_file():
            problems.append(f"{entry['path']}: listed but missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    for path in root.rglob("*"):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and relative != MANIFEST and relative not in listed:
            problems.append(f"{relative}: present but not in the manifest")
    return problems


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def dataset_card(*, title: str, format: str, created: str, classes: Sequence[SegmentClass],
                 frames: Sequence[Mapping], class_counts: Mapping[str, Mapping[str, Mapping[str, int]]],
                 selection: Mapping, deidentification: Optional[Mapping], layout: str,
                 sources: Mapping[str, int], license_text: Optional[str]) -> str:
    """The README.md of an export. ``frames`` are the manifest's frame entries; ``class_counts[split][class key]``
    holds ``frames`` (frames showing the class) and ``instances`` (connected regions); ``sources`` counts frames per
    :data:`KNOWN_SOURCES` key (``""`` for frames of no known source)."""
    splits = [s for s in SPLIT_NAMES if any(f["split"] == s for f in frames)]
    subjects = defaultdict(set)
    for f in frames:
        subjects[f["split"]].add(f.get("subject"))
    lines = [f"# {title}", "",
             f"Exported by NerveSeg on {created} in **{format}** format: {len(frames)} frames, "
             f"{len(classes)} classes. Selection: frames whose current annotation status is "
             f"{', '.join(selection.get('statuses', []))}; splits by subject (seed {selection.get('seed')}, target "
             f"{selection.get('split')} of subjects), stratified by block region where frames record it.", "",
             "## Counts", ""]
    header = ["split", "frames", "subjects"] + [f"{c.key} frames / regions" for c in classes]
    rows = []
    for split in splits:
        row = [split, sum(f["split"] == split for f in frames), len(subjects[split])]
        for c in classes:
            counts = class_counts.get(split, {}).get(c.key, {})
            row.append(f"{counts.get('frames', 0)} / {counts.get('instances', 0)}")
        rows.append(row)
    lines += _table(header, rows) + [""]
    lines += ["## Classes", ""]
    lines += _table(["label", "key", "name", "colour (RGB)", "SNOMED CT type"],
                    [(c.label, c.key, c.name, ",".join(str(v) for v in c.color_uint8()),
                      f"{c.type.value} {c.type.meaning}") for c in classes]) + [""]
    spacing = Counter(tuple(f["spacing_mm"]) if f.get("spacing_mm") else None for f in frames)
    lines += ["## Pixel spacing", ""]
    for value, count in sorted(spacing.items(), key=lambda kv: -kv[1]):
        text = "unknown (no geometry recorded)" if value is None else f"{value[0]:g} x {value[1]:g} mm (x, y)"
        lines.append(f"- {text}: {count} frames")
    scanners = Counter((f.get("metadata") or {}).get("scanner") or "not recorded" for f in frames)
    lines += ["", "## Source scanners", ""]
    lines += [f"- {name}: {count} frames" for name, count in sorted(scanners.items(), key=lambda kv: -kv[1])]
    lines += ["", "## Files", "", layout,
              f"`{MANIFEST}` lists every file with its sha256 and, per frame, the store frame and annotation version "
              "it came from, the annotator, the model that pre-labelled it and its status.", ""]
    lines += ["## De-identification", ""]
    if deidentification:
        lines += [f"- Subject ids and recording names are pseudonymised with HMAC-SHA256 and a secret salt kept "
                  "outside this data set.",
                  f"- Metadata limited to: {', '.join(deidentification['metadata_allow_list'])}.",
                  f"- Screen outside the ultrasound sector: {deidentification['sector']} (found automatically; "
                  "a check picture was written beside the export).",
                  "- Acquisition and annotation dates and original image hashes are left out.", ""]
    else:
        lines += ["Not de-identified: subject ids, sources and metadata are as stored. Do not share outside the "
                  "institution that holds the data.", ""]
    lines += ["## License and attribution", ""]
    for key, count in sorted(sources.items()):
        if key and key in KNOWN_SOURCES:
            known = KNOWN_SOURCES[key]
            lines += [f"- {count} frames (images and masks) derive from **{known['title']}** by {known['author']}, "
                      f"{known['url']}, licensed under {known['license']}. Changes: converted to this format"
                      + (", de-identified and possibly cropped/blanked outside the ultrasound sector"
                         if deidentification else "") + "; masks possibly re-labelled by the annotators listed in "
                      f"`{MANIFEST}`. Scanner: {known['scanner']}."]
    unknown = sources.get("", 0)
    if unknown:
        lines.append(f"- {unknown} frames from the annotation store's own recordings: "
                     + (license_text or "license not recorded; set by the institution that acquired them."))
    lines += ["", "## How to cite", "",
              "Cite the data set as: "
              f"\"{title}\", exported with NerveSeg on {created} (manifest sha256 values identify the exact files)."]
    for key in sorted(k for k in sources if k in KNOWN_SOURCES):
        lines.append(f"and credit the source: {KNOWN_SOURCES[key]['cite']}")
    lines.append("")
    return "\n".join(lines)
