"""Checks of the Slicer module that run without Slicer: NerveSeg.py compiles, loads nothing heavy, and its code, its
parameter node and its .ui agree with each other (names, widget classes, bindings).

Slicer cannot be installed here, so these are the checks that catch what would otherwise surface only when a
clinician opens the module: a renamed widget, a binding Slicer's parameterNodeWrapper cannot make, a torch import
that makes the panel fail to load on a machine without PyTorch.
"""

from __future__ import annotations

import ast
import py_compile
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple


REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "NerveSeg" / "NerveSeg.py"
UI = REPO / "Resources" / "UI" / "NerveSeg.ui"

#: What NerveSeg.py may import when Slicer loads it. torch (and anything that pulls it in) must wait for Start.
ALLOWED_TOP_LEVEL = {"os", "sys", "pathlib", "typing", "logging", "enum", "qt", "ctk", "vtk", "slicer",
                     "slicer.i18n", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "slicer.util",
                     "NerveSegLogic", "NerveSegLogic.igtl", "NerveSegLogic.live.controller", "NerveSegLogic.install",
                     "NerveSegLogic.install.slicer_packages", "NerveSegLogic.annotate.review.controller"}
HEAVY = ("torch", "onnxruntime", "onnx", "monai", "cv2", "scipy", "safetensors", "skimage", "SimpleITK")

# Qt/CTK/MRML classes, and which ones have what the code uses (subclasses listed explicitly).
BUTTONS = {"QPushButton", "QToolButton", "QCheckBox", "QRadioButton", "ctkPushButton", "ctkCheckablePushButton"}
TEXT_HOLDERS = {"QLabel", "QLineEdit"} | BUTTONS | {"ctkCollapsibleButton"}
ATTRIBUTE_CLASSES: Dict[str, Set[str]] = {
    "clicked": BUTTONS | {"ctkCollapsibleButton"},
    "currentIndexChanged": {"QComboBox", "ctkComboBox"},
    "currentNodeChanged": {"qMRMLNodeComboBox"},
    "addItems": {"QComboBox", "ctkComboBox"},
    "currentText": {"QComboBox", "ctkComboBox"},
    "count": {"QComboBox", "ctkComboBox"},
    "value": {"QSpinBox", "QDoubleSpinBox", "QSlider", "ctkSliderWidget"},
    "text": TEXT_HOLDERS,
    "setPlainText": {"QTextEdit", "QPlainTextEdit", "QTextBrowser"},
    "setSegmentationNode": {"qMRMLSegmentsTableView"},
    "setColumnCount": {"QTableWidget"},
    "setMRMLScene": {"qMRMLNodeComboBox", "qMRMLSegmentsTableView", "qMRMLWidget"},
}
ANY_WIDGET = {"enabled", "visible", "setToolTip", "toolTip", "show", "hide"}
#: Helpers of the widget that take a ui widget as their first argument, and the classes they need.
HELPER_ARGUMENT_CLASSES = {"_fillTable": {"QTableWidget"}}
#: Slicer's parameterNodeWrapper GUI connectors: field type -> widget classes it can bind (Slicer's
#: Base/Python/slicer/parameterNodeWrapper/guiConnectors.py). A QComboBox needs a Choice annotation, a slider
#: a bounded range (WithinRange).
CONNECTORS = {"bool": {"QCheckBox", "QPushButton"}, "int": {"QSpinBox", "QSlider"},
              "float": {"QDoubleSpinBox", "ctkSliderWidget"}, "str": {"QLineEdit", "QTextEdit"},
              "Path": {"ctkPathLineEdit", "ctkDirectoryButton"}, "node": {"qMRMLNodeComboBox"}}
NEEDS_RANGE = {"QSlider", "ctkSliderWidget"}
QT_CLASSES = {"QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QLineEdit", "QSpinBox", "QTextBrowser",
              "QTableWidget", "QRadioButton", "QToolButton", "QDoubleSpinBox", "QSlider", "QTextEdit",
              "QPlainTextEdit", "QGroupBox", "QFrame"}


# ------------------------------------------------------------------------------------------------------ parsing
def module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"), filename=str(MODULE))


