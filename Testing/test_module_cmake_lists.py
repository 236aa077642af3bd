"""The CMake lists name exactly the files that exist, so the Slicer extension installs what the code needs.

Slicer's build copies only the files a CMakeLists.txt names: a module file added without listing it works in a
checkout and breaks in the installed extension. The lists are between ``# BEGIN <NAME>`` and ``# END <NAME>``
markers; when this test fails it prints the lines to add or remove, and

    python Testing/test_module_cmake_lists.py --write

rewrites the lists from the tree (then review the diff and commit).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
TOP = REPO / "CMakeLists.txt"
MODULE = REPO / "NerveSeg" / "CMakeLists.txt"

_BLOCK = re.compile(r"# BEGIN (?P<name>\w+)\n(?P<body>.*?)# END (?P=name)\n", re.S)


def _files(folder: Path) -> List[Path]:
    """Files under ``folder`` that belong in a build: no caches, no hidden or temporary files."""
    out = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        if path.suffix in (".pyc", ".tmp", ".swp") or path.name.endswith("~"):
            continue
        out.append(path)
    return out


def expected_lists() -> Dict[Path, Dict[str, List[str]]]:
    """What each CMakeLists.txt must list, from the tree as it is now (paths relative to that CMakeLists.txt)."""
    logic = _files(REPO / "NerveSegLogic")
    module = [p for p in _files(REPO / "NerveSeg") if p.name != "CMakeLists.txt" and "Testing" not in p.parts]
    rel = lambda paths, base: [p.relative_to(base).as_posix() for p in paths]  # noqa: E731
    return {
        TOP: {"NERVESEG_LOGIC_SCRIPTS": rel([p for p in logic if p.suffix == ".py"], REPO),
              "NERVESEG_LOGIC_RESOURCES": rel([p for p in logic if p.suffix != ".py"], REPO),
              "NERVESEG_RESOURCES": rel(_files(REPO / "Resources"), REPO)},
        MODULE: {"MODULE_PYTHON_SCRIPTS": rel([p for p in module if p.suffix == ".py"], REPO / "NerveSeg")},
    }


def listed(path: Path) -> Dict[str, List[str]]:
    """The ``set(NAME ...)`` lists between BEGIN/END markers of one CMakeLists.txt."""
    lists = {}
    for block in _BLOCK.finditer(path.read_text(encoding="utf-8")):
        body = re.sub(r"#[^\n]*", "", block.group("body"))
        match = re.fullmatch(r"\s*set\(\s*(\w+)(.*?)\)\s*", body, re.S)
        assert match and match.group(1) == block.group("name"), \
            f"{path}: the block {block.group('name')} must hold exactly one set({block.group('name')} ...)"
        lists[match.group(1)] = match.group(2).split()
    return lists


def render(name: str, files: List[str]) -> str:
    lines = [f"# BEGIN {name}", f"set({name}"] + [f"  {f}" for f in files] + ["  )", f"# END {name}", ""]
    return "\n".join(lines)


def write() -> None:
    for path, lists in expected_lists().items():
        text = path.read_text(encoding="utf-8")
        for name, files in lists.items():
            text, count = re.subn(rf"# BEGIN {name}\n.*?# END {name}\n", lambda m: render(name, files), text,
                                  flags=re.S)
            if count != 1:
                raise SystemExit(f"{path}: no '# BEGIN {name}' ... '# END {name}' block to rewrite")
        path.write_text(text, encoding="utf-8")
        print(f"rewrote {path.relative_to(REPO)}")


def test_cmake_lists_name_exactly_the_files_that_exist():
    problems = []
    for path, lists in expected_lists().items():
        found = listed(path)
        for name, files in lists.items():
            assert name in found, f"{path.relative_to(REPO)} has no '# BEGIN {name}' block"
            have = found[name]
            missing = sorted(set(files) - set(have))
            extra = sorted(set(have) - set(files))
            duplicated = sorted({f for f in have if have.count(f) > 1})
            for label, items in (("not listed (add)", missing), ("listed but absent (remove)", extra),
                                 ("listed twice", duplicated)):
                if items:
                    problems.append(f"{path.relative_to(REPO)} {name}: {label}:\n  " + "\n  ".join(items))
    assert not problems, ("\n".join(problems)
                          + "\n\nrun `python Testing/test_module_cmake_lists.py --write`, review the diff, commit")


def test_module_cmake_builds_the_module_with_generic_tests_and_registers_its_test():
    text = re.sub(r"#[^\n]*", "", MODULE.read_text(encoding="utf-8"))
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}.*?WITH_GENERIC_TESTS", text, re.S)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT \$\{MODULE_NAME\}\.py\s*\)", text)
    assert "set(MODULE_NAME NerveSeg)" in text


def test_top_level_cmake_has_the_extension_metadata_and_packages_logic_and_resources():
    text = TOP.read_text(encoding="utf-8")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                     "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        match = re.search(rf'set\({variable} "([^"]+)"\)', text)
        assert match and match.group(1).strip(), f"{variable} is missing or empty"
        if variable in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
            assert match.group(1).startswith("https://"), f"{variable} must be an https URL"
    assert re.search(r"set\(EXTENSION_DEPENDS PyTorch\)", text)
    assert "add_subdirectory(NerveSeg)" in text
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\n  \)", text, re.S)
    assert call, "NerveSegLogic and Resources must be packaged with ctkMacroCompilePythonScript"
    for needle in ('SCRIPTS "${NERVESEG_LOGIC_SCRIPTS}"', "${NERVESEG_RESOURCES}",
                   "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}",
                   "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}", "NO_INSTALL_SUBDIR"):
        assert needle in call.group(1), f"ctkMacroCompilePythonScript lacks {needle}"
    assert "include(${Slicer_EXTENSION_GENERATE_CONFIG})" in text and "include(${Slicer_EXTENSION_CPACK})" in text


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write()
    else:
        for path, lists in expected_lists().items():
            for name, files in lists.items():
                print(render(name, files))
