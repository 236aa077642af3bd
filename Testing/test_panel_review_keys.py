"""The review keys and the keyboard focus (issue 30 item 6): Return/Enter are Accept in the slice views and on the
panel's buttons, but while a text-entry widget has the focus (the Author or Server field, the editor Qt opens to
rename a segment in a table, a spin box, a combo box's list) they belong to that widget, so Enter there never saves
the frame and moves on. The decision (NerveSegLogic.annotate.review.controller.focus_takes_text / review_key_enabled) is
checked here on stand-ins that follow Qt's class hierarchy; the panel applies it on every focus change."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from NerveSegLogic.annotate.review.controller import (TEXT_ENTRY_CLASSES, TEXT_KEYS, focus_takes_text,
                                                      review_key_enabled)

REPO = Path(__file__).resolve().parent.parent


# Stand-ins with Qt's inheritance (QtWidgets), each knowing its parent widget as QWidget.parentWidget() does.
class QObject:
    pass


class QWidget(QObject):
    def __init__(self, parent=None):
        self._parent = parent

    def parentWidget(self):
        return self._parent


class QFrame(QWidget):
    pass


class QAbstractScrollArea(QFrame):
    pass


class QAbstractItemView(QAbstractScrollArea):
    pass


class QTableView(QAbstractItemView):
    pass


class QListView(QAbstractItemView):
    pass


class QTextEdit(QAbstractScrollArea):
    pass


class QPlainTextEdit(QAbstractScrollArea):
    pass


class QLineEdit(QWidget):
    pass


class QAbstractSpinBox(QWidget):
    pass


class QSpinBox(QAbstractSpinBox):
    pass


class QDoubleSpinBox(QAbstractSpinBox):
    pass


class QComboBox(QWidget):
    pass


class QAbstractButton(QWidget):
    pass


class QPushButton(QAbstractButton):
    pass


class QScrollArea(QAbstractScrollArea):
    pass


class QExpandingLineEdit(QLineEdit):
    """Qt's private editor for a table cell (what Slicer's segments table opens to rename a segment)."""


class ctkVTKOpenGLNativeWidget(QWidget):  # noqa: N801 (the slice view's render widget)
    pass


#: What Slicer's ``qt`` module offers for this test: every stand-in (QKeySequenceEdit left out, as an older
#: PythonQt might lack a class: it is skipped).
QT = SimpleNamespace(**{c.__name__: c for c in (QObject, QWidget, QFrame, QAbstractScrollArea, QAbstractItemView,
                                                 QTableView, QListView, QTextEdit, QPlainTextEdit, QLineEdit,
                                                 QAbstractSpinBox, QSpinBox, QDoubleSpinBox, QComboBox,
                                                 QAbstractButton, QPushButton, QScrollArea)})


@pytest.fixture
def panel():
    """The module panel (inside Slicer's module scroll area) and the view area holding a slice view."""
    scroll = QScrollArea()
    module_panel = QWidget(QWidget(scroll))
    viewport = QWidget()
    slice_view = ctkVTKOpenGLNativeWidget(QWidget(QWidget(viewport)))
    return SimpleNamespace(panel=module_panel, slice_view=slice_view)


def enabled(key, focus, review_open=True):
    return review_key_enabled(key, review_open, focus_takes_text(focus, QT))


def test_return_accepts_in_the_slice_view_and_on_buttons(panel):
    assert enabled("Return", panel.slice_view) and enabled("Enter", panel.slice_view)
    assert enabled("Return", QPushButton(panel.panel))
    assert enabled("Return", None)  # focus in another application window: the shortcut context decides


@pytest.mark.parametrize("where", ["author line edit", "server line edit", "segment rename editor", "spin box",
                                   "spin box's line edit", "editable combo box", "path line edit",
                                   "combo box drop-down list", "text edit", "queue table"])
def test_return_belongs_to_a_focused_text_entry_widget(panel, where):
    table = QTableView(panel.panel)
    combo = QComboBox(QWidget(panel.panel))  # ctkPathLineEdit: a QWidget holding an editable QComboBox
    focus = {
        "author line edit": QLineEdit(panel.panel),
        "server line edit": QLineEdit(QFrame(panel.panel)),
        "segment rename editor": QExpandingLineEdit(QWidget(table)),  # the editor lives on the table's viewport
        "spin box": QSpinBox(panel.panel),
        "spin box's line edit": QLineEdit(QDoubleSpinBox(panel.panel)),
        "editable combo box": QLineEdit(QComboBox(panel.panel)),
        "path line edit": QLineEdit(combo),
        "combo box drop-down list": QListView(QFrame(QComboBox(panel.panel))),  # the popup's parent is the combo
        "text edit": QWidget(QTextEdit(panel.panel)),  # the text edit's viewport has the focus
        "queue table": table,
    }[where]
    assert focus_takes_text(focus, QT)
    assert not enabled("Return", focus) and not enabled("Enter", focus)
    # keys with a modifier are no text entry: they stay review keys everywhere
    for key in ("Alt+R", "Alt+S", "Alt+Right", "Alt+Left"):
        assert enabled(key, focus), key


def test_nothing_fires_while_no_store_is_open(panel):
    for key in ("Return", "Enter", "Alt+R"):
        assert not enabled(key, panel.slice_view, review_open=False)
        assert not enabled(key, QLineEdit(panel.panel), review_open=False)


def test_classes_the_qt_module_lacks_are_skipped_and_a_parent_loop_ends():
    assert not focus_takes_text(QLineEdit(), SimpleNamespace())  # no classes known: nothing counts as text entry
    looped = QWidget()
    looped._parent = looped
    assert not focus_takes_text(looped, QT)
    assert "QKeySequenceEdit" in TEXT_ENTRY_CLASSES and not hasattr(QT, "QKeySequenceEdit")
    assert focus_takes_text(QLineEdit(), QT)


def test_every_plain_review_key_is_a_text_key():
    """A review key without a modifier (Return, Enter, or any added later) must yield to text entry: it has to be
    in TEXT_KEYS. Keys with a modifier are not typed into a field."""
    module = REPO / "NerveSeg" / "NerveSeg.py"
    tree = ast.parse(module.read_text(encoding="utf-8"))
    keys = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                and ast.unparse(n.targets[0]) == "REVIEW_KEYS")
    assert set(keys["accept"]) == {"Return", "Enter"}
    for action, sequences in keys.items():
        for key in sequences:
            assert "+" in key or key in TEXT_KEYS, f"{action}: {key!r} has no modifier but is not in TEXT_KEYS"
