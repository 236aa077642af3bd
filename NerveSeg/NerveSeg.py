"""NerveSeg: live segmentation of nerve-block ultrasound in 3D Slicer. Research use only, not for clinical decisions.

Thin by design: every button's behaviour lives in the NerveSegLogic package (LiveController, ReviewController,
install.slicer_packages), which is tested outside Slicer. This file only binds the panel to it. Note the package and
this module's Logic class share the name NerveSegLogic: the package is only imported with ``from NerveSegLogic.x ...``.
"""

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Installed, NerveSegLogic sits next to this file; in a source checkout, one folder up.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_folder, "NerveSegLogic")) and _folder not in sys.path:
        sys.path.insert(0, _folder)

from NerveSegLogic.igtl import DEFAULT_PORT, IMAGE_DEVICE_NAME, SERVE_PORT  # noqa: E402 (imports nothing)
from NerveSegLogic.install import slicer_packages  # noqa: E402 (needs the path above; imports no torch, no qt)
from NerveSegLogic.annotate.review.controller import (ReviewController, focus_takes_text,  # noqa: E402
                                                       review_key_enabled)
from NerveSegLogic.live.controller import LiveController  # noqa: E402

#: The image region choices of the panel (see LiveController.set_region): the whole frame, found automatically, or
#: the pixels inside a markups ROI the user draws over the live image.
REGION_MODES = ["Whole frame", "Automatic", "Drawn ROI"]

#: Review keys: they work in the slice views (where the annotator paints) and in this panel. Return/Enter (Accept)
#: yield to a focused text-entry widget (review_key_enabled): Return in the Author field, or while renaming a
#: segment, ends that entry and does not save the frame.
REVIEW_KEYS = {"accept": ("Return", "Enter"), "reject": ("Alt+R",), "skip": ("Alt+S",), "next": ("Alt+Right",),
               "previous": ("Alt+Left",)}
#: Prompt buttons -> the placement they start (ReviewController.place_prompts): "Box and clicks" places the box,
#: then include clicks until Esc; "Exclude clicks" places exclude clicks until Esc.
PROMPT_BUTTONS = {"promptButton": "auto", "excludePromptButton": "exclude"}


#
# NerveSeg
#
class NerveSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NerveSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Ultrasound")]
        self.parent.dependencies = []
        self.parent.contributors = ["NerveSeg contributors"]
        self.parent.helpText = _(
            "Live segmentation of nerves and blood vessels in ultrasound for regional anaesthesia: OpenIGTLink "
            "images from PLUS (or a volume node) in, a model from the NerveSeg zoo, Slicer segments out, with "
            "recording and an annotation review panel. <b>Research use only, not for clinical decisions.</b>")
        self.parent.acknowledgementText = _(
            "Models after Smistad et al. (IUS 2021), Kim et al. (SA-UNet), Wu et al. (AAAI 2021) and Ding et al. "
            "(BPMSegNet). Sample frames: usgra-seg, CC-BY 4.0 (see Resources/Sample/ATTRIBUTION.md).")


#
# NerveSegParameterNode
#
@parameterNodeWrapper
class NerveSegParameterNode:
    useVolumeNode: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, WithinRange(1, 65535)] = DEFAULT_PORT
    deviceName: str = IMAGE_DEVICE_NAME
    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    backend: Annotated[str, Choice(["auto", "torch", "onnx", "onnx-int8"])] = "auto"
    compute: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    threads: Annotated[int, WithinRange(0, 64)] = 0
    mode: Annotated[str, Choice(["child-process", "in-process", "remote"])] = "child-process"
    remoteHost: str = "127.0.0.1"
    remotePort: Annotated[int, WithinRange(1, 65535)] = SERVE_PORT
    record: bool = True
    recordMinutes: Annotated[float, WithinRange(0.0, 600.0)] = 0.0
    recordMegabytes: Annotated[int, WithinRange(64, 65536)] = 1024
    atLimit: Annotated[str, Choice(["stop", "drop-oldest"])] = "stop"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    fill: bool = True
    outline: bool = True
    showNames: bool = True
    steady: bool = True
    regionMode: Annotated[str, Choice(REGION_MODES)] = "Whole frame"
    regionRoi: vtkMRMLMarkupsROINode
    storePath: Path
    author: str = ""
    reviewOrder: Annotated[str, Choice(["uncertainty", "index"])] = "uncertainty"


