"""The checks Slicer's ExtensionsIndex runs on a submitted extension, run here on this repository as it is.

Written from the rules of the ExtensionsIndex (Slicer/ExtensionsIndex, scripts/check_description_files.py: the
.s4ext version that the 5.6 branch runs and the .json version that main runs) and of its pull-request checklist,
not from its code:

- a license file at the repository root (the index looks for LICENSE, LICENCE, LICENSE.txt, License.txt,
  license.txt, COPYING, COPYING.txt) - here the Apache-2.0 text that pyproject.toml declares;
- the description file: every field present with a value; scm not ``local``; scmurl ``scheme://host/path`` with
  scheme git or https; homepage, iconurl and each screenshot URL https; the repository name contains "Slicer";
  the description file is named after ``project()`` in the top-level CMakeLists.txt; at least one screenshot;
- icon and screenshots are images that can be downloaded: here, raw GitHub URLs of this repository at the scm
  revision whose path is a tracked PNG, JPEG or GIF file (the index downloads them and checks the content type);
- the three descriptions agree: NerveSeg.s4ext (Slicer 5.6), extension.json (5.8 and later) and CMakeLists.txt
  (the metadata that the build packages and the Extensions Manager shows). Category and depends between
  extension.json and CMakeLists.txt are checked in test_module_catalogue_entry.py, the EXTENSION_* variables'
  presence in test_module_cmake_lists.py; this file compares NerveSeg.s4ext with both.

And issue 30's limit: the files the repository tracks weigh under 100 MB together (what a clone of the revision
downloads; model weights beyond the default belong elsewhere).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
S4EXT = REPO / "NerveSeg.s4ext"
ENTRY = REPO / "extension.json"
CMAKE = REPO / "CMakeLists.txt"

LICENSE_NAMES = ("LICENSE", "LICENCE", "LICENSE.txt", "License.txt", "license.txt", "COPYING", "COPYING.txt")
TRACKED_LIMIT_BYTES = 100 * 1000 * 1000  # 100 MB, decimal: the stricter reading of "100 MB"

# The fields of a Slicer 5.6 extension description file (the ExtensionsIndex's template and what the extension
# build generates). A key outside this list is a typo the index would silently ignore.
S4EXT_FIELDS = ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled")
# CMakeLists.txt variable that each metadata field of the .s4ext repeats.
S4EXT_FROM_CMAKE = {"homepage": "EXTENSION_HOMEPAGE", "contributors": "EXTENSION_CONTRIBUTORS",
                    "category": "EXTENSION_CATEGORY", "description": "EXTENSION_DESCRIPTION",
                    "iconurl": "EXTENSION_ICONURL", "screenshoturls": "EXTENSION_SCREENSHOTURLS",
                    "depends": "EXTENSION_DEPENDS"}
IMAGE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".jpg": (b"\xff\xd8\xff",), ".jpeg": (b"\xff\xd8\xff",),
               ".gif": (b"GIF87a", b"GIF89a")}


# ---------------------------------------------------------------------------------------------------------------
# Readers


def read_s4ext(path: Optional[Path] = None) -> Dict[str, Optional[str]]:
    """Key -> value (None when the line has a key only), the way the ExtensionsIndex reads a .s4ext: blank lines
    and lines starting with '#' are skipped, the first space separates the key from the value."""
    path = path or S4EXT
    fields: Dict[str, Optional[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        key, _, value = line.strip().partition(" ")
        assert key not in fields, f"{path.name} line {number}: field {key!r} is given twice"
        fields[key] = value.strip() or None
    return fields


def cmake_text() -> str:
    return CMAKE.read_text(encoding="utf-8")


def cmake_set(name: str) -> str:
    """The value of ``set(NAME ...)`` in the top-level CMakeLists.txt: the quoted string, or the unquoted words
    joined by one space (a CMake list such as EXTENSION_DEPENDS)."""
    text = re.sub(r"(?m)^\s*#.*$", "", cmake_text())  # whole-line comments only: a URL may hold '#'

    match = re.search(rf'set\(\s*{name}\s+(?:"([^"]*)"|([^)]*))\)', text)
    assert match, f"CMakeLists.txt: no set({name} ...)"
    return match.group(1) if match.group(1) is not None else " ".join(match.group(2).split())


def cmake_project_name() -> str:
    match = re.search(r"^\s*project\(\s*([^\s)]+)", cmake_text(), re.M | re.I)
    assert match, "CMakeLists.txt: no project(...) declaration"
    return match.group(1).strip("\"'")


def depends_list(value: Optional[str]) -> List[str]:
    """A .s4ext ``depends`` value as a list; "NA" is the index's placeholder for none."""
    return [name for name in (value or "").split() if name != "NA"]


