"""The package's plan holds: its import graph has no cycle, and no module imports from a floor above its own.

NerveSegLogic is built in floors (:data:`FLOORS`, lowest first). A module may import its own floor's modules and any
floor below; an import from a higher floor would mean that a low part (pixels, streams, the store) knows about a
high one (the live panel, the commands), and the cycle that follows it makes loading a model or a store bounce
between files. Imports inside functions count as much as those at the top of a file: a lazy import only delays a
dependency, it does not remove it.

Entry points (``cli.py`` and ``__main__`` modules: what ``nerveseg``, ``python -m NerveSegLogic.train`` and the
worker process run) sit above everything and may import anything.

Run directly (``python Testing/test_module_layers.py``) to print the floors and the import edges between them.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parent.parent / "NerveSegLogic"

#: Lowest first. Each entry names the package's top-level modules and subpackages that share the floor.
FLOORS: Tuple[Tuple[str, ...], ...] = (
    ("classes", "resources", "signals", "slot", "igtl", "checksums"),  # core types, protocol constants, sha256
    ("imaging",),                                       # pixels: grey, placing, regions, image files, overlap
    ("frame",),                                         # a frame and its segmentation result
    ("stream", "scene", "store", "models", "install"),  # OpenIGTLink, MRML, the annotation store, model cards
    ("datasets",),                                      # labelled data: readers, writers, splits
    ("inference",),                                     # running a model on frames
    ("annotate", "train"),                              # correcting masks; training and evaluating models
    ("live",),                                          # the live path and the live panel's logic
    ("commands", "testing"),                            # the nerveseg command's subcommands; the tests' shared harness
)
ENTRY_POINTS = ("cli",)


def _modules() -> Dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the package's modules it imports (anywhere in the file)."""
    modules = _modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name.split(".") if is_package else name.split(".")[:-1]
        targets: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    prefix = base[: len(base) - (node.level - 1)]
                    module = ".".join(prefix + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
            else:
                continue
            for candidate in candidates:
                while candidate and candidate not in modules and "." in candidate:
                    candidate = candidate.rsplit(".", 1)[0]
                if candidate in modules and candidate != name and candidate != PACKAGE.name:
                    targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def part_of(module: str) -> str:
    """The package's top-level module or subpackage that ``module`` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def floor_of(module: str) -> int:
    if module == PACKAGE.name:  # the package's __init__: its version and one environment default, no imports
        return 0
    if module.split(".")[-1] == "__main__" or part_of(module) in ENTRY_POINTS:
        return len(FLOORS)
    for level, parts in enumerate(FLOORS):
        if part_of(module) in parts:
            return level
    raise AssertionError(f"{module}: its part {part_of(module)!r} is on no floor of Testing/test_module_layers.py "
                         f"FLOORS; add it to the floor it belongs to")


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_part_of_the_package_is_on_a_floor():
    for module in import_graph():
        floor_of(module)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (each line: modules that import each other, directly or through the others):\n" \
        + "\n".join(" <-> ".join(component) for component in found)


def test_no_module_imports_from_a_higher_floor():
    upward = sorted(f"{module} (floor {floor_of(module)}) imports {target} (floor {floor_of(target)})"
                    for module, targets in import_graph().items() for target in targets
                    if floor_of(target) > floor_of(module))
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)


def test_the_checks_find_a_cycle_and_an_upward_import_when_there_is_one():
    """The two checks above are only worth something if they can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert floor_of("NerveSegLogic.imaging.placement") < floor_of("NerveSegLogic.live.controller")
    assert floor_of("NerveSegLogic.train.__main__") == floor_of("NerveSegLogic.cli") == len(FLOORS)


if __name__ == "__main__":
    graph = import_graph()
    for level, parts in enumerate(FLOORS):
        print(f"floor {level}: {', '.join(parts)}")
    edges = sorted({(part_of(m), part_of(t)) for m, ts in graph.items() for t in ts if part_of(m) != part_of(t)})
    for source, target in edges:
        print(f"  {source} -> {target}")
    sys.exit(0)