#
# NerveSegWidget
#
class NerveSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._shortcuts = []  # (QShortcut, key)
        self._promptNodes = None  # the prompt markups (roi, include, exclude) observed
        self._promptObserved = []  # (node, event) observed by onPromptMarkupsChanged / onPlacementEnded

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        from NerveSegLogic.resources import resources_dir

        uiWidget = slicer.util.loadUI(str(resources_dir() / "UI" / "NerveSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = NerveSegLogic()
        controller = self.logic.controller

        self.ui.modelComboBox.addItems(controller.model_names())
        self.ui.modelComboBox.currentIndexChanged.connect(self.onModelChanged)
        self.ui.installButton.clicked.connect(self.onInstall)
        self.ui.startButton.clicked.connect(self.onStart)
        self.ui.stopButton.clicked.connect(self.onStop)
        self.ui.openStoreButton.clicked.connect(self.onOpenStore)
        self.ui.promptClassComboBox.addItems(["nerve", "blood_vessel"])
        self.ui.refineButton.clicked.connect(self.onRefine)
        self.ui.propagateButton.clicked.connect(self.onPropagate)
        self.ui.mergeButton.clicked.connect(self.onMerge)
        for name in PROMPT_BUTTONS:
            getattr(self.ui, name).clicked.connect(lambda checked=False, k=PROMPT_BUTTONS[name]: self.onPrompt(k))
        for action in REVIEW_KEYS:
            getattr(self.ui, f"{action}Button").clicked.connect(lambda checked=False, a=action: self.onReview(a))
            for parent in self._shortcutParents():
                for key in REVIEW_KEYS[action]:
                    shortcut = qt.QShortcut(qt.QKeySequence(key), parent)
                    shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
                    shortcut.activated.connect(lambda a=action: self.onReview(a))
                    shortcut.setEnabled(False)
                    self._shortcuts.append((shortcut, key))
        # Return/Enter must reach a line edit or a table cell's editor when one has the focus: the shortcuts follow
        # the focus (a disabled QShortcut lets the key through to the focused widget).
        slicer.app.focusChanged.connect(self.onFocusChanged)

        controller.status_changed.connect(self.onStatusChanged)
        controller.running_changed.connect(self.onRunningChanged)
        controller.first_frame.connect(self._showInViews)  # fit the views once the first image exists
        self.ui.workerLogButton.clicked.connect(self.onShowWorkerLog)
        self.ui.regionComboBox.currentIndexChanged.connect(self.onRegionChanged)
        self.ui.regionRoiSelector.currentNodeChanged.connect(self.onRegionRoiChanged)
        self.logic.review.changed.connect(self.onReviewChanged)
        # Results reach MRML only here, on the main thread; 5 ms keeps up with any scanner frame rate.
        self._timer = qt.QTimer()
        self._timer.setInterval(5)
        self._timer.timeout.connect(controller.tick)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        self.refreshDependencies()
        self.onRunningChanged(False)

    def _shortcutParents(self):
        layoutManager = slicer.app.layoutManager()  # None when Slicer runs without a main window (tests)
        return [self.parent] + ([layoutManager.viewport()] if layoutManager is not None else [])

    def cleanup(self) -> None:
        """Module reload or Slicer exit: nothing keeps running."""
        self.removeObservers()
        self._promptObserved = []
        self._promptNodes = None
        try:
            slicer.app.focusChanged.disconnect(self.onFocusChanged)
        except Exception:  # never connected (setup failed early)
            pass
        if self._timer is not None:
            self._timer.stop()
        for shortcut, _key in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()  # some live on the view area, which outlives this widget on reload
        self._shortcuts = []
        if self.logic is not None:
            self.logic.cleanup()
        self.setParameterNode(None)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)  # the run goes on: a clinician may open other modules while scanning

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.controller.on_scene_close()
        self.logic.review.close()
        self._unobservePrompts()  # the prompt markups leave with the scene; the next prompt makes new ones
        self._updateShortcuts()
        self.ui.segmentsTableView.setSegmentationNode(None)
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.modelName and self.ui.modelComboBox.count:
            self._parameterNode.modelName = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.currentText = self._parameterNode.modelName
        self.onModelChanged()

    def setParameterNode(self, inputParameterNode: Optional[NerveSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParametersChanged)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParametersChanged)
            self.onParametersChanged()

    def onParametersChanged(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        for name in ("hostLineEdit", "portSpinBox", "deviceNameLineEdit"):
            getattr(self.ui, name).enabled = not p.useVolumeNode
        self.ui.inputVolumeSelector.enabled = p.useVolumeNode
        self.ui.remoteHostLineEdit.enabled = self.ui.remotePortSpinBox.enabled = p.mode == "remote"
        self.logic.applyDisplay(p)

    def refreshDependencies(self) -> None:
        missing = slicer_packages.check()
        self.ui.dependenciesLabel.text = slicer_packages.missing_summary(missing)
        self.ui.installButton.visible = bool(missing)

    def onInstall(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Installing the Python packages failed."), waitCursor=True):
            slicer_packages.install(slicer, ask=True)
        self.refreshDependencies()

    def onModelChanged(self, index=None) -> None:
        name = self.ui.modelComboBox.currentText
        if not name or self._parameterNode is None:
            return
        self._parameterNode.modelName = name
        with slicer.util.tryWithErrorDisplay(_("Cannot read the card of model {name}.").format(name=name)):
            p = self._parameterNode
            self.ui.modelCardTextBrowser.setPlainText(self.logic.controller.select_model(name, p.backend, p.compute))
        self.offerWeightsDownload()

    def offerWeightsDownload(self) -> None:
        """The chosen model's weights are a release download not on this machine: ask, then fetch them with a
        progress dialog (the download resumes where it stopped if cancelled or cut)."""
        controller = self.logic.controller
        need = controller.weights_to_fetch()
        if need is None:
            return
        size = f" ({need['size'] / 1e6:.0f} MB)" if need["size"] else ""
        if not slicer.util.confirmOkCancelDisplay(
                _("The weights of {name}{size} are not on this computer. Download them now from {url}?").format(
                    name=need["name"], size=size, url=need["url"])):
            return
        dialog = qt.QProgressDialog(_("Downloading {name}...").format(name=need["name"]), _("Cancel"), 0, 1000,
                                    slicer.util.mainWindow())
        dialog.setWindowModality(qt.Qt.WindowModal)
        dialog.minimumDuration = 0

        class Cancelled(Exception):
            pass

        def progress(done, total):
            dialog.setValue(int(1000 * done / total) if total else 0)
            slicer.app.processEvents()
            if dialog.wasCanceled:
                raise Cancelled()

        with slicer.util.tryWithErrorDisplay(_("Could not download the weights of {name}.").format(
                name=need["name"])):
            try:
                path = controller.fetch_weights(progress)
                slicer.util.showStatusMessage(_("Weights of {name} saved in {path}").format(name=need["name"],
                                                                                          path=path), 5000)
            except Cancelled:
                slicer.util.showStatusMessage(_("Download cancelled; it resumes where it stopped next time."), 5000)
            finally:
                dialog.close()
        self.ui.modelCardTextBrowser.setPlainText(
            self.logic.controller.select_model(need["name"], self._parameterNode.backend, self._parameterNode.compute))

    def onReload(self) -> None:
        """Developer-mode Reload: reload the NerveSegLogic package too, not only this file."""
        if self.logic is not None:
            self.logic.cleanup()
        for name in [n for n in sys.modules if n == "NerveSegLogic" or n.startswith("NerveSegLogic.")]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def onStatusChanged(self, status) -> None:
        self.ui.statusLabel.text = status.text(confidence=False)  # the confidence has its own label
        confidence = status.confidence_text()
        self.ui.confidenceLabel.text = _("Confidence: {classes}").format(classes=confidence) if confidence else ""

    def onRegionRoiChanged(self, node=None) -> None:
        """A ROI chosen or moved: follow its edits (end of each drag), then apply it."""
        if getattr(self, "_observedRoi", None) is not None:
            self.removeObserver(self._observedRoi, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                                self.onRegionChanged)
        self._observedRoi = node
        if node is not None:
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onRegionChanged)
        self.onRegionChanged()

    def onRegionChanged(self, *unused) -> None:
        """Segment only the image region: the whole frame, found automatically, or the drawn ROI."""
        p = self._parameterNode
        if p is None:
            return
        try:
            text = self.logic.applyRegion(p)
        except ValueError as error:
            slicer.util.errorDisplay(str(error))
            return
        self.ui.regionLabel.text = text or _("Draw a ROI over the image (Markups ROI), then choose it here.")

    def onShowWorkerLog(self) -> None:
        text = self.logic.controller.worker_log(60) or _("No worker process is running.")
        self.ui.workerLogTextBrowser.setPlainText(text)
        self.ui.workerLogTextBrowser.visible = True

    def onStart(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("NerveSeg could not start."), waitCursor=True):
            ready = slicer_packages.ensure(slicer, include_torch=self._parameterNode.mode != "remote")
            self.refreshDependencies()
            if ready:
                self.logic.start(self._parameterNode)

    def onStop(self) -> None:
        self.logic.controller.stop()

    def onRunningChanged(self, running: bool) -> None:
        if running:
            self._timer.start()
        else:
            self._timer.stop()
        self.ui.startButton.enabled = not running
        self.ui.stopButton.enabled = running
        for name in ("inputCollapsibleButton", "modelComboBox", "backendComboBox", "computeComboBox",
                     "threadsSpinBox", "modeComboBox"):
            getattr(self.ui, name).enabled = not running
        if running:
            self.ui.segmentsTableView.setSegmentationNode(self.logic.controller.segmentation_node)
            self._showInViews(self.logic.controller.volume_node)

    def onOpenStore(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot open the annotation store."), waitCursor=True):
            p = self._parameterNode
            self.logic.review.open(str(p.storePath), p.author, p.reviewOrder)
        self._updateShortcuts()

    def onFocusChanged(self, old=None, now=None) -> None:
        self._updateShortcuts(now)

    def _updateShortcuts(self, focus=None) -> None:
        """Review keys on while a store is open; Return/Enter off while a text-entry widget has the focus."""
        if focus is None:
            focus = slicer.app.focusWidget()
        typing = focus_takes_text(focus, qt)
        isOpen = self.logic is not None and self.logic.review.is_open
        for shortcut, key in self._shortcuts:
            shortcut.setEnabled(review_key_enabled(key, isOpen, typing))

    def onReview(self, action: str) -> None:
        if not self.logic.review.is_open:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not save this frame; your edit is still in the segmentation."),
                                             waitCursor=True):
            getattr(self.logic.review, action)()
            appLogic = slicer.app.applicationLogic()  # another frame: its clicks are not this frame's prompts
            self.logic.review.end_placement(appLogic.GetSelectionNode(), appLogic.GetInteractionNode())

    def onPrompt(self, kind: str = "auto") -> None:
        """Start the prompt tool on the shown frame. kind "auto" (Box and clicks): place the box first (once), then
        include clicks, one per click until Esc or a right click; "exclude" (Exclude clicks): exclude clicks, the
        same way. The markups are made again when the scene lost them (File > Close Scene)."""
        with slicer.util.tryWithErrorDisplay(_("The prompt tool could not start."), waitCursor=True):
            review = self.logic.review
            nodes = review.start_prompts(self.ui.promptClassComboBox.currentText)
            if nodes is not self._promptNodes:  # new markups (first use, or the scene lost the old ones)
                self._unobservePrompts()  # stop observing (and so keeping alive) those of a closed scene
                self._promptNodes = nodes
            for node in nodes:
                for event in (node.PointAddedEvent, node.PointModifiedEvent, node.PointRemovedEvent,
                              node.PointEndInteractionEvent):
                    self._observePrompt(node, event, self.onPromptMarkupsChanged)
            appLogic = slicer.app.applicationLogic()
            interaction = appLogic.GetInteractionNode()
            self._observePrompt(interaction, interaction.EndPlacementEvent, self.onPlacementEnded)
            review.place_prompts(kind, appLogic.GetSelectionNode(), interaction)

    def onRefine(self) -> None:
        """Refine the shown pre-label's outlines with the promptable model (a draft version on top of it)."""
        with slicer.util.tryWithErrorDisplay(_("The pre-label could not be refined."), waitCursor=True):
            decisions = self.logic.review.refine_shown()
            replaced = sum(1 for d in decisions if d.replaced)
            self.ui.reviewPositionLabel.text = _("{replaced} of {regions} regions redrawn by the promptable model; "
                                                 "{position}").format(replaced=replaced, regions=len(decisions),
                                                                      position=self.logic.review.position_text())

    def onPropagate(self) -> None:
        """Carry the accepted mask through the next frames of the recording (draft 'propagated' versions)."""
        with slicer.util.tryWithErrorDisplay(_("The mask could not be propagated."), waitCursor=True):
            report = self.logic.review.propagate_shown(count=self.ui.propagateCountSpinBox.value)
            slicer.util.showStatusMessage(report.summary(), 10000)
            slicer.util.infoDisplay(report.summary(), windowTitle=_("Propagation"))

    def onMerge(self) -> None:
        """Merge the annotators' accepted labels of the shown frame into a consensus version."""
        with slicer.util.tryWithErrorDisplay(_("The annotators' labels could not be merged."), waitCursor=True):
            report = self.logic.review.merge_authors("staple")
            slicer.util.infoDisplay(report.table(), windowTitle=_("Consensus"))

    def _observePrompt(self, node, event, method) -> None:
        if not self.hasObserver(node, event, method):
            self.addObserver(node, event, method)
            self._promptObserved.append((node, event))

    def _unobservePrompts(self) -> None:
        for node, event in self._promptObserved:
            for method in (self.onPromptMarkupsChanged, self.onPlacementEnded):
                if self.hasObserver(node, event, method):
                    self.removeObserver(node, event, method)
        self._promptObserved = []
        self._promptNodes = None

    def onPlacementEnded(self, caller=None, event=None) -> None:
        """Place mode ended: right after the box, go on with include clicks. Deferred: the markups widget that ended
        place mode is still handling the click."""
        if self.logic.review.placing == "box":
            qt.QTimer.singleShot(0, self._continueAfterBox)
        else:
            self.logic.review.placing = None

    def _continueAfterBox(self) -> None:
        appLogic = slicer.app.applicationLogic()
        with slicer.util.tryWithErrorDisplay(_("The prompt tool could not go on with the clicks.")):
            self.logic.review.placement_ended(appLogic.GetSelectionNode(), appLogic.GetInteractionNode())

    def onPromptMarkupsChanged(self, caller=None, event=None) -> None:
        if not self.logic.review.is_open or self.logic.review.prompts is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The prompt could not be applied.")):
            self.logic.review.prompt_changed()

    def onReviewChanged(self, review) -> None:
        self.ui.reviewPositionLabel.text = review.position_text()
        self._fillTable(self.ui.queueTableWidget, review.queue_rows())
        self._fillTable(self.ui.historyTableWidget, review.history_rows())
        self.ui.agreementLabel.text = review.agreement_text()
        self._fillTable(self.ui.labelledByTableWidget, review.labelled_by_rows())
        self._showInViews(review.volume_node)

    @staticmethod
    def _showInViews(volumeNode) -> None:
        if volumeNode is not None and slicer.app.layoutManager() is not None:
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)

    @staticmethod
    def _fillTable(table, rows) -> None:
        """rows: a header tuple, then value tuples (strings)."""
        header, *values = rows or [()]
        table.clear()
        table.setColumnCount(len(header))
        table.setHorizontalHeaderLabels(list(header))
        table.setRowCount(len(values))
        for r, row in enumerate(values):
            for c, value in enumerate(row):
                table.setItem(r, c, qt.QTableWidgetItem(str(value)))


#
# NerveSegLogic (this module's Logic class; the package of the same name holds the real logic)
#
class NerveSegLogic(ScriptedLoadableModuleLogic):
    def __init__(self, segmenterFactory=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        options = {"segmenter_factory": segmenterFactory} if segmenterFactory else {}
        # Remote mode too receives in the worker process: a receiver thread here would wait for the GIL.
        self.controller = LiveController(slicer.mrmlScene, remote_via_worker=True, **options)
        self.review = ReviewController(slicer.mrmlScene)

    def getParameterNode(self) -> NerveSegParameterNode:
        return NerveSegParameterNode(super().getParameterNode())

    def start(self, p: NerveSegParameterNode) -> None:
        """Choose input, model and mode from the parameters and start (errors say what to fix)."""
        c = self.controller
        if p.useVolumeNode:
            c.use_volume_node(p.inputVolume)
        else:
            c.connect(p.host, p.port, p.deviceName)
        c.select_model(p.modelName, p.backend, p.compute)
        c.threads = p.threads
        if p.mode == "remote":
            c.connect_remote(p.remoteHost, p.remotePort)
        self.applyDisplay(p)
        self.applyRegion(p)
        c.start(p.mode)

    def applyRegion(self, p: NerveSegParameterNode) -> Optional[str]:
        """The image region from the parameters; returns what the panel shows (None: Drawn ROI without a ROI yet,
        which keeps the whole frame). ValueError names a bad ROI."""
        c = self.controller
        if p.regionMode == "Automatic":
            return c.set_region("auto")
        if p.regionMode == "Drawn ROI":
            if p.regionRoi is None:
                c.set_region(None)
                return None
            return c.set_region_from_roi(p.regionRoi)
        return c.set_region(None)

    def applyDisplay(self, p: NerveSegParameterNode) -> None:
        """Pass the display settings on; the controller ignores unchanged values, so per-class opacities set in
        the segments table survive edits of other parameters."""
        c = self.controller
        c.set_recording_limits(p.recordMinutes, p.recordMegabytes, p.atLimit)
        c.set_recording(p.record)
        c.set_fill_outline(p.fill, p.outline)
        c.set_names_visible(p.showNames)
        c.set_opacity(p.opacity)
        c.set_steady(p.steady)  # unchanged: nothing; changed while running: from the next frame (worker: restarts)

    def cleanup(self) -> None:
        self.controller.cleanup()
        self.review.close()


#
# NerveSegTest
#
class NerveSegTest(ScriptedLoadableModuleTest):
    """Replays the bundled sample over OpenIGTLink, segments it through the panel's logic, checks the segments and
    the recording (one item per applied frame). Runs inside Slicer only: "Reload and Test" in developer mode, or
    ctest in an extension build (see the README)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Reload and Test: a skip (packages missing) is shown as a message, not as a failure."""
        import unittest

        self.setUp()
        try:
            self.test_NerveSeg_replay_segmented_and_recorded()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"Test skipped: {skipped}")

    def test_NerveSeg_replay_segmented_and_recorded(self):
        from NerveSegLogic.live.selftest import run_sample_replay, segmenter_with_random_fallback
        from NerveSegLogic.models import registry

        self.delayDisplay("Checking Python packages")
        missing = slicer_packages.check()
        if missing and slicer_packages.testing_enabled(slicer):
            # ctest runs Slicer with --testing: a test never changes Slicer's Python environment (as pip_ensure's
            # skip_in_testing); it runs with the packages this Slicer has, or is skipped saying what is missing.
            self.skipTest(slicer_packages.testing_skip_message(missing))
        if missing and not slicer_packages.install(slicer, missing, ask=True):
            self.skipTest("the Python packages NerveSeg needs were not installed: "
                          + "; ".join(m.describe() for m in missing))
        logic = NerveSegLogic(segmenterFactory=segmenter_with_random_fallback)
        name = registry.default_name()
        self.delayDisplay(f"Replaying the sample through {name} in the worker process")
        report = run_sample_replay(logic.controller, frames=12, model=name, mode="child-process")
        expected = [c.key for c in registry.card(name).classes]
        self.assertEqual(sorted(report.segment_ids), sorted(expected))
        self.assertGreater(report.applied, 0)
        self.assertEqual(report.errors, 0, report.status)
        self.assertEqual(report.applied + report.dropped, report.frames_received, "every frame accounted for")
        self.assertEqual(report.recorded, report.applied, "one recorded item per applied frame")
        self.assertIn("%", report.confidence, "the status shows each class's confidence")
        logic.cleanup()
        self.delayDisplay(f"Test passed: {report.status}")