def same_repository(a: str, b: str) -> bool:
    """Two clone URLs of the same repository (case, a trailing slash and ".git" do not matter)."""
    norm = lambda url: re.sub(r"(\.git)?/*$", "", url.strip()).lower()  # noqa: E731
    return norm(a) == norm(b)


def tracked_files() -> List[str]:
    """The repository's tracked files (``git ls-files``), relative POSIX paths; skips outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout, or no git: {error}")
    return [name for name in out.decode("utf-8").split("\0") if name]


# ---------------------------------------------------------------------------------------------------------------
# License


def test_a_license_file_at_the_root_holds_the_license_pyproject_declares():
    found = [name for name in LICENSE_NAMES if (REPO / name).is_file()]
    assert found, (f"repository root: no license file; the ExtensionsIndex looks for one of {list(LICENSE_NAMES)} "
                   "(expected LICENSE with the Apache License 2.0 text)")
    text = (REPO / found[0]).read_text(encoding="utf-8")
    declared = re.search(r'^license\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    assert declared and declared.group(1) == "Apache-2.0", \
        f"pyproject.toml: field 'license' is {declared and declared.group(1)!r}, expected 'Apache-2.0' like {found[0]}"
    for needle in ("Apache License", "Version 2.0, January 2004", "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND "
                   "DISTRIBUTION", "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"):
        assert needle in text, f"{found[0]}: lacks {needle!r}; expected the full Apache License 2.0 text"


def test_the_license_file_is_tracked():
    """An untracked LICENSE passes locally and is missing from the clone the index makes."""
    names = set(tracked_files())
    assert any(name in names for name in LICENSE_NAMES), \
        f"git: no license file ({' / '.join(LICENSE_NAMES)}) is tracked at the root; expected LICENSE to be committed"


# ---------------------------------------------------------------------------------------------------------------
# Size


def test_tracked_files_weigh_under_100_mb():
    sizes = {}
    for name in tracked_files():
        path = REPO / name
        sizes[name] = path.stat().st_size if path.is_file() else 0  # deleted in the working tree: on its way out
    total = sum(sizes.values())
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:10]
    listing = "\n".join(f"  {size / 1e6:8.2f} MB  {name}" for name, size in largest)
    assert total < TRACKED_LIMIT_BYTES, (
        f"git ls-files: the {len(sizes)} tracked files weigh {total / 1e6:.1f} MB ({total} bytes) in the working "
        f"tree; expected under {TRACKED_LIMIT_BYTES / 1e6:.0f} MB. Largest:\n{listing}")


def test_the_weights_the_repository_tracks_are_those_the_release_tooling_keeps_in_it():
    """benchmarks/release/release_weights.py stages every other card's weights as release assets and writes their
    addresses: a tracked file it does not list would be published twice, a listed one not tracked would be missing
    from a clone."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("release_weights_under_test",
                                                  REPO / "benchmarks" / "release" / "release_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cards = {card["name"]: card for card in (json.loads(path.read_text())
                                             for path in sorted((REPO / "Resources" / "Models").glob("*.json")))}
    tracked = set(tracked_files())
    in_repository = {name for name, card in cards.items() if card.get("weights")
                     and f"Resources/Models/{card['weights']['file']}" in tracked}
    assert in_repository == set(module.IN_REPOSITORY), (
        f"tracked weights {sorted(in_repository)}; release_weights.IN_REPOSITORY {sorted(module.IN_REPOSITORY)}")
    with_address = sorted(name for name in in_repository if cards[name]["weights"].get("url"))
    assert not with_address, f"cards whose weights are tracked also name a release address: {with_address}"


