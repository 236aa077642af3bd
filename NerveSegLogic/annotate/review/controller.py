"""ReviewController: what the annotation review panel's buttons do, written without Qt (tested outside Slicer).

A :class:`~NerveSegLogic.annotate.session.ReviewSession` shown in MRML for Slicer's Segment Editor, every edit
saved to the store before moving on.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ...frame import ImageGeometry
from ...signals import Signal
from ...classes import classes_from_mapping
from ...models import registry
from ...scene.annotation import annotation_scene, load_frame, read_mask, read_prompts
from ...store.location import store_location

#: Qt widget classes that use Return/Enter themselves: text entry (line edits, the editor Qt opens in a table cell
#: to rename a segment, the line edit inside a spin box, an editable combo box or a ctkPathLineEdit), and lists and
#: tables (a combo box's drop-down list, a table that starts editing on Return on macOS). While one of them, or a
#: widget inside one, has the keyboard focus, the review keys that are plain text keys (:data:`TEXT_KEYS`) are off.
TEXT_ENTRY_CLASSES = ("QLineEdit", "QTextEdit", "QPlainTextEdit", "QAbstractSpinBox", "QComboBox",
                      "QAbstractItemView", "QKeySequenceEdit")
#: Review keys that a text-entry widget needs (Return/Enter end an entry or commit a table cell's edit).
TEXT_KEYS = ("Return", "Enter")


def focus_takes_text(widget, qt_module) -> bool:
    """Whether ``widget`` (the widget with the keyboard focus, or None) or one of its parents is one of
    :data:`TEXT_ENTRY_CLASSES`. ``qt_module``: Slicer's ``qt`` module (or anything that names those classes; classes
    it lacks are skipped). Parents are followed with ``parentWidget()``, so a drop-down list counts as its combo box."""
    classes = tuple(getattr(qt_module, name) for name in TEXT_ENTRY_CLASSES if getattr(qt_module, name, None))
    seen = 0
    while widget is not None and seen < 256:  # a bound, in case a stand-in's parents loop
        if classes and isinstance(widget, classes):
            return True
        parent = getattr(widget, "parentWidget", None)
        widget = parent() if callable(parent) else None
        seen += 1
    return False


def review_key_enabled(key: str, review_open: bool, focus_in_text_entry: bool) -> bool:
    """Whether the review shortcut on ``key`` (e.g. "Return", "Alt+R") may fire now: only while a store is open, and
    for :data:`TEXT_KEYS` only while the focus is not in a text-entry widget (:func:`focus_takes_text`), so Return
    in the Author or Server field, or while renaming a segment, does what it does there instead of Accept."""
    if not review_open:
        return False
    return not (key in TEXT_KEYS and focus_in_text_entry)


#: What each prompt placement puts into the views' clicks: the markups node (by position in
#: ``start_prompts``' tuple) and whether place mode stays on after each click (persistent).
PROMPT_PLACEMENTS = {"box": (0, False), "include": (1, True), "exclude": (2, True)}


def _default_review_classes() -> Dict[int, str]:
    """Classes offered for frames that have no mask yet: the default model's ({label: key})."""
    card = registry.card(registry.default_name())
    return {c.label: c.key for c in card.classes}


def _default_session_factory(store_path: str, author: str, order: str):
    # The package's own imports inside functions here are lazy on purpose: they load OpenCV, which importing this
    # module must not.
    from ..session import ReviewSession
    from ...store.database import AnnotationStore

    store = AnnotationStore(store_path)
    try:
        return ReviewSession(store, author, order=order, classes=_default_review_classes())
    except BaseException:
        store.close()
        raise


def _default_load_frame(image, mask, geometry, classes, mrml_scene=None):
    return load_frame(image, mask, geometry, classes, mrml_scene=mrml_scene)


def _default_read_mask(segmentation_node, volume_node, classes):
    return read_mask(segmentation_node, volume_node, classes)


class ReviewConflict(RuntimeError):
    """Someone else saved the frame while it was being edited. The panel shows this message; the edit was kept."""


