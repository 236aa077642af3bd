"""The Python packages NerveSeg needs inside 3D Slicer: what is missing, in words, and installing it on demand.

Slicer ships its own Python; NerveSeg's module must load and show its panel before any of this is installed, so the
panel calls :func:`check` (reads package metadata only: nothing is imported, torch included) and shows
:func:`missing_summary`. Pressing Start (or "Install missing packages...") calls :func:`install`:

- PyTorch through the PyTorch extension (``PyTorchUtilsLogic().installTorch(askConfirmation=True, ...)``), which
  picks the build that matches the GPU driver (CPU-only when there is no NVIDIA GPU); a plain ``pip install
  torch`` would pull the wrong build.
- everything else from ``Resources/requirements-slicer.txt`` with Slicer's own installer, newest API first:
  ``slicer.packaging.pip_ensure`` (Slicer 5.12 and later), which asks, installs and offers a restart; else
  ``slicer.util.pip_install`` (Slicer 5.6 to 5.10) after asking.
- packages that require torch (:data:`TORCH_DEPENDENT`: MONAI) only once torch is there, so pip never pulls torch
  itself (a bare ``torch`` requirement from the package index is the CUDA build on Linux).

Every installation holds the packages Slicer already has at their installed versions (:data:`HELD`: numpy, and
torch once the PyTorch extension installed it) through a pip constraints file: a requirement that would upgrade
Slicer's numpy (1.26 in Slicer 5.6/5.8, 2.0.2 in 5.10) inside a running session fails to resolve instead of damaging
Slicer. Testing/test_slicer_requirements_resolve.py resolves the file for Python 3.9 with numpy 1.26.4 held and for
Python 3.12 with numpy 2.0.2 held, on Linux, Windows and macOS.

Slicer's testing mode (``slicer.app.testingEnabled()``: ctest runs Slicer with ``--testing``) never changes the Python
environment: :func:`install` and :func:`ensure` install nothing there and return False, as Slicer's own
``pip_ensure`` does (``skip_in_testing``); the module's test skips with :func:`testing_skip_message` instead.

Nothing here imports ``qt``; the ``slicer`` module is passed in, so the logic is tested outside Slicer.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

from ..resources import resources_dir

log = logging.getLogger(__name__)

REQUIREMENTS_FILE = "requirements-slicer.txt"
#: torch is not in the requirements file: the PyTorch extension installs it (see the module docstring).
TORCH_REQUIREMENT = "torch>=2.1,<3"
#: Packages that require torch: installed only after torch, with torch held (never pulled by pip).
TORCH_DEPENDENT = ("monai>=1.3",)
#: Distributions Slicer (or the PyTorch extension) installed that an installation must never change.
HELD = ("numpy", "torch")
#: Never installed into Slicer: slicer-core and vtk would shadow Slicer's own ``slicer`` and ``vtk`` modules, and
#: torch must come through the PyTorch extension.
FORBIDDEN = ("slicer-core", "slicer", "vtk", "torch", "torchvision")
#: A requirement is also met by one of these distributions (they provide the same import): Slicer's OpenCV
#: extension installs ``opencv-python``, and a second OpenCV next to it would break ``import cv2``.
ALTERNATIVES = {
    "opencv-python-headless": ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"),
}

def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Pillow`` -> ``pillow``, ``opencv_python`` -> ``opencv-python``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Requirement:
    """One line of a requirements file: distribution name and version specifier (``>=1.17``, may be empty)."""

    name: str
    specifier: str = ""
    line: int = 0

    @property
    def text(self) -> str:
        return f"{self.name}{self.specifier}"

    def accepts(self, version: str) -> bool:
        """Whether ``version`` satisfies the specifier (always True when ``packaging`` is unavailable)."""
        if not self.specifier:
            return True
        try:
            from packaging.specifiers import SpecifierSet
            from packaging.version import InvalidVersion
        except ImportError:  # pragma: no cover (Slicer and the venv both have packaging)
            return True
        try:
            return SpecifierSet(self.specifier).contains(version, prereleases=True)
        except InvalidVersion:
            return False


@dataclass(frozen=True)
class Missing:
    """A requirement that is not met: not installed (``installed`` None) or installed at an unsuitable version."""

    requirement: Requirement
    installed: Optional[str] = None

    @property
    def is_torch(self) -> bool:
        return canonical(self.requirement.name) == "torch"

    def describe(self) -> str:
        """``PyTorch (torch>=2.1,<3) is not installed`` / ``onnxruntime 1.15.0 is installed but NerveSeg needs >=1.17``."""
        name, wanted = self.requirement.name, self.requirement.specifier
        if self.installed is None:
            return f"PyTorch ({name}{wanted}) is not installed" if self.is_torch else f"{name}{wanted} is not installed"
        what = f"PyTorch ({name})" if self.is_torch else name
        return f"{what} {self.installed} is installed but NerveSeg needs {wanted}"


def requirements_path() -> Path:
    """``Resources/requirements-slicer.txt`` (FileNotFoundError naming where Resources was looked for)."""
    return resources_dir() / REQUIREMENTS_FILE


_SPECIFIER = re.compile(r"(?:==|!=|<=|>=|~=|<|>)[0-9][0-9A-Za-z.*+!-]*(?:,(?:==|!=|<=|>=|~=|<|>)[0-9][0-9A-Za-z.*+!-]*)*")


def parse_requirement(text: str, where: str = "<requirement>", line: int = 0) -> Requirement:
    """``name`` or ``name<specifiers>`` (e.g. ``onnxruntime>=1.17``) -> Requirement.

    Only plain requirements are accepted (no URLs, extras, markers or pip options), so Slicer's installers and this
    checker read the file the same way. ValueError naming ``where`` and the line for anything else.
    """
    compact = text.replace(" ", "")
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", compact)
    if not match:
        raise ValueError(f"{where}, line {line}: expected 'name' or 'name>=version', got {text.strip()!r}")
    name, specifier = match.groups()
    if specifier and not _SPECIFIER.fullmatch(specifier):
        raise ValueError(f"{where}, line {line}: {text.strip()!r} is not a plain requirement like 'name>=1.2,<3' "
                         f"(no extras, markers, URLs or options)")
    return Requirement(name=name, specifier=specifier, line=line)


def read_requirements(path: Optional[Path] = None) -> List[Requirement]:
    """The requirements in ``path`` (default: the shipped requirements-slicer.txt), comments and blanks skipped.

    Raises ValueError naming the file and line for a malformed line, a duplicate, or a package that must never be
    pip-installed into Slicer (:data:`FORBIDDEN`); OSError when the file cannot be read.
    """
    path = Path(path) if path is not None else requirements_path()
    requirements: List[Requirement] = []
    seen = set()
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = parse_requirement(text, str(path), number)
        key = canonical(requirement.name)
        if key in {canonical(f) for f in FORBIDDEN}:
            raise ValueError(f"{path}, line {number}: {requirement.name} must not be pip-installed into Slicer "
                             f"(slicer-core and vtk shadow Slicer's own modules; torch comes from the PyTorch "
                             f"extension)")
        if key in seen:
            raise ValueError(f"{path}, line {number}: {requirement.name} is listed twice")
        seen.add(key)
        requirements.append(requirement)
    return requirements


def installed_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name`` or of an :data:`ALTERNATIVES` stand-in; None when absent.

    Reads package metadata only: nothing is imported."""
    for candidate in (name, *ALTERNATIVES.get(canonical(name), ())):
        try:
            return importlib.metadata.version(candidate)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check(requirements: Optional[Sequence[Requirement]] = None, include_torch: bool = True,
          version_of: Callable[[str], Optional[str]] = installed_version) -> List[Missing]:
    """What is missing: torch first (when ``include_torch``), then the requirements file's packages in order, then
    (with torch) the packages that require torch."""
    wanted = list(requirements) if requirements is not None else read_requirements()
    if include_torch:
        wanted.insert(0, parse_requirement(TORCH_REQUIREMENT, "TORCH_REQUIREMENT"))
        if requirements is None:
            wanted += [parse_requirement(t, "TORCH_DEPENDENT") for t in TORCH_DEPENDENT]
    missing = []
    for requirement in wanted:
        version = version_of(requirement.name)
        if version is None or not requirement.accepts(version):
            missing.append(Missing(requirement, version))
    return missing