# ---------------------------------------------------------------------------------------------------------------
# The description file


def test_s4ext_has_every_field_with_a_value_and_no_other():
    fields = read_s4ext()
    missing = [key for key in S4EXT_FIELDS if key not in fields]
    assert not missing, f"{S4EXT.name}: fields {missing} missing; expected all of {list(S4EXT_FIELDS)}"
    empty = [key for key in S4EXT_FIELDS if key != "screenshoturls" and fields[key] is None]
    assert not empty, f"{S4EXT.name}: fields {empty} have no value"
    unknown = sorted(set(fields) - set(S4EXT_FIELDS))
    assert not unknown, f"{S4EXT.name}: unknown fields {unknown} (typos?); expected only {list(S4EXT_FIELDS)}"
    assert fields["enabled"] in ("0", "1"), f"{S4EXT.name}: field 'enabled' is {fields['enabled']!r}, expected 0 or 1"


def test_s4ext_passes_the_index_syntax_checks():
    fields = read_s4ext()
    assert fields["scm"] == "git", f"{S4EXT.name}: field 'scm' is {fields['scm']!r}, expected 'git' (never 'local')"
    url = fields["scmurl"] or ""
    assert "://" in url, f"{S4EXT.name}: field 'scmurl' is {url!r}, expected scheme://host/path"
    assert urlsplit(url).scheme in ("git", "https"), \
        f"{S4EXT.name}: field 'scmurl' has scheme {urlsplit(url).scheme!r}, expected git or https"
    for key in ("homepage", "iconurl"):
        assert (fields[key] or "").startswith("https://"), \
            f"{S4EXT.name}: field {key!r} is {fields[key]!r}, expected an https:// URL"
    screenshots = (fields["screenshoturls"] or "").split()
    assert screenshots, f"{S4EXT.name}: field 'screenshoturls' is empty, expected at least one screenshot URL"
    for index, shot in enumerate(screenshots):
        assert shot.startswith("https://"), \
            f"{S4EXT.name}: field 'screenshoturls' item {index} is {shot!r}, expected an https:// URL"


def test_repository_and_description_file_are_named_after_the_extension():
    project = cmake_project_name()
    assert S4EXT.stem == project, \
        f"{S4EXT.name}: the file name must be the extension name, project({project}) in CMakeLists.txt"
    for source, url in ((S4EXT.name + " field 'scmurl'", read_s4ext()["scmurl"]),
                        (ENTRY.name + " field 'scm_url'", json.loads(ENTRY.read_text(encoding="utf-8"))["scm_url"])):
        repo_name = re.sub(r"\.git$", "", urlsplit(url).path.rstrip("/").split("/")[-1])
        assert "slicer" in repo_name.lower(), \
            f"{source}: repository name {repo_name!r} lacks 'Slicer'; expected e.g. 'Slicer{project}'"


# ---------------------------------------------------------------------------------------------------------------
# Agreement between NerveSeg.s4ext, extension.json and CMakeLists.txt