class ReviewController:
    """What the annotation panel's buttons do: review a store's frames one by one in Slicer's Segment Editor.

    ``open(store, author)`` starts a :class:`~NerveSegLogic.annotate.session.ReviewSession`; the current frame's
    image and mask go into a volume node and a segmentation node (``scene.annotation.load_frame``, the same nodes
    from frame to frame, so Segment Editor keeps its selection) where the annotator corrects them. ``accept``,
    ``reject``, ``skip``, ``next`` and ``previous`` first read back what was painted (``read_mask``) and hand it to
    the session, which saves it to the store when it changed, and only then move on: moving never loses an edit.

    When someone else saved the frame meanwhile, the store refuses (ConflictError): the frame is re-read with their
    version as the new base, the annotator's edit is put back into the segmentation node, and
    :class:`ReviewConflict` says who saved and what to do. Pressing Accept again saves the edit over theirs.

    Signal ``changed(ReviewController)`` after every move (the widget refreshes position, queue and history).
    """

    def __init__(self, mrml_scene=None, *, session_factory=_default_session_factory,
                 load_frame=_default_load_frame, read_mask=_default_read_mask):
        self.mrml_scene = mrml_scene
        self._session_factory = session_factory
        self._load_frame = load_frame
        self._read_mask = read_mask
        self.session = None
        self.volume_node = None
        self.segmentation_node = None
        self._shown = None  # the CurrentFrame the nodes show
        self._shown_classes: Tuple[Any, ...] = ()
        self._scores: Dict[int, Optional[float]] = {}
        self.prompts = None  # a ReviewPrompt once start_prompts() was called
        self._promptable = None  # the promptable model of refine / propagate when the prompt tool is not started
        self._prompt_nodes: Optional[Tuple[Any, Any, Any]] = None
        self.placing: Optional[str] = None  # the prompt placement started last ("box", "include", "exclude")
        self.changed = Signal("review_changed")

    @property
    def is_open(self) -> bool:
        return self.session is not None

    def open(self, store_path: str, author: str, order: str = "uncertainty") -> None:
        """Open the store at ``store_path`` for ``author`` (frames in ``order``: uncertainty or index) and show the
        first frame. ValueError for no store or an empty author (every save records who made it); the store's
        own errors (not a NerveSeg store, unreadable) pass through."""
        path = store_location(store_path or "")  # the panel's path field hands a URL over as a Path: postgresql:/...
        if not path or path == ".":
            raise ValueError("choose an annotation store file (.db), or enter a team store's address "
                             "(postgresql://USER@HOST[:PORT]/DB)")
        if not str(author or "").strip():
            raise ValueError("enter your name as the author: every saved mask records who made it")
        self.close()
        self.session = self._session_factory(path, str(author).strip(), order)
        self._scores = self._queue_scores(order)
        self.show()

    def _require(self):
        if self.session is None:
            raise RuntimeError("open an annotation store first")
        return self.session

    def _queue_scores(self, order: str) -> Dict[int, Optional[float]]:
        try:
            from ..queue import review_queue

            return {e.frame_id: e.score for e in review_queue(self.session.store, order=order)}
        except Exception:  # a stand-in session in tests, or an old store: the queue shows no scores
            return {}

    def current(self):
        """The session's current frame (a CurrentFrame), or None once past the last one."""
        return self._require().current()

    def show(self, mask: Optional[np.ndarray] = None) -> Tuple[Any, Any]:
        """Put the current frame (and its stored mask, or ``mask``) into the annotation nodes; returns them."""
        item = self._require().current()
        self._shown = item
        if item is not None:
            self._shown_classes = classes_from_mapping(item.classes)
            self.volume_node, self.segmentation_node = self._load_frame(
                item.image, item.mask if mask is None else mask, item.geometry or ImageGeometry(),
                self._shown_classes, mrml_scene=self.mrml_scene)
        self.changed.emit(self)
        return self.volume_node, self.segmentation_node

    def edited_mask(self) -> Optional[np.ndarray]:
        """The labelmap as it is now in the segmentation node (what the annotator painted), or None."""
        if self._shown is None or self.segmentation_node is None:
            return None
        return self._read_mask(self.segmentation_node, self.volume_node, self._shown_classes)

    def _move(self, action: str) -> None:
        from ...store.database import ConflictError

        session = self._require()
        mask = self.edited_mask()
        try:
            getattr(session, action)(mask=mask)
        except ConflictError as conflict:
            session.reload()  # the other person's version becomes the base
            self.show(mask=mask)  # and the annotator's edit goes back on screen, unsaved but not lost
            raise ReviewConflict(f"{conflict} Their version is now the base and your edit is shown again: press "
                                 f"Accept to save it over theirs, or Next/Skip to keep theirs.") from conflict
        self._clear_prompt_nodes()  # prompts belong to the frame they were placed on
        self.show()

    def accept(self) -> None:
        """Save the frame's mask as it is now (as "corrected" when it was edited) with status accepted; next frame.

        When the mask shown is the prompt's preview (nothing painted over it since), it is saved as a ``prompt``
        version with its box and clicks, so the store says how it was made."""
        prompts = self.prompts
        if prompts is not None and prompts.preview is not None:
            edited = self.edited_mask()
            if edited is not None and np.array_equal(edited, prompts.preview):
                from ...store.database import ConflictError

                try:
                    prompts.accept()
                except ConflictError as conflict:
                    self._require().reload()
                    self.show(mask=edited)
                    raise ReviewConflict(f"{conflict} Their version is now the base and your prompt's mask is shown "
                                         f"again: press Accept to save it over theirs.") from conflict
                self._clear_prompt_nodes()
                self.show()
                return
        self._move("accept")

    # -------------------------------------------------------------------------------------------- prompts
    def start_prompts(self, class_key: str, model=None):
        """Correct the current frame's ``class_key`` with a box and clicks (issue 15): returns the prompt markups
        ``(roi, include points, exclude points)`` the annotator places on the frame. ``model``: a promptable
        model (default: the default promptable model on ONNX Runtime, loaded once; needs torch and
        onnxruntime)."""
        session = self._require()
        if self.prompts is None:
            from .prompts import ReviewPrompt

            model = model or self._promptable_model()
            self.prompts = ReviewPrompt(session, model, class_key=class_key)
        if self.prompts.box or self.prompts.points:
            self.prompts.set_class(class_key)  # the prompts stay: run them for the new class
        else:
            self.prompts.class_key = class_key
        if not self.prompt_nodes_in_scene():
            # First use, or the scene was closed (File > Close Scene removes every node): the cached nodes are no
            # longer in the scene, and placing into them would place nothing. Find or create them again.
            from ...scene.annotation import prompt_nodes

            self._prompt_nodes = prompt_nodes(self.mrml_scene)
            self.placing = None
        return self._prompt_nodes

    def _scene(self):
        if self.mrml_scene is not None:
            return self.mrml_scene
        return annotation_scene()

    def prompt_nodes_in_scene(self) -> bool:
        """Whether the prompt markups of :meth:`start_prompts` exist and are all still in the scene."""
        if self._prompt_nodes is None:
            return False
        scene = self._scene()
        return all(node is not None and node.GetScene() is not None and scene.IsNodePresent(node)
                   for node in self._prompt_nodes)

    def prompt_placement(self, kind: str = "auto") -> Tuple[Any, bool]:
        """``(markups node, persistent)`` for the next placement in the views (after :meth:`start_prompts`).

        kind: "box" (the ROI, placed once: place mode ends after it), "include" or "exclude" (that point list;
        persistent: every click adds a point until the annotator leaves place mode with Esc or a right click), or
        "auto": the box while none is placed, else include clicks."""
        kind = self._placement_kind(kind)
        index, persistent = PROMPT_PLACEMENTS[kind]
        return self._prompt_nodes[index], persistent

    def _placement_kind(self, kind: str) -> str:
        if not self.prompt_nodes_in_scene():
            raise RuntimeError("start the prompt tool first (start_prompts)")
        if kind == "auto":
            kind = "box" if self._prompt_nodes[0].GetNumberOfControlPoints() == 0 else "include"
        if kind not in PROMPT_PLACEMENTS:
            raise ValueError(f"prompt placement: expected one of auto, {', '.join(PROMPT_PLACEMENTS)}, got {kind!r}")
        return kind

    def place_prompts(self, kind: str, selection_node, interaction_node) -> str:
        """Make the views' next clicks place ``kind`` (see :meth:`prompt_placement`); returns the kind started.

        Does with MRML nodes what Slicer's Markups logic does (``SetActiveList`` and ``StartPlaceMode``): the
        selection node's active place node class and id, then the interaction node's place-mode persistence and
        mode. selection_node, interaction_node: the application's (``slicer.app.applicationLogic()``)."""
        kind = self._placement_kind(kind)
        node, persistent = self.prompt_placement(kind)
        if selection_node.GetActivePlaceNodeClassName() != node.GetClassName():
            selection_node.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        if selection_node.GetActivePlaceNodeID() != node.GetID():
            selection_node.SetReferenceActivePlaceNodeID(node.GetID())
        interaction_node.SetPlaceModePersistence(1 if persistent else 0)
        interaction_node.SetCurrentInteractionMode(interaction_node.Place)
        self.placing = kind
        return kind

    def end_placement(self, selection_node, interaction_node) -> bool:
        """Leave place mode if it places into the prompt markups (the panel calls this after moving to another
        frame: the prompts were cleared, and the next click there belongs to the annotator's next tool). Place-mode
        persistence goes back to single, Slicer's default. Returns whether place mode was left."""
        self.placing = None  # set first: the EndPlacementEvent this raises must not start the clicks
        if not self.prompt_nodes_in_scene() or interaction_node.GetCurrentInteractionMode() != interaction_node.Place:
            return False
        if selection_node.GetActivePlaceNodeID() not in {node.GetID() for node in self._prompt_nodes}:
            return False  # the annotator places something else (Markups module): not ours to end
        interaction_node.SetPlaceModePersistence(0)
        interaction_node.SetCurrentInteractionMode(interaction_node.ViewTransform)
        return True

    def placement_ended(self, selection_node, interaction_node) -> Optional[str]:
        """The views left place mode (the interaction node's EndPlacementEvent). Right after the box was placed, go
        on with include clicks (persistent), so one press of "Box and clicks" places the box and then the clicks;
        returns the placement started then, else None (the annotator ended the clicks, or cancelled the box)."""
        placing, self.placing = self.placing, None
        if placing != "box" or not self.prompt_nodes_in_scene() or self.prompts is None:
            return None
        if self._prompt_nodes[0].GetNumberOfControlPoints() == 0:
            return None  # the box was cancelled: nothing placed
        return self.place_prompts("include", selection_node, interaction_node)

    def prompt_changed(self) -> Optional[np.ndarray]:
        """The annotator placed, moved or removed a box or click: run the prompt on what the markups hold now and
        show the class's new mask in the segmentation node (the other classes unchanged). Returns the labelmap
        shown, or None while there is neither a box nor an include click."""
        if self.prompts is None or not self.prompt_nodes_in_scene() or self.volume_node is None:
            raise RuntimeError("start the prompt tool first (start_prompts)")
        box, points = read_prompts(self.volume_node, *self._prompt_nodes)
        preview = self.prompts.set_prompts(box, points)
        if preview is not None:
            item = self._shown
            self.volume_node, self.segmentation_node = self._load_frame(
                item.image, preview, item.geometry or ImageGeometry(), self._shown_classes, mrml_scene=self.mrml_scene)
        return preview

    def _clear_prompt_nodes(self) -> None:
        if self.prompt_nodes_in_scene():
            from ...scene.annotation import clear_prompts

            clear_prompts(*self._prompt_nodes)

    # ----------------------------------------------------------------------- refine, propagate (issue 26)
    def _promptable_model(self, model=None):
        """``model``, else the prompt tool's model, else the default promptable model (loaded once)."""
        if model is not None:
            return model
        if self.prompts is not None:
            return self.prompts.prompter.model
        if self._promptable is None:
            from ...inference.promptable import PromptableSegmenter

            self._promptable = PromptableSegmenter.from_name()
        return self._promptable

    def refine_shown(self, model=None, min_iou: Optional[float] = None, grow: Optional[float] = None):
        """The panel's "Refine" button: each region of the shown mask (a model's pre-label, say) prompts the
        promptable model with its box, grown a little, and its mask replaces the region where the model's predicted
        IoU reaches ``min_iou`` (default :data:`~NerveSegLogic.annotate.prelabel.REFINE_MIN_IOU`), as
        ``nerveseg annotate prelabel --refine`` does. Saved as a draft version on top of the shown one (origin and
        model of the shown version, the promptable model and each region's decision in its comment) and shown.
        Returns the decisions; nothing is saved when no region changed. An edit painted but not saved is refined
        and saved with it. ConflictError (as :class:`ReviewConflict`) when someone saved the frame meanwhile."""
        from ..prelabel import REFINE_GROW, REFINE_MIN_IOU, PrelabelRefiner
        from ...store.database import ConflictError

        session = self._require()
        item = session.current()
        if item is None:
            raise IndexError("the review session is finished: no frame to refine")
        model = self._promptable_model(model)
        refiner = PrelabelRefiner(session.store, model, grow=REFINE_GROW if grow is None else grow,
                                  min_iou=REFINE_MIN_IOU if min_iou is None else min_iou)
        edited = self.edited_mask()
        base = item.mask if edited is None else edited
        refined, decisions = refiner.refine(item.frame_id, base, item.classes)
        if np.array_equal(refined, item.mask):
            return decisions
        shown = item.version
        from_model = shown is not None and shown.origin == "model"  # a pre-label keeps its model's name and sha256
        name = shown.model_name if from_model else model.card.name
        sha = shown.model_sha256 if from_model else model.model_sha256
        try:
            session.store.save_mask(item.frame_id, refined, item.classes, session.author, "model",
                                    None if shown is None else shown.id, model_name=name, model_sha256=sha,
                                    uncertainty=None if shown is None else shown.uncertainty,
                                    comment=refiner.note(decisions))
        except ConflictError as conflict:
            session.reload()
            self.show(mask=base)
            raise ReviewConflict(f"{conflict} Their version is now the base; press Refine again to refine it.") \
                from conflict
        session.reload()
        self.show()
        return decisions

    def propagate_shown(self, count: Optional[int] = None, to_frame: Optional[int] = None, model=None,
                        min_iou: Optional[float] = None):
        """The panel's "Propagate" button: carry an accepted mask through the next frames of the recording
        (``nerveseg annotate propagate``) as draft ``propagated`` versions, stopping where the promptable model is
        unsure or the structure leaves the view. It starts from the shown frame when its mask is accepted, else
        from the nearest earlier frame of the same recording whose mask is (the one just accepted: Accept moves on,
        so Propagate then fills the shown frame and those after it). Returns the
        :class:`~NerveSegLogic.annotate.propagate.PropagationReport` (its ``summary()`` is the panel's message);
        PropagationError names the shown frame when no accepted mask precedes it. The shown frame is re-read."""
        from ..propagate import MIN_IOU, PropagationError, propagate

        session = self._require()
        item = session.current()
        if item is None:
            raise IndexError("the review session is finished: no frame to propagate from")
        store = session.store
        start = item.frame_id if item.version is not None and item.version.status == "accepted" else None
        if start is None:
            record = item.record
            current = {v.frame_id: v for v in store.summaries(current_only=True)}
            earlier = sorted((f for f in store.frames() if f.source == record.source and f.index < record.index),
                             key=lambda f: f.index, reverse=True)
            start = next((f.id for f in earlier if f.id in current and current[f.id].status == "accepted"), None)
            if start is None:
                raise PropagationError(f"frame {record.id} has no accepted mask, and no earlier frame of its "
                                       f"recording ({record.source}) has one: accept a frame's mask first")
        report = propagate(store, self._promptable_model(model), start, session.author, to_frame=to_frame,
                           count=count, min_iou=MIN_IOU if min_iou is None else min_iou)
        session.reload()
        self.show()
        return report

    def merge_authors(self, method: str = "staple", whole_store: bool = False):
        """The panel's "Merge annotators" button: ``nerveseg annotate consensus`` on the shown frame (or on the
        whole store): the latest accepted labels of two or more authors merged per class (STAPLE or majority) into
        an accepted ``consensus`` version recording its sources. Returns the
        :class:`~NerveSegLogic.annotate.consensus.ConsensusReport` (its ``table()`` is the panel's message: frames
        merged, frames with one author left alone, each annotator's sensitivity and specificity). The shown frame
        is re-read."""
        from ..consensus import consensus

        session = self._require()
        item = session.current()
        if item is None and not whole_store:
            raise IndexError("the review session is finished: no frame to merge")
        report = consensus(session.store, session.author, method=method,
                           frame_ids=None if whole_store else [item.frame_id])
        session.reload()
        self.show()
        return report

    def labelled_by_rows(self) -> List[Tuple[str, ...]]:
        """Header, then who labelled the shown frame: each author's own label (their latest manual or corrected
        mask, or any mask they accepted; a later rejection withdraws it, as ``annotate agreement`` counts), its
        version and status, and its mean Dice with the other authors' labels (per class key, averaged over the
        classes either drew); then the frame's consensus version, if any."""
        from ..agreement import class_dice, labels_by_author

        rows = [("Who", "Version", "Status", "Dice with the others")]
        item = self._shown
        if item is None or self.session is None:
            return rows
        store = self.session.store
        history = store.summaries(frame_id=item.frame_id)
        labels = {a: v for a, v in labels_by_author([v for v in history if v.origin != "consensus"]).items()}
        masks = {a: store.mask(v.mask_sha256) for a, v in labels.items()}
        for author, version in sorted(labels.items()):
            scores = []
            for other, other_version in labels.items():
                if other == author:
                    continue
                dice = class_dice(masks[author], version.classes, masks[other], other_version.classes)
                scores.extend(d for d in dice.values() if d is not None)
            rows.append((author, f"v{version.id}", version.status, f"{np.mean(scores):.3f}" if scores else ""))
        from ..consensus import consensus_sources

        merged = [v for v in history if consensus_sources(v)]
        if merged:
            sources = consensus_sources(merged[-1])
            rows.append((f"consensus ({sources.get('method', '?')})", f"v{merged[-1].id}", merged[-1].status,
                         f"of {len(sources.get('sources', []))} authors"))
        return rows

    def agreement_text(self) -> str:
        """One line for the panel: who labelled the shown frame and their mean Dice with each other per class."""
        from ..agreement import class_dice, labels_by_author

        item = self._shown
        if item is None or self.session is None:
            return ""
        store = self.session.store
        history = [v for v in store.summaries(frame_id=item.frame_id) if v.origin != "consensus"]
        labels = labels_by_author(history)
        if not labels:
            return "No annotator's label yet"
        if len(labels) == 1:
            return f"Labelled by {next(iter(labels))} only"
        authors = sorted(labels)
        per_class: Dict[str, List[float]] = {}
        for i, a in enumerate(authors):
            for b in authors[i + 1:]:
                dice = class_dice(store.mask(labels[a].mask_sha256), labels[a].classes,
                                  store.mask(labels[b].mask_sha256), labels[b].classes)
                for key, value in dice.items():
                    if value is not None:
                        per_class.setdefault(key, []).append(value)
        parts = ", ".join(f"{key} {np.mean(v):.2f}" for key, v in sorted(per_class.items()))
        return f"Labelled by {', '.join(authors)}; mean Dice between them: {parts or '-'}"

    def reject(self) -> None:
        """Mark the frame rejected (keeping any edit as its mask); next frame."""
        self._move("reject")

    def skip(self) -> None:
        """Next frame without a decision; an edit made here is saved first (as a draft)."""
        self._move("skip")

    def next(self) -> None:
        """Next frame; an edit is saved first (as a draft)."""
        self._move("next")

    def previous(self) -> None:
        """Previous frame; an edit is saved first (as a draft)."""
        self._move("previous")

    # -------------------------------------------------------------------------------------------- panel text
    def position_text(self) -> str:
        if self.session is None:
            return "No store open"
        item = self._shown
        if item is None:
            return f"Review finished: {len(self.session)} frames. Previous goes back."
        record = item.record
        return (f"Frame {item.position + 1} of {item.total}: id {record.id} ({record.source} #{record.index}), "
                f"{item.status}")

    def queue_rows(self) -> List[Tuple[str, ...]]:
        """Header, then one row per frame of the session in review order: position, id, status, queue score."""
        if self.session is None:
            return [("#", "Frame", "Status", "Score")]
        latest: Dict[int, str] = {}
        for summary in self.session.store.summaries():
            latest[summary.frame_id] = summary.status  # summaries come oldest first: the last one is current
        position = self._shown.position if self._shown is not None else None
        rows = [("#", "Frame", "Status", "Score")]
        for index, frame_id in enumerate(self.session.frame_ids):
            score = self._scores.get(frame_id)
            mark = ">" if index == position else ""
            rows.append((f"{mark}{index + 1}", str(frame_id), latest.get(frame_id, "unlabelled"),
                         "" if score is None else f"{score:.3f}"))
        return rows

    def history_rows(self) -> List[Tuple[str, ...]]:
        """Header, then the shown frame's versions, oldest first: who saved what, when, with which status."""
        rows = [("Version", "When (UTC)", "Who", "Change")]
        if self._shown is not None:
            for entry in self._shown.history:
                rows.append((f"v{entry.version_id}", entry.created[:19].replace("T", " "), entry.author,
                             entry.change))
        return rows

    def close(self) -> None:
        """Close the session and its store (the annotation nodes stay in the scene)."""
        session, self.session = self.session, None
        self._shown = None
        self.placing = None
        prompts, self.prompts = self.prompts, None
        if prompts is not None:
            prompts.close()
        if session is not None:
            session.store.close()