def ui_widgets() -> Dict[str, ET.Element]:
    """name -> <widget> element of every widget in the .ui."""
    root = ET.parse(UI).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def parameter_fields() -> Dict[str, ast.expr]:
    """Field name -> annotation of the @parameterNodeWrapper class."""
    for node in module_tree().body:
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return {s.target.id: s.annotation for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    raise AssertionError("NerveSeg.py has no @parameterNodeWrapper class")


def field_kind(annotation: ast.expr) -> Tuple[str, Set[str]]:
    """(base type name, names of the Annotated[...] extras) of a field annotation."""
    extras: Set[str] = set()
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        elements = annotation.slice.elts if isinstance(annotation.slice, ast.Tuple) else [annotation.slice]
        annotation = elements[0]
        extras = {e.func.id for e in elements[1:] if isinstance(e, ast.Call) and isinstance(e.func, ast.Name)}
    name = annotation.id if isinstance(annotation, ast.Name) else ast.unparse(annotation)
    return ("node" if name.startswith("vtkMRML") else name), extras


def top_level_imports(tree: ast.Module) -> List[Tuple[str, int]]:
    """Modules imported when the file is imported: everything outside function bodies (class bodies run too)."""
    found = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append((child.module or "", child.lineno))
            visit(child)

    visit(tree)
    return found


def _constant_strings(node: ast.expr, constants: Dict[str, list]) -> Optional[list]:
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return [e.value for e in node.elts]
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return None


def _evaluate(node: ast.expr, bindings: Dict[str, str]) -> Optional[str]:
    """A str constant, a loop variable, or an f-string of those; None when not statically known."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return bindings.get(node.id)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            part = _evaluate(value.value if isinstance(value, ast.FormattedValue) else value, bindings)
            if part is None:
                return None
            parts.append(part)
        return "".join(parts)
    return None


def ui_uses() -> List[Tuple[str, Optional[str], int]]:
    """(widget name, attribute used on it or None, line) for every ``self.ui.X``, ``getattr(self.ui, ...)`` and
    ``self._helper(self.ui.X)`` in NerveSeg.py. Dynamic names from loops over constant tuples are resolved."""
    tree = module_tree()
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            constants[node.targets[0].id] = list(value) if isinstance(value, (tuple, list, dict)) else value
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    uses = []

    def loop_bindings(node) -> List[Dict[str, str]]:
        """Every binding of the enclosing for-loop variables over constant sequences."""
        bindings = [{}]
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
                values = _constant_strings(node.iter, constants)
                if values is not None:
                    bindings = [dict(b, **{node.target.id: v}) for b in bindings for v in values]
        return bindings

    def attribute_after(node) -> Optional[str]:
        parent = parents.get(node)
        return parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None

    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            parent = parents.get(node)
            if isinstance(parent, ast.Call) and node in parent.args and isinstance(parent.func, ast.Attribute) \
                    and parent.func.attr in HELPER_ARGUMENT_CLASSES:
                uses.append((node.attr, f"helper:{parent.func.attr}", node.lineno))
            else:
                uses.append((node.attr, attribute_after(node), node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) == 2 and ast.unparse(node.args[0]) == "self.ui"):
            for bindings in loop_bindings(node):
                name = _evaluate(node.args[1], bindings)
                assert name is not None, f"NerveSeg.py line {node.lineno}: getattr(self.ui, ...) with a name " \
                                         f"this test cannot resolve; use a constant or a loop over constants"
                uses.append((name, attribute_after(node), node.lineno))
    return uses


# ------------------------------------------------------------------------------------------------------ tests
def test_module_file_compiles():
    py_compile.compile(str(MODULE), doraise=True)


def test_module_imports_only_light_modules_at_load():
    for name, line in top_level_imports(module_tree()):
        assert name in ALLOWED_TOP_LEVEL, f"NerveSeg.py line {line} imports {name!r} at load time; allowed: " \
                                          f"{sorted(ALLOWED_TOP_LEVEL)}. Import it inside the function that needs it."
    text = MODULE.read_text(encoding="utf-8")
    for node in ast.walk(module_tree()):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            assert not any(n.split(".")[0] == "torch" for n in names), \
                f"NerveSeg.py line {node.lineno} imports torch; only NerveSegLogic imports it, lazily"
    assert "import torch" not in text


def test_logic_modules_the_panel_loads_import_no_heavy_package():
    code = ("import sys, NerveSegLogic.live.controller, NerveSegLogic.install.slicer_packages, NerveSegLogic.resources, "
            "NerveSegLogic.annotate.review.controller; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"loading the panel's logic imported {result.stdout.strip()}"


def test_classes_follow_the_template_order_module_parameters_widget_logic_test():
    classes = [n.name for n in module_tree().body if isinstance(n, ast.ClassDef)]
    assert classes == ["NerveSeg", "NerveSegParameterNode", "NerveSegWidget", "NerveSegLogic", "NerveSegTest"]
    text = MODULE.read_text(encoding="utf-8")
    for name in classes:
        assert f"#\n# {name}" in text, f"banner comment before class {name} missing"


def test_ui_is_a_designer_file_with_its_custom_widgets_declared():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui" and root.find("class").text == "NerveSeg"
    assert root.find("widget").get("class") == "qMRMLWidget"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    undeclared = sorted(c for c in used - declared if c not in QT_CLASSES)
    assert not undeclared, f"{UI.name}: custom widget classes used without a <customwidget> entry: {undeclared}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique (childWidgetVariables maps by name)"


def test_every_ui_widget_the_code_uses_exists_with_a_compatible_class():
    widgets = ui_widgets()
    uses = ui_uses()
    assert len(uses) > 20, "the scan found too few self.ui uses: is the parser still reading NerveSeg.py?"
    for name, attribute, line in uses:
        assert name in widgets, f"NerveSeg.py line {line} uses self.ui.{name}, which {UI.name} does not have"
        cls = widgets[name].get("class")
        if attribute is None or attribute in ANY_WIDGET:
            continue
        if attribute.startswith("helper:"):
            allowed = HELPER_ARGUMENT_CLASSES[attribute.split(":", 1)[1]]
        else:
            assert attribute in ATTRIBUTE_CLASSES, f"NerveSeg.py line {line}: self.ui.{name}.{attribute}: add " \
                                                   f"{attribute!r} to ATTRIBUTE_CLASSES in this test"
            allowed = ATTRIBUTE_CLASSES[attribute]
        assert cls in allowed, f"NerveSeg.py line {line}: self.ui.{name}.{attribute} needs one of {sorted(allowed)}, " \
                               f"but {UI.name} makes {name} a {cls}"


def test_every_slicer_parameter_name_binds_a_field_with_a_widget_slicer_can_connect():
    fields = parameter_fields()
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                parameter = prop.find("string").text
                assert parameter in fields, f"{UI.name}: widget {name} binds {parameter!r}, not a field of the " \
                                            f"parameter node ({sorted(fields)})"
                assert parameter not in bound, f"{parameter!r} is bound to both {bound[parameter]} and {name}"
                bound[parameter] = name
                cls = widget.get("class")
                kind, extras = field_kind(fields[parameter])
                if cls == "QComboBox":
                    assert "Choice" in extras, f"{parameter}: a QComboBox binding needs Annotated[..., Choice([...])]"
                    continue
                assert cls in CONNECTORS.get(kind, set()), \
                    f"{parameter} ({kind}) cannot bind to {name} ({cls}); Slicer connects it to {CONNECTORS.get(kind)}"
                if cls in NEEDS_RANGE:
                    assert "WithinRange" in extras, f"{parameter}: a {cls} needs Annotated[..., WithinRange(lo, hi)]"
    assert len(bound) >= 15


def test_every_parameter_is_bound_in_the_ui_or_used_by_the_code():
    fields = parameter_fields()
    bound = {prop.find("string").text for w in ui_widgets().values() for prop in w.findall("property")
             if prop.get("name") == "SlicerParameterName"}
    used = {node.attr for node in ast.walk(module_tree()) if isinstance(node, ast.Attribute)}
    dead = sorted(f for f in fields if f not in bound and f not in used)
    assert not dead, f"parameter node fields neither bound in {UI.name} nor used: {dead}"


def test_user_facing_messages_are_translatable():
    for node in ast.walk(module_tree()):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "slicer.util.tryWithErrorDisplay":
            message = node.args[0]
            inner = message.func.value if (isinstance(message, ast.Call) and isinstance(message.func, ast.Attribute)
                                           and message.func.attr == "format") else message
            assert isinstance(inner, ast.Call) and ast.unparse(inner.func) == "_", \
                f"NerveSeg.py line {node.lineno}: wrap the error message in _()"
        if isinstance(node, ast.Assign) and any(ast.unparse(t) in ("self.parent.title", "self.parent.helpText",
                                                                   "self.parent.acknowledgementText")
                                                for t in node.targets):
            assert isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "_", \
                f"NerveSeg.py line {node.lineno}: wrap {ast.unparse(node.targets[0])} in _()"


def test_module_says_research_use_only():
    assert "Research use only, not for clinical decisions." in MODULE.read_text(encoding="utf-8")


def _widget_method(name: str) -> ast.FunctionDef:
    widget = next(n for n in module_tree().body if isinstance(n, ast.ClassDef) and n.name == "NerveSegWidget")
    method = next((n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    assert method is not None, f"NerveSegWidget.{name} is missing"
    return method


def test_reload_drops_the_nervesegLogic_package_so_developer_reload_picks_up_its_changes():
    source = ast.get_source_segment(MODULE.read_text(encoding="utf-8"), _widget_method("onReload"))
    assert "sys.modules" in source and '"NerveSegLogic."' in source and "del sys.modules" in source
    assert "ScriptedLoadableModuleWidget.onReload(self)" in source


def test_views_are_fitted_when_the_first_frame_arrives_not_only_at_start():
    source = ast.get_source_segment(MODULE.read_text(encoding="utf-8"), _widget_method("setup"))
    assert "controller.first_frame.connect(self._showInViews)" in source


def test_the_panel_defaults_to_the_worker_process_and_remote_mode_receives_there_too():
    text = MODULE.read_text(encoding="utf-8")
    assert 'Choice(["child-process", "in-process", "remote"])] = "child-process"' in text
    assert "remote_via_worker=True" in text
    assert 'mode="child-process"' in text  # the module test replays through the worker


# ------------------------------------------------------------------------------------------------ issue 30
def test_the_store_field_offers_annotation_store_files():
    widget = ui_widgets()["storePathLineEdit"]
    assert widget.get("class") == "ctkPathLineEdit"
    filters = [prop for prop in widget.findall("property") if prop.get("name") == "nameFilters"]
    assert len(filters) == 1, "storePathLineEdit needs a nameFilters property"
    entries = [e.text for e in filters[0].iter("string")]
    assert len(entries) == 1 and "*.db" in entries[0] and "*.nsdb" in entries[0]
    # ctk turns "Label (*.a *.b)" into the dialog filter and the completer's extensions: the pattern part must be
    # in parentheses, extensions separated by spaces
    assert entries[0].endswith("(*.db *.nsdb)")


def test_review_keys_follow_the_focus_so_return_reaches_line_edits_and_cell_editors():
    """Accept on Return/Enter must not fire while a text-entry widget has the focus: the shortcuts are enabled only
    through review_key_enabled, on every focus change and whenever a store opens or the scene closes."""
    text = MODULE.read_text(encoding="utf-8")
    setup = ast.get_source_segment(text, _widget_method("setup"))
    assert "slicer.app.focusChanged.connect(self.onFocusChanged)" in setup
    assert "slicer.app.focusChanged.disconnect(self.onFocusChanged)" in ast.get_source_segment(
        text, _widget_method("cleanup"))
    update = ast.get_source_segment(text, _widget_method("_updateShortcuts"))
    assert "review_key_enabled(key," in update and "focus_takes_text(focus, qt)" in update
    for name in ("onOpenStore", "onSceneStartClose"):
        assert "self._updateShortcuts()" in ast.get_source_segment(text, _widget_method(name)), name
    enabling = [node for node in ast.walk(module_tree()) if isinstance(node, ast.Call)
                and ast.unparse(node.func).endswith(".setEnabled") and "shortcut" in ast.unparse(node.func)]
    for call in enabling:
        assert ast.unparse(call.args[0]) in ("False", "review_key_enabled(key, isOpen, typing)"), \
            f"NerveSeg.py line {call.lineno}: enable review shortcuts only through review_key_enabled"


def test_prompt_buttons_start_placements_the_review_controller_knows():
    from NerveSegLogic.annotate.review.controller import PROMPT_PLACEMENTS

    tree = module_tree()
    buttons = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                   and ast.unparse(n.targets[0]) == "PROMPT_BUTTONS")
    assert set(buttons.values()) <= set(PROMPT_PLACEMENTS) | {"auto"}
    assert "exclude" in buttons.values(), "the panel must let the annotator place exclude clicks"
    widgets = ui_widgets()
    for name in buttons:
        assert widgets[name].get("class") == "QPushButton", name
    text = MODULE.read_text(encoding="utf-8")
    prompt = ast.get_source_segment(text, _widget_method("onPrompt"))
    assert "review.place_prompts(kind, appLogic.GetSelectionNode(), interaction)" in prompt
    assert "EndPlacementEvent" in prompt
    assert "SetCurrentInteractionMode" not in prompt  # placement (and its persistence) is the controller's
    closing = ast.get_source_segment(text, _widget_method("onSceneStartClose"))
    assert "self._unobservePrompts()" in closing
    assert "self.logic.review.end_placement(" in ast.get_source_segment(text, _widget_method("onReview"))
