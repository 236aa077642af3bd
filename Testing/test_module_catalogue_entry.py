"""extension.json is a valid Slicer ExtensionsIndex entry and agrees with the CMake metadata; the icon is a
128x128 PNG.

The rules are those of Slicer's catalogue schema v1.0.1 (Slicer/Slicer, Schemas/
slicer-extension-catalog-entry-schema-v1.0.1.json): required $schema, category and scm_url; no other properties
than the ones listed; tier one of 1, 3, 5; scm_type git or local. They are written out here because the
``jsonschema`` package is not a dependency.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "extension.json"
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
REQUIRED = ("$schema", "category", "scm_url")
PROPERTIES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
              "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}


def cmake_variable(name: str) -> str:
    match = re.search(rf'set\({name} "?([^")]+)"?\)', (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert match, f"CMakeLists.txt does not set {name}"
    return match.group(1)


def test_extension_json_follows_the_catalogue_schema():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    for key in REQUIRED:
        assert key in entry, f"extension.json lacks the required field {key!r}"
    unknown = sorted(set(entry) - set(PROPERTIES))
    assert not unknown, f"extension.json has fields the schema forbids (additionalProperties: false): {unknown}"
    for key, value in entry.items():
        assert isinstance(value, PROPERTIES[key]) and not (PROPERTIES[key] is int and isinstance(value, bool)), \
            f"extension.json field {key!r} must be a {PROPERTIES[key].__name__}, got {value!r}"
    assert entry["$schema"] == SCHEMA_URL
    assert entry["tier"] in (1, 3, 5)
    assert entry.get("scm_type", "git") in ("git", "local")
    assert all(isinstance(d, str) for d in entry["build_dependencies"])
    assert entry["scm_url"].startswith("https://")


def test_extension_json_agrees_with_the_cmake_metadata():
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert entry["category"] == cmake_variable("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_variable("EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert cmake_variable("EXTENSION_HOMEPAGE").startswith(entry["scm_url"])
    assert cmake_variable("EXTENSION_ICONURL").endswith("Resources/Icons/NerveSeg.png")


def test_icon_is_a_128_pixel_png():
    data = (REPO / "Resources" / "Icons" / "NerveSeg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "the icon is not a PNG file"
    width, height = struct.unpack(">II", data[16:24])  # IHDR: the first chunk
    assert (width, height) == (128, 128)