def missing_summary(missing: Sequence[Missing]) -> str:
    """A sentence for the panel: what is missing and what pressing Start will do, or that all is there."""
    if not missing:
        return "All Python packages NerveSeg needs are installed."
    lines = ["Missing: " + "; ".join(m.describe() for m in missing) + "."]
    if any(m.is_torch for m in missing):
        lines.append("Start (or Install) installs PyTorch through the PyTorch extension, asking first.")
    if any(not m.is_torch for m in missing):
        lines.append("The other packages are installed with pip, asking first.")
    lines.append("Remote mode needs no PyTorch on this computer.")
    return " ".join(lines)


def _pytorch_extension_logic():
    try:
        module = importlib.import_module("PyTorchUtils")
    except ImportError:
        raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from Slicer's Extensions "
                           "Manager, restart Slicer, then press Start again") from None
    return module.PyTorchUtilsLogic()


def held_constraints(version_of: Optional[Callable[[str], Optional[str]]] = None) -> List[str]:
    """``name==version`` for each :data:`HELD` distribution that is installed (pip constraints)."""
    out = []
    for name in HELD:
        version = (version_of or installed_version)(name)
        if version:
            out.append(f"{name}=={version}")
    return out


def _write_constraints(lines: Sequence[str]) -> str:
    import tempfile

    handle, path = tempfile.mkstemp(prefix="nerveseg-constraints-", suffix=".txt")
    with open(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def testing_enabled(slicer) -> bool:
    """Whether Slicer runs in testing mode (``slicer.app.testingEnabled()``, set by ``--testing`` as ctest does);
    False outside Slicer (no ``app``) and for a stand-in without the method."""
    app = getattr(slicer, "app", None)
    check_function = getattr(app, "testingEnabled", None)
    if not callable(check_function):
        return False
    try:
        return bool(check_function())
    except Exception:  # pragma: no cover (an application being torn down)
        return False


def testing_skip_message(missing: Sequence[Missing]) -> str:
    """Why the module's test does not run in testing mode when packages are missing (what to install, and how)."""
    return ("Slicer runs in testing mode, which never changes its Python environment, and NerveSeg's test needs "
            "packages this Slicer lacks: " + "; ".join(m.describe() for m in missing) + ". Install them once "
            "(open NerveSeg and press 'Install missing packages...', or run its test with Reload and Test outside "
            "testing mode), then run the test again.")


def _pip_ensure(slicer):
    """``slicer.packaging.pip_ensure`` where this Slicer has it (5.12 and later), else None (5.6 to 5.10)."""
    module = getattr(slicer, "packaging", None)
    if module is None:
        try:
            module = importlib.import_module(f"{slicer.__name__}.packaging")
        except (ImportError, AttributeError):
            return None
    ensure_function = getattr(module, "pip_ensure", None)
    return ensure_function if callable(ensure_function) else None


def _pip(slicer, texts: Sequence[str], ask: bool) -> bool:
    """Install ``texts`` with Slicer's installer, holding :data:`HELD`; False when the user declined."""
    constraints = _write_constraints(held_constraints())
    try:
        pip_ensure = _pip_ensure(slicer)
        if pip_ensure is not None:
            from packaging.requirements import Requirement as PackagingRequirement

            try:
                pip_ensure([PackagingRequirement(t) for t in texts], constraints=constraints, prompt_install=ask,
                           requester="NerveSeg", skip_in_testing=True)
            except RuntimeError as error:  # pip_ensure raises RuntimeError when the user declines
                log.info("package installation declined: %s", error)
                return False
            return True
        if ask and not slicer.util.confirmOkCancelDisplay(
                "NerveSeg needs these Python packages:\n\n" + "\n".join(texts) + "\n\nInstall them now?",
                "NerveSeg - Install Python Packages"):
            return False
        slicer.util.pip_install(list(texts) + ["-c", constraints])
        return True
    finally:
        try:
            Path(constraints).unlink()
        except OSError:
            pass


def install(slicer, missing: Optional[Sequence[Missing]] = None, ask: bool = True,
            torch_installer: Optional[Callable[[], object]] = None) -> bool:
    """Install what is missing inside Slicer; returns True when everything needed is then present.

    slicer: Slicer's ``slicer`` module (its ``packaging`` or ``util`` installer is used).
    missing: from :func:`check` (default: check now). ask: confirm with the user first (both installers ask).
    torch_installer: returns the PyTorch extension's logic (default: ``PyTorchUtils.PyTorchUtilsLogic()``).

    Order: torch (PyTorch extension), then the plain packages, then those that require torch, each pip step with
    numpy (and torch) held at the installed versions. Returns False when the user declined, and, without
    installing anything, in Slicer's testing mode (:func:`testing_enabled`): tests never change Slicer's Python.
    Raises RuntimeError when the PyTorch extension is absent, and the installers' own errors
    (``subprocess.CalledProcessError``, e.g. when a package would need another numpy) when an installation fails.
    """
    missing = list(check() if missing is None else missing)
    if missing and testing_enabled(slicer):
        log.info("Slicer is in testing mode: not installing %s", ", ".join(m.requirement.text for m in missing))
        return False
    torch_missing = [m for m in missing if m.is_torch]
    dependent_names = {canonical(parse_requirement(t).name) for t in TORCH_DEPENDENT}
    dependent = [m for m in missing if canonical(m.requirement.name) in dependent_names]
    others = [m for m in missing if not m.is_torch and m not in dependent]
    if torch_missing:
        logic = (torch_installer or _pytorch_extension_logic)()
        specifier = torch_missing[0].requirement.specifier
        torch = logic.installTorch(askConfirmation=ask, torchVersionRequirement=specifier or None)
        if torch is None:
            log.info("PyTorch installation declined")
            return False
        importlib.invalidate_caches()
    for group in (others, dependent):
        if group and not _pip(slicer, [m.requirement.text for m in group], ask):
            return False
    importlib.invalidate_caches()
    return not check(version_of=installed_version, requirements=[m.requirement for m in others + dependent],
                     include_torch=bool(torch_missing))


def ensure(slicer, include_torch: bool = True, ask: bool = True) -> bool:
    """Check, and install what is missing (asking first); True when everything needed is then present.

    include_torch: False for remote mode, which runs no model on this computer. In Slicer's testing mode nothing is
    installed (False when something is missing)."""
    missing = check(include_torch=include_torch)
    if missing and not install(slicer, missing, ask=ask):
        return False
    return not check(include_torch=include_torch)


def names(requirements: Iterable[Requirement]) -> List[str]:
    """Canonical distribution names of ``requirements``."""
    return [canonical(r.name) for r in requirements]


__all__ = ["Requirement", "Missing", "read_requirements", "check", "missing_summary", "install", "ensure",
           "testing_enabled", "testing_skip_message",
           "installed_version", "requirements_path", "parse_requirement", "held_constraints", "TORCH_REQUIREMENT",
           "TORCH_DEPENDENT", "HELD", "FORBIDDEN", "canonical", "names"]