def test_s4ext_agrees_with_extension_json():
    fields = read_s4ext()
    entry = json.loads(ENTRY.read_text(encoding="utf-8"))
    assert same_repository(fields["scmurl"], entry["scm_url"]), \
        f"{S4EXT.name}: field 'scmurl' is {fields['scmurl']!r}, expected the repository of extension.json's " \
        f"scm_url {entry['scm_url']!r}"
    pairs = (("scm", "scm_type", "git"), ("scmrevision", "scm_revision", None),
             ("build_subdirectory", "build_subdirectory", "."))
    for s4ext_key, json_key, default in pairs:
        expected = entry.get(json_key, default)
        assert fields[s4ext_key] == expected, \
            f"{S4EXT.name}: field {s4ext_key!r} is {fields[s4ext_key]!r}, expected {expected!r} as extension.json's " \
            f"{json_key}"
    expected_enabled = "1" if entry.get("enabled", True) else "0"
    assert fields["enabled"] == expected_enabled, \
        f"{S4EXT.name}: field 'enabled' is {fields['enabled']!r}, expected {expected_enabled!r} as extension.json's " \
        f"enabled={entry.get('enabled', True)}"
    assert depends_list(fields["depends"]) == entry.get("build_dependencies", []), \
        f"{S4EXT.name}: field 'depends' is {fields['depends']!r}, expected extension.json's build_dependencies " \
        f"{entry.get('build_dependencies', [])}"


@pytest.mark.parametrize("key", sorted(S4EXT_FROM_CMAKE))
def test_s4ext_metadata_repeats_cmake(key):
    fields = read_s4ext()
    variable = S4EXT_FROM_CMAKE[key]
    expected = cmake_set(variable)
    have = fields.get(key)
    if key == "depends":
        assert depends_list(have) == expected.split(), \
            f"{S4EXT.name}: field 'depends' is {have!r}, expected CMakeLists.txt's {variable} {expected!r}"
    elif key == "screenshoturls":
        assert (have or "").split() == expected.split(), \
            f"{S4EXT.name}: field 'screenshoturls' is {have!r}, expected CMakeLists.txt's {variable} {expected!r}"
    else:
        assert have == expected, f"{S4EXT.name}: field {key!r} is {have!r}, expected CMakeLists.txt's {variable} " \
                                 f"{expected!r}"


# ---------------------------------------------------------------------------------------------------------------
# Icon and screenshots


def image_urls():
    fields = read_s4ext()
    urls = [("CMakeLists.txt", "EXTENSION_ICONURL", cmake_set("EXTENSION_ICONURL")),
            (S4EXT.name, "iconurl", fields["iconurl"])]
    urls += [("CMakeLists.txt", "EXTENSION_SCREENSHOTURLS", u) for u in cmake_set("EXTENSION_SCREENSHOTURLS").split()]
    urls += [(S4EXT.name, "screenshoturls", u) for u in (fields["screenshoturls"] or "").split()]
    return urls


@pytest.mark.parametrize("source, field, url", image_urls(), ids=lambda v: str(v).rsplit("/", 1)[-1])
def test_image_url_is_a_tracked_image_of_this_repository_at_the_scm_revision(source, field, url):
    """raw.githubusercontent.com/<owner>/<repo>/<revision>/<path>: the same repository and revision as the scm
    fields, and <path> a tracked image file here - what GitHub will serve once the revision is pushed."""
    fields = read_s4ext()
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", \
        f"{source}: {field} {url!r}; expected a https://raw.githubusercontent.com/... URL of this repository"
    owner, repo, revision, *path = parts.path.lstrip("/").split("/")
    assert same_repository(f"https://github.com/{owner}/{repo}", fields["scmurl"]), \
        f"{source}: {field} {url!r} points to {owner}/{repo}; expected the repository of scmurl {fields['scmurl']!r}"
    assert revision == fields["scmrevision"], \
        f"{source}: {field} {url!r} is at revision {revision!r}; expected scmrevision {fields['scmrevision']!r}"
    relative = "/".join(path)
    assert (REPO / relative).is_file(), f"{source}: {field} {url!r}; expected the file {relative} in this repository"
    assert relative in set(tracked_files()), \
        f"{source}: {field} {url!r}; {relative} exists but is not tracked by git, so GitHub will not serve it"
    suffix = Path(relative).suffix.lower()
    assert suffix in IMAGE_MAGIC, f"{source}: {field} {url!r}; expected a .png, .jpg or .gif file"
    head = (REPO / relative).read_bytes()[:8]
    assert head.startswith(IMAGE_MAGIC[suffix]), \
        f"{source}: {field} {url!r}; {relative} does not start like a {suffix} file"
