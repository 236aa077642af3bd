"""What the module installs into Slicer on demand (Resources/requirements-slicer.txt, NerveSegLogic.install.slicer_packages):
never slicer-core, vtk or torch from pip; the same packages as pyproject.toml; torch through the PyTorch extension
first; the user asked; a refusal leaves nothing half-done. Slicer is replaced by a stand-in that records calls."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from NerveSegLogic.install import slicer_packages
from NerveSegLogic.install.slicer_packages import Missing, Requirement, canonical, check, install, parse_requirement

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "Resources" / "requirements-slicer.txt"


def pyproject_dependencies():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return [parse_requirement(text) for text in data["project"]["dependencies"]]


def test_requirements_never_pip_install_slicer_core_vtk_or_torch():
    names = {canonical(r.name) for r in slicer_packages.read_requirements(REQUIREMENTS)}
    assert not names & {"slicer-core", "slicer", "vtk", "torch", "torchvision"}
    assert not re.search(r"^\s*(slicer-core|vtk|torch)\b", REQUIREMENTS.read_text(), re.M | re.I)


#: pyproject.toml dependencies that Slicer does not get from requirements-slicer.txt, and why.
NOT_FOR_SLICER = {"torch": "PyTorch extension", "monai": "slicer_packages.TORCH_DEPENDENT, after torch",
                  "pyigtl": "benchmarks only", "crcmod": "benchmarks only (no wheels; anycrc is used)"}


def test_requirements_cover_pyproject_dependencies_except_torch_and_what_slicer_must_not_pip_install():
    wanted = {canonical(r.name) for r in pyproject_dependencies()} - set(NOT_FOR_SLICER)
    have = {canonical(r.name) for r in slicer_packages.read_requirements(REQUIREMENTS)}
    assert have == wanted, (f"only in pyproject: {sorted(wanted - have)}, only in requirements: {sorted(have - wanted)}")
    torch = [r for r in pyproject_dependencies() if canonical(r.name) == "torch"]
    assert torch and torch[0].specifier == parse_requirement(slicer_packages.TORCH_REQUIREMENT).specifier
    assert [canonical(parse_requirement(t).name) for t in slicer_packages.TORCH_DEPENDENT] == ["monai"]


def test_check_with_torch_lists_the_torch_dependent_packages_after_the_rest(monkeypatch):
    missing = check(version_of=lambda name: None)
    names = [canonical(m.requirement.name) for m in missing]
    assert names[0] == "torch" and names[-1] == "monai"
    assert "monai" not in [canonical(m.requirement.name) for m in check(include_torch=False, version_of=lambda n: None)]


def test_install_holds_numpy_and_torch_at_their_installed_versions(monkeypatch):
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [])
    versions = {"numpy": "1.26.4", "torch": "2.4.1"}
    monkeypatch.setattr(slicer_packages, "installed_version", lambda name: versions.get(name))
    seen = []

    def pip_ensure(requirements, constraints=None, **kwargs):
        seen.append(([str(r) for r in requirements], Path(constraints).read_text().split()))

    slicer = SimpleNamespace(packaging=SimpleNamespace(pip_ensure=pip_ensure), util=None)
    missing = [Missing(Requirement("onnxruntime", ">=1.17")), Missing(Requirement("monai", ">=1.3"))]
    assert install(slicer, missing, ask=False)
    # plain packages first, then those that require torch, each with numpy and torch held
    assert seen == [(["onnxruntime>=1.17"], ["numpy==1.26.4", "torch==2.4.1"]),
                    (["monai>=1.3"], ["numpy==1.26.4", "torch==2.4.1"])]


@pytest.mark.parametrize("line, message", [("vtk>=9", "must not be pip-installed"),
                                           ("slicer-core", "must not be pip-installed"),
                                           ("monai[all]>=1.3", "not a plain requirement"),
                                           ("numpy>=1.24 ; python_version<'3.9'", "not a plain requirement"),
                                           ("git+https://example.org/x.git", "not a plain requirement")])
def test_bad_requirement_lines_are_refused_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "requirements.txt"
    path.write_text(f"# comment\nnumpy>=1.24\n{line}\n")
    with pytest.raises(ValueError, match=message) as error:
        slicer_packages.read_requirements(path)
    assert f"{path}, line 3" in str(error.value)


def test_check_reports_missing_and_too_old_packages_torch_first():
    requirements = [Requirement("onnxruntime", ">=1.17"), Requirement("numpy", ">=1.24")]
    installed = {"onnxruntime": "1.15.0", "numpy": "2.1.0"}
    missing = check(requirements, version_of=installed.get)
    assert [(m.requirement.name, m.installed) for m in missing] == [("torch", None), ("onnxruntime", "1.15.0")]
    text = slicer_packages.missing_summary(missing)
    assert "PyTorch (torch>=2.1,<3) is not installed" in text
    assert "onnxruntime 1.15.0 is installed but NerveSeg needs >=1.17" in text
    assert "PyTorch extension" in text
    assert check(requirements, include_torch=False, version_of={"onnxruntime": "1.18", "numpy": "2.0"}.get) == []
    assert slicer_packages.missing_summary([]) == "All Python packages NerveSeg needs are installed."


def test_opencv_from_slicers_opencv_extension_counts_as_installed(monkeypatch):
    import importlib.metadata

    def version(name):
        if name == "opencv-python":
            return "4.10.0"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert slicer_packages.installed_version("opencv-python-headless") == "4.10.0"
    assert slicer_packages.installed_version("onnx") is None


class FakePyTorchLogic:
    def __init__(self, returns=object()):
        self.calls = []
        self.returns = returns

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
        self.calls.append((askConfirmation, torchVersionRequirement))
        return self.returns


def fake_slicer(with_packaging=True, confirm=True, testing=False):
    """A stand-in for Slicer's ``slicer`` module: ``packaging.pip_ensure`` (Slicer 5.12+) when ``with_packaging``,
    else only ``util.pip_install`` (5.6-5.10); ``app.testingEnabled()`` returns ``testing``."""
    calls = []
    util = SimpleNamespace(pip_install=lambda texts: calls.append(("pip_install", list(texts))),
                           confirmOkCancelDisplay=lambda *args: calls.append(("confirm",)) or confirm)

    def pip_ensure(requirements, prompt_install=True, requester=None, skip_in_testing=True, **kwargs):
        calls.append(("pip_ensure", [str(r) for r in requirements], prompt_install, requester, skip_in_testing))

    slicer = SimpleNamespace(util=util, calls=calls, app=SimpleNamespace(testingEnabled=lambda: testing))
    if with_packaging:
        slicer.packaging = SimpleNamespace(pip_ensure=pip_ensure)
    return slicer


MISSING = [Missing(Requirement("torch", ">=2.1,<3")), Missing(Requirement("onnxruntime", ">=1.17"))]


def test_install_takes_torch_from_the_pytorch_extension_then_the_rest_with_pip_ensure(monkeypatch):
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [])  # after installing, nothing is missing
    torch_logic = FakePyTorchLogic()
    slicer = fake_slicer()
    assert install(slicer, MISSING, ask=True, torch_installer=lambda: torch_logic)
    assert torch_logic.calls == [(True, ">=2.1,<3")]
    assert slicer.calls == [("pip_ensure", ["onnxruntime>=1.17"], True, "NerveSeg", True)]


def test_install_falls_back_to_pip_install_after_asking_on_older_slicer(monkeypatch):
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [])
    slicer = fake_slicer(with_packaging=False)
    assert install(slicer, MISSING[1:], ask=True, torch_installer=lambda: pytest.fail("torch is not missing"))
    (call, texts), = slicer.calls[1:]
    assert slicer.calls[0] == ("confirm",) and call == "pip_install"
    assert texts[0] == "onnxruntime>=1.17" and texts[1] == "-c"  # numpy held through a constraints file


def test_declining_torch_installs_nothing_else():
    slicer = fake_slicer()
    assert install(slicer, MISSING, ask=True, torch_installer=lambda: FakePyTorchLogic(returns=None)) is False
    assert slicer.calls == []


def test_declining_pip_on_older_slicer_installs_nothing():
    slicer = fake_slicer(with_packaging=False, confirm=False)
    assert install(slicer, MISSING[1:], ask=True) is False
    assert slicer.calls == [("confirm",)]


def test_missing_pytorch_extension_is_explained():
    with pytest.raises(RuntimeError, match="Extensions Manager"):
        install(fake_slicer(), MISSING[:1], ask=True)  # PyTorchUtils cannot be imported outside Slicer


def test_ensure_installs_only_when_something_is_missing(monkeypatch):
    results = iter([[MISSING[1]], [], []])  # missing before installing, nothing after (install checks too)
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: next(results))
    slicer = fake_slicer()
    assert slicer_packages.ensure(slicer, include_torch=False)
    assert slicer.calls == [("pip_ensure", ["onnxruntime>=1.17"], True, "NerveSeg", True)]
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [])
    quiet = fake_slicer()
    assert slicer_packages.ensure(quiet) and quiet.calls == []


def test_slicer_pydeps_is_never_used_it_never_existed_in_a_release():
    """Slicer 5.6-5.10 have slicer.util.pip_install only; slicer.packaging.pip_ensure arrives in 5.12. A pydeps
    module on the stand-in (the name of a development branch) must not be taken for an installer."""
    slicer = fake_slicer(with_packaging=False)
    slicer.pydeps = SimpleNamespace(pip_ensure=lambda *a, **k: pytest.fail("slicer.pydeps must not be used"))
    assert slicer_packages._pip_ensure(slicer) is None
    text = (REPO / "NerveSegLogic" / "install" / "slicer_packages.py").read_text(encoding="utf-8")
    assert "pydeps" not in text


# ---------------------------------------------------------------------------------- Slicer's testing mode (issue 30)
def test_testing_mode_installs_nothing_neither_torch_nor_pip(monkeypatch):
    """ctest runs Slicer with --testing: like pip_ensure(skip_in_testing=True), nothing changes Slicer's Python."""
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: pytest.fail("nothing is checked after a refusal"))
    for with_packaging in (True, False):
        slicer = fake_slicer(with_packaging=with_packaging, testing=True)
        assert install(slicer, MISSING, ask=False,
                       torch_installer=lambda: pytest.fail("the PyTorch extension must not be asked")) is False
        assert slicer.calls == []


