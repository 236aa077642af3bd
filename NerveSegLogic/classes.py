"""Segment classes: name, label value, colour and standard terminology (SNOMED CT, as Slicer's terminologies use).

Every model card lists its classes by catalogue key (``"nerve"``, ``"blood_vessel"``...) with the label value the
model gives them; :func:`segment_class` turns that into a :class:`SegmentClass` carrying everything the scene,
the exporters and the Slicer module need. Codes and colours follow the "3D Slicer General Anatomy list" context
(category Tissue, SCT 85756007) where it has the structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Tuple

SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator, code value, code meaning (e.g. SCT, 119410002, Nerve)."""

    scheme: str
    value: str
    meaning: str

    def as_slicer(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


TISSUE = Code("SCT", "85756007", "Tissue")
NERVE = Code("SCT", "119410002", "Nerve")


@dataclass(frozen=True)
class SegmentClass:
    """A class a model segments.

    key: catalogue key (stable, lower case, used in cards, data sets and the CLI).
    name: what a person reads ("Nerve", "Blood vessel").
    label: value in labelmaps (1..255; 0 is background).
    color: RGB in 0..1.
    category, type: standard codes; together they are the segment's terminology in Slicer.
    """

    key: str
    name: str
    label: int
    color: Tuple[float, float, float]
    category: Code
    type: Code

    def terminology(self) -> str:
        """Slicer's terminology entry string (context~category~type~modifier~anatomic context~region~modifier)."""
        return "~".join([
            SLICER_CONTEXT, self.category.as_slicer(), self.type.as_slicer(), "^^",
            ANATOMIC_CONTEXT, "^^", "^^",
        ])

    def color_uint8(self) -> Tuple[int, int, int]:
        return tuple(int(round(c * 255)) for c in self.color)  # type: ignore[return-value]


def _rgb(r: int, g: int, b: int) -> Tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


# key: (name, colour, category, type). Colours are Slicer's recommended ones where it has the structure.
_CATALOGUE: Dict[str, Tuple[str, Tuple[float, float, float], Code, Code]] = {
    "nerve": ("Nerve", _rgb(244, 214, 49), TISSUE, NERVE),
    "blood_vessel": ("Blood vessel", _rgb(216, 101, 79), TISSUE, Code("SCT", "59820001", "Blood vessel")),
    "artery": ("Artery", _rgb(216, 101, 79), TISSUE, Code("SCT", "51114001", "Artery")),
    "vein": ("Vein", _rgb(0, 151, 206), TISSUE, Code("SCT", "29092000", "Vein")),
    "muscle": ("Muscle", _rgb(192, 104, 88), TISSUE, Code("SCT", "71616004", "Muscle")),
    "bone": ("Bone", _rgb(241, 214, 145), TISSUE, Code("SCT", "272673000", "Bone")),
    # Named nerves of the blocks in the Smistad papers (axillary and femoral). They keep the generic Nerve type code:
    # the name tells them apart; a region-specific code was not verified against the DICOM lists, so none is guessed.
    "median_nerve": ("Median nerve", _rgb(255, 230, 0), TISSUE, NERVE),
    "ulnar_nerve": ("Ulnar nerve", _rgb(255, 170, 0), TISSUE, NERVE),
    "musculocutaneous_nerve": ("Musculocutaneous nerve", _rgb(170, 255, 0), TISSUE, NERVE),
    "radial_nerve": ("Radial nerve", _rgb(255, 120, 200), TISSUE, NERVE),
    "femoral_nerve": ("Femoral nerve", _rgb(255, 230, 0), TISSUE, NERVE),
}

#: Other spellings users and data sets bring, mapped to catalogue keys.
ALIASES: Dict[str, str] = {
    "vessel": "blood_vessel",
    "blood vessel": "blood_vessel",
    "blood-vessel": "blood_vessel",
    "nerves": "nerve",
    "arteries": "artery",
    "veins": "vein",
}


def catalogue_keys() -> List[str]:
    return sorted(_CATALOGUE)


def canonical_key(name: str) -> str:
    """Catalogue key for a class name as a user or data set spells it; ValueError lists the known keys."""
    key = name.strip().lower()
    key = ALIASES.get(key, key).replace(" ", "_").replace("-", "_")
    if key not in _CATALOGUE:
        raise ValueError(f"unknown class {name!r}; known classes: {', '.join(catalogue_keys())} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def segment_class(key: str, label: int) -> SegmentClass:
    """The catalogue entry for ``key`` (any spelling :func:`canonical_key` accepts) with label value ``label``."""
    if not 1 <= int(label) <= 255:
        raise ValueError(f"label value for class {key!r} must be 1..255 (0 is background), got {label}")
    canonical = canonical_key(key)
    name, color, category, type_ = _CATALOGUE[canonical]
    return SegmentClass(key=canonical, name=name, label=int(label), color=color, category=category, type=type_)


def classes_from_mapping(mapping: Mapping[int, str]) -> Tuple[SegmentClass, ...]:
    """Classes from ``{label value: class name}`` (e.g. usgra-seg: ``{1: "nerve", 2: "blood_vessel"}``), by label."""
    classes = tuple(segment_class(name, label) for label, name in sorted(mapping.items()))
    keys = [c.key for c in classes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a class appears twice in the label mapping {dict(mapping)}")
    return classes


def by_label(classes: Iterable[SegmentClass]) -> Dict[int, SegmentClass]:
    return {c.label: c for c in classes}


#: The label mapping of usgra-seg (see Resources/Sample/ATTRIBUTION.md): 1 nerve, 2 blood vessel.
USGRA_SEG_MAPPING: Dict[int, str] = {1: "nerve", 2: "blood_vessel"}
