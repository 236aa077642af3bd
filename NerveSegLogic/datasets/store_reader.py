"""An annotation store (``project.nsdb`` / ``.db``, :mod:`NerveSegLogic.store.database`) read as a labelled data set.

``open_dataset("project.nsdb")`` (format ``store``, recognised by the SQLite header's application_id) gives the
current version of every frame whose status is one of ``statuses`` (default: accepted only), with the same
interface the trainer and ``nerveseg evaluate`` use for files: ``names()``, ``classes``, ``len``, ``[i] ->
Sample``. In addition:

- ``Sample.metadata["labelled"]``: the class keys that frame's version labels (its ``classes`` mapping). A version
  that labels only the nerve says nothing about vessels: training leaves the other classes out of the loss for that
  frame. A frame accepted with an empty mask teaches the absence of every class it labels.
- ``sources()``: the recording each frame came from (its ``source``); names sort the frames of one recording by
  their ``index``, so splits hold out a contiguous block of each recording (:func:`..train.data.split_indices`).
- ``fingerprint(indices)``: the store file's sha256 and the version ids used, for the run's card.

The data set's classes are every class the chosen versions label, numbered 1..N by the smallest label value they
have in the store. ``mapping`` ({class name or label value in the store: class key, or None for background})
renames or drops classes, as for the other formats.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from NerveSegLogic.checksums import sha256_file
from NerveSegLogic.classes import SegmentClass, canonical_key, segment_class

from .dataset import DatasetError, Sample
from ..store.location import is_url, redacted

#: Bytes 68..71 of an SQLite file's header hold its application_id (big-endian); see store.APPLICATION_ID.
_HEADER = b"SQLite format 3\x00"
DEFAULT_STATUSES = ("accepted",)


def _application_id() -> int:
    # The package's own imports inside functions here are lazy on purpose: they load OpenCV, which importing this
    # module must not.
    from ..store.database import APPLICATION_ID

    return APPLICATION_ID


def looks_like_store(path: Path) -> str:
    """What was found ("annotation store <name>") when ``path`` is a NerveSeg annotation store file, else ""."""
    path = Path(path)
    if not path.is_file():
        return ""
    try:
        with open(path, "rb") as handle:
            header = handle.read(100)
    except OSError:
        return ""
    if len(header) < 72 or not header.startswith(_HEADER):
        return ""
    if int.from_bytes(header[68:72], "big") != _application_id():
        return ""
    return f"annotation store {path.name}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "frame"


def _source_labels(sources: Sequence[str]) -> Dict[str, str]:
    """A short, file-name-safe, unique label per source: its file stem, with its folder when stems collide."""
    by_stem: Dict[str, List[str]] = {}
    for source in sources:
        by_stem.setdefault(_safe(Path(source).stem or source), []).append(source)
    labels: Dict[str, str] = {}
    for stem, members in by_stem.items():
        if len(members) == 1:
            labels[members[0]] = stem
            continue
        used: Counter = Counter()
        for source in members:
            label = _safe(f"{Path(source).parent.name}_{stem}")
            used[label] += 1
            labels[source] = label if used[label] == 1 else f"{label}-{used[label]}"
    return labels


class StoreDataset:
    """The chosen frames of an annotation store as a labelled data set (see the module docstring)."""

    format = "store"

    def __init__(self, path: Union[str, Path], statuses: Optional[Sequence[str]] = None,
                 mapping: Optional[Mapping] = None):
        from ..store.database import STATUSES, UNLABELLED, AnnotationStore, StoreError

        url = path.strip() if is_url(path) else None  # a postgresql:// store: root is its URL without a password
        self.root = Path(path) if url is None else redacted(url)
        self.statuses = tuple(statuses or DEFAULT_STATUSES)
        unknown = [s for s in self.statuses if s not in STATUSES]
        if unknown:
            raise DatasetError(f"--statuses {','.join(self.statuses)}: unknown status {', '.join(unknown)}; "
                               f"expected some of {', '.join(STATUSES)}")
        if isinstance(self.root, Path) and not self.root.is_file():
            raise DatasetError(f"{self.root}: no such annotation store file")
        try:
            self._store = AnnotationStore(self.root if url is None else url)
        except (StoreError, OSError) as error:
            raise DatasetError(f"{self.root}: {error}") from None
        frames = {f.id: f for f in self._store.frames()}
        current = {s.frame_id: s for s in self._store.summaries(current_only=True)}
        counts = Counter(current[i].status if i in current else UNLABELLED for i in frames)
        chosen = sorted((i for i in frames if i in current and current[i].status in self.statuses),
                        key=lambda i: (frames[i].source, frames[i].index, i))
        if not chosen:
            listed = ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES + (UNLABELLED,))
            widen = ",".join(dict.fromkeys(self.statuses + ("draft",)))
            raise DatasetError(
                f"annotation store {self.root} has no frame whose current version is {' or '.join(self.statuses)} "
                f"({len(frames)} frames: {listed}). Accept reviewed frames first (the review panel, or 'nerveseg "
                f"annotate accept --store {self.root} FRAME...'), or widen the choice with --statuses {widen}.")
        self._frames = [frames[i] for i in chosen]
        self._versions = [current[i] for i in chosen]
        self.classes, self._tables, self._labelled = self._classes(mapping)
        labels = _source_labels(sorted({f.source for f in self._frames}))
        width = max(6, max(len(str(f.index)) for f in self._frames))
        self._names = [f"{labels[f.source]}~{f.index:0{width}d}" if f.index >= 0 else f"{labels[f.source]}~{f.index}"
                       for f in self._frames]
        if len(set(self._names)) != len(self._names):  # two frames with one (source, index): keep both, by frame id
            self._names = [f"{name}~f{f.id}" for name, f in zip(self._names, self._frames)]
        partial = sum(1 for keys in self._labelled if set(keys) != {c.key for c in self.classes})
        self.class_source = "the versions' classes" + (" and --map" if mapping else "")
        self.description = (f"store: {len(self._frames)} frames ({'/'.join(self.statuses)}) of {len(frames)} in "
                            f"{self.root}, {len(labels)} recording(s), classes "
                            + ", ".join(f"{c.label}={c.key}" for c in self.classes)
                            + (f"; {partial} frame(s) label only some of them" if partial else ""))

    # -- classes ----------------------------------------------------------------------------------------------------
    def _classes(self, mapping: Optional[Mapping]) -> Tuple[Tuple[SegmentClass, ...], List[Dict[int, int]],
                                                            List[Tuple[str, ...]]]:
        mapping = dict(mapping or {})
        first_label: Dict[str, int] = {}
        per_version: List[Dict[int, Optional[str]]] = []
        for version in self._versions:
            keys: Dict[int, Optional[str]] = {}
            for label, name in sorted(version.classes.items()):
                target = mapping.get(label, mapping.get(str(label), mapping.get(name, name)))
                if target is None or str(target).strip().lower() in ("", "background", "_background_"):
                    keys[int(label)] = None
                    continue
                try:
                    key = canonical_key(str(target))
                except ValueError as error:
                    raise DatasetError(f"{self.root}: version {version.id} (frame {version.frame_id}) labels class "
                                       f"{name!r} with value {label}: {error}; rename it with --map "
                                       f"{label}=CLASS (or {label}=background)") from None
                keys[int(label)] = key
                first_label[key] = min(first_label.get(key, 256), int(label))
            per_version.append(keys)
        ordered = sorted(first_label, key=lambda k: (first_label[k], k))
        classes = tuple(segment_class(key, number) for number, key in enumerate(ordered, start=1))
        number = {c.key: c.label for c in classes}
        tables = [{label: (number[key] if key is not None else 0) for label, key in keys.items()}
                  for keys in per_version]
        labelled = [tuple(sorted({key for key in keys.values() if key is not None}, key=lambda k: number[k]))
                    for keys in per_version]
        return classes, tables, labelled

    # -- the data set interface -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> Sample:
        if not -len(self._frames) <= index < len(self._frames):
            raise IndexError(f"index {index} out of range for a data set of {len(self._frames)} frames")
        frame, version = self._frames[index], self._versions[index]
        image = self._store.image(frame.id)
        raw = self._store.mask(version.mask_sha256)
        if raw.shape != image.shape[:2]:
            raise DatasetError(f"{self.root}: frame {frame.id}: mask of version {version.id} is "
                               f"{raw.shape[1]}x{raw.shape[0]}, the image {image.shape[1]}x{image.shape[0]}")
        table = self._tables[index]
        lut = np.full(256, 256, dtype=np.uint16)
        lut[0] = 0
        for value, label in table.items():
            lut[value] = label
        mapped = lut[raw.astype(np.uint8)]
        if mapped.size and mapped.max() == 256:
            values = sorted(int(v) for v in np.unique(raw[mapped == 256]))
            raise DatasetError(f"{self.root}: frame {frame.id} ({self._names[index]}), version {version.id}: "
                               f"unknown label value(s) {values} in the mask; the version's classes are "
                               f"{dict(sorted(version.classes.items()))}")
        spacing = None
        if frame.geometry is not None:
            spacing = (float(frame.geometry.spacing[0]), float(frame.geometry.spacing[1]))
        metadata = dict(frame.metadata or {}, labelled=self._labelled[index], frame_id=frame.id,
                        version_id=version.id, status=version.status, source=frame.source, index=frame.index,
                        author=version.author, origin=version.origin)
        return Sample(image=image, mask=mapped.astype(np.uint8), name=self._names[index], spacing=spacing,
                      subject=frame.subject, metadata=metadata)

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def names(self) -> List[str]:
        return list(self._names)

    def subjects(self) -> List[Optional[str]]:
        return [f.subject for f in self._frames]

    def sources(self) -> List[str]:
        """The recording of each item (the frame's ``source``): splits keep each recording's blocks contiguous."""
        return [f.source for f in self._frames]

    def labelled(self, index: int) -> Tuple[str, ...]:
        """The class keys item ``index``'s version labels."""
        return self._labelled[index]

    @property
    def label_mapping(self) -> Dict[int, str]:
        return {c.label: c.key for c in self.classes}

    def fingerprint(self, indices: Optional[Sequence[int]] = None) -> Dict:
        """The store file's sha256, the version ids of the items ``indices`` (default: all), and a sha256 of their
        content (frame pixels sha256, version id, mask sha256: stable whatever else the store gains later)."""
        chosen = range(len(self)) if indices is None else list(indices)
        rows = sorted((self._frames[i].sha256, self._versions[i].id, self._versions[i].mask_sha256) for i in chosen)
        content = hashlib.sha256("\n".join(f"{a}\t{b}\t{c}" for a, b, c in rows).encode("utf-8")).hexdigest()
        return {"kind": "annotation store", "path": str(self._store.path),
                "sha256": sha256_file(self.root) if isinstance(self.root, Path) else None,  # a server has no file
                "statuses": list(self.statuses), "frames": len(rows),
                "versions": sorted(self._versions[i].id for i in chosen), "content_sha256": content}

    def close(self) -> None:
        self._store.close()

    def __repr__(self) -> str:
        return f"StoreDataset({self.description!r})"


def read_store(path: Union[str, Path], mapping: Optional[Mapping] = None, split: Optional[str] = None,
               statuses: Optional[Sequence[str]] = None) -> StoreDataset:
    """:class:`StoreDataset` of ``path`` (``split`` is not a store notion: a store has no split folders)."""
    if split is not None:
        raise DatasetError(f"{path}: an annotation store has no {split!r} split; splits are made when training "
                           "(--folds/--fold) or exporting")
    return StoreDataset(path, statuses=statuses, mapping=mapping)


__all__ = ["StoreDataset", "looks_like_store", "read_store", "DEFAULT_STATUSES"]