def test_testing_mode_ensure_returns_false_when_something_is_missing_and_true_when_nothing_is(monkeypatch):
    slicer = fake_slicer(testing=True)
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [MISSING[1]])
    assert slicer_packages.ensure(slicer, include_torch=False) is False and slicer.calls == []
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [])
    assert slicer_packages.ensure(slicer) is True and slicer.calls == []


def test_testing_enabled_reads_slicer_app_and_is_false_outside_slicer():
    assert slicer_packages.testing_enabled(fake_slicer(testing=True))
    assert not slicer_packages.testing_enabled(fake_slicer(testing=False))
    assert not slicer_packages.testing_enabled(SimpleNamespace())  # slicer-core: no application
    assert not slicer_packages.testing_enabled(SimpleNamespace(app=None))
    import slicer  # the slicer-core wheel in this venv: no app, so never testing

    assert not slicer_packages.testing_enabled(slicer)


def test_the_skip_message_says_what_is_missing_and_how_to_install_it():
    text = slicer_packages.testing_skip_message(MISSING)
    assert "testing mode" in text and "PyTorch (torch>=2.1,<3) is not installed" in text
    assert "onnxruntime>=1.17 is not installed" in text and "Install missing packages" in text


def test_pip_ensure_is_always_asked_to_skip_in_testing(monkeypatch):
    """Outside testing mode pip_ensure installs (its skip_in_testing only acts in testing mode, where NerveSeg
    already installs nothing): NerveSeg never asks it to install in testing mode."""
    monkeypatch.setattr(slicer_packages, "check", lambda *a, **k: [])
    slicer = fake_slicer()
    assert install(slicer, MISSING[1:], ask=False)
    assert slicer.calls == [("pip_ensure", ["onnxruntime>=1.17"], False, "NerveSeg", True)]
    import inspect

    assert "testing" not in inspect.signature(install).parameters  # no way to ask for an install under testing


def test_the_module_test_skips_under_testing_instead_of_installing():
    """NerveSeg.py's ScriptedLoadableModuleTest: under --testing it checks, then skips with the message; it never
    calls install there (it installs, asking, only in an interactive Reload and Test)."""
    import ast

    module = REPO / "NerveSeg" / "NerveSeg.py"
    tree = ast.parse(module.read_text(encoding="utf-8"))
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "NerveSegTest")
    method = next(n for n in test_class.body if isinstance(n, ast.FunctionDef)
                  and n.name == "test_NerveSeg_replay_segmented_and_recorded")
    source = ast.get_source_segment(module.read_text(encoding="utf-8"), method)
    assert "testing=True" not in source and "ask=False" not in source
    skip_at = source.index("self.skipTest(slicer_packages.testing_skip_message(missing))")
    guard_at = source.index("slicer_packages.testing_enabled(slicer)")
    install_at = source.index("slicer_packages.install(")
    assert guard_at < skip_at < install_at
    run_test = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    assert "unittest.SkipTest" in ast.get_source_segment(module.read_text(encoding="utf-8"), run_test)
