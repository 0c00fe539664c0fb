"""VeloxSeg: automatic FDG-avid lesion segmentation of PET/CT studies in 3D Slicer.

The four Slicer classes. The Widget is thin: its controls live in Resources/UI/VeloxSegSlicer.ui and
are bound to a parameter node; all work is done by VeloxSegSlicerLogic (VeloxSegSlicerLib/logic.py),
which also serves the Python console and batch scripts.
"""

import enum
import logging
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from VeloxSegSlicerLib import dependencies, inputs, results, sampledata
from VeloxSegSlicerLib.background import BackgroundRun
from VeloxSegSlicerLib.engine import DEFAULT_MIN_LESION_ML, DEFAULT_MIN_SUV_MAX, Cancelled, InputError, VeloxSegError
from VeloxSegSlicerLib.logic import VeloxSegSlicerLogic

__all__ = ["VeloxSegSlicer", "VeloxSegSlicerLogic", "VeloxSegSlicerTest", "VeloxSegSlicerWidget"]


#
# VeloxSegSlicer
#


class VeloxSegSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("VeloxSeg PET/CT Lesions")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["VeloxSeg team"]
        self.parent.helpText = _(
            "Segments FDG-avid lesions in a PET/CT study with one click: choose the CT and the PET (in SUV), "
            "click <b>Segment lesions</b>. The result is a coded segmentation (ready for DICOM SEG export) "
            "and a table with SUVmax, SUVmean, SUVpeak, MTV and TLG per lesion. Runs on one CPU core by "
            "default; no data leave the computer. "
            '<a href="https://github.com/veloxseg/SlicerVeloxSeg">Documentation</a>.')
        self.parent.acknowledgementText = _(
            "VeloxSeg network: 'Johnson-Lindenstrauss Lemma Guided Network for Efficient 3D Medical "
            "Segmentation'. Sample data: IBSI validation set, case STS_002 (TCIA Soft-tissue-Sarcoma, "
            "Vallieres et al. 2015, DOI 10.7937/K9/TCIA.2015.7GO2GSKS), CC BY 3.0.")
        # registering sample data needs the Sample Data module, which is ready once startup completed
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    try:
        sampledata.registerSampleData()
    except Exception as error:  # Sample Data may be disabled; the module works without it
        logging.warning(f"VeloxSeg: could not register the sample study: {error}")


#
# Parameter node
#


class Device(enum.Enum):
    CPU_ONE_CORE = "cpu1"
    CPU_ALL_CORES = "cpuAll"
    GPU = "gpu"

    def label(self):
        return {"cpu1": _("CPU, 1 core"), "cpuAll": _("CPU, all cores"), "gpu": _("GPU (NVIDIA)")}[self.value]

    def deviceAndThreads(self):
        """(device, threads) for the Logic; threads 0 = all cores."""
        return {"cpu1": ("cpu", 1), "cpuAll": ("cpu", 0), "gpu": ("gpu", 0)}[self.value]


class Overlap(enum.Enum):
    FAST = "fast"
    STANDARD = "standard"
    FINE = "fine"

    def label(self):
        return {"fast": _("Fast"), "standard": _("Standard"), "fine": _("Fine")}[self.value]

    def fraction(self):
        return {"fast": 0.0, "standard": 0.25, "fine": 0.5}[self.value]


class Blending(enum.Enum):
    UNIFORM = "uniform"
    GAUSSIAN = "gaussian"

    def label(self):
        return {"uniform": _("Uniform"), "gaussian": _("Gaussian")}[self.value]


@parameterNodeWrapper
class VeloxSegSlicerParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    device: Device = Device.CPU_ONE_CORE
    overlap: Overlap = Overlap.STANDARD
    blending: Blending = Blending.UNIFORM
    minLesionVolumeMl: Annotated[float, WithinRange(0.0, 1000.0)] = DEFAULT_MIN_LESION_ML
    minLesionSuvMax: Annotated[float, WithinRange(0.0, 100.0)] = DEFAULT_MIN_SUV_MAX
    oneSegmentPerLesion: bool = True


#
# VeloxSegSlicerWidget
#


class VeloxSegSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None  # BackgroundRun while segmenting

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/VeloxSegSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.hide()

        self.logic = VeloxSegSlicerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.showTableButton.connect("clicked(bool)", self.onShowTableButton)

        # the worker thread never touches Qt or MRML: this timer reads its progress on the GUI thread
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self._onPoll)

        self.initializeParameterNode()

    def cleanup(self):
        if self._run is not None:
            self._run.cancel()
            self._run.wait(5.0)
        self._pollTimer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        if self._run is not None:
            self._run.cancel()  # its nodes are going away
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node):
        if node.IsA("vtkMRMLScalarVolumeNode"):
            # the volume gets its voxels after it is added: look at it once loading is done
            qt.QTimer.singleShot(0, self._autoSelectInputs)

    def initializeParameterNode(self):
        self.setParameterNode(VeloxSegSlicerParameterNode(self.logic.getParameterNode()))
        self._autoSelectInputs()

    def _autoSelectInputs(self):
        """Fill empty CT/PET choices from DICOM modality, units and names of the loaded volumes."""
        node = self._parameterNode
        if node is None or (node.ctVolume and node.petVolume):
            return
        ct, pet = inputs.guessCtAndPet()
        if not node.ctVolume and ct is not None and ct is not node.petVolume:
            node.ctVolume = ct
        if not node.petVolume and pet is not None and pet is not node.ctVolume:
            node.petVolume = pet

    def setParameterNode(self, inputParameterNode: Optional[VeloxSegSlicerParameterNode]):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        button = self.ui.applyButton
        if self._run is not None:
            button.text = _("Cancel")
            button.toolTip = _("Stop the segmentation; the scene stays as it was.")
            button.enabled = not self._run.cancelRequested
            return
        button.text = _("Segment lesions")
        node = self._parameterNode
        problem = inputs.checkInputs(node.ctVolume, node.petVolume, cheap=True) if node else _("Loading...")
        button.enabled = not problem
        button.toolTip = problem or _("Segment the lesions of the selected PET/CT study.")
        output = node.outputSegmentation if node else None
        self.ui.showTableButton.enabled = bool(
            output is not None and output.GetNodeReference(results.TABLE_REFERENCE_ROLE))

    def _setStatus(self, text):
        self.ui.statusLabel.text = text

    def onApplyButton(self):
        if self._run is not None:
            self._run.cancel()
            self._setStatus(_("Cancelling..."))
            self._checkCanApply()
            return
        node = self._parameterNode
        device, threads = node.device.deviceAndThreads()
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            try:
                # installing onnxruntime shows dialogs, so it happens here on the GUI thread
                dependencies.ensureOnnxRuntime(gpu=(device == "gpu"))
                job = self.logic.prepare(node.ctVolume, node.petVolume, node.outputSegmentation, device, threads,
                                         node.overlap.fraction(), node.minLesionVolumeMl, node.oneSegmentPerLesion,
                                         node.blending.value, node.minLesionSuvMax)
            except VeloxSegError as error:
                self._setStatus(str(error))
                slicer.util.errorDisplay(str(error), windowTitle=_("VeloxSeg"))
                return
            self._run = BackgroundRun(job).start()
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self._setStatus(_("Starting..."))
        self._checkCanApply()
        self._pollTimer.start()

    def _onPoll(self):
        run = self._run
        if run is None:
            self._pollTimer.stop()
            return
        fraction, stage = run.progress()
        self.ui.progressBar.value = int(round(100 * fraction))
        if not run.cancelRequested:
            self._setStatus(stage)
        if run.isRunning():
            return
        self._pollTimer.stop()
        self._run = None
        try:
            self._finishRun(run)
        finally:
            self.ui.progressBar.hide()
            self._checkCanApply()

    def _finishRun(self, run):
        job = run.job
        if run.cancelled:
            self._setStatus(_("Cancelled. The scene was not changed."))
            return
        if job.error is not None:
            message = str(job.error) if isinstance(job.error, VeloxSegError) else repr(job.error)
            self._setStatus(_("Failed: {message}").format(message=message))
            slicer.util.errorDisplay(message, windowTitle=_("VeloxSeg"))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not add the results to the scene."), waitCursor=True):
            try:
                segNode, tableNode = self.logic.finish(job)
            except InputError as error:
                self._setStatus(str(error))
                return
            if self._parameterNode is not None:
                self._parameterNode.outputSegmentation = segNode
            totals = job.result.totals
            text = _("{count} lesion(s), total MTV {mtv:.1f} mL, TLG {tlg:.1f} g ({seconds:.0f} s on {device}).")
            text = text.format(
                count=totals.lesion_count, mtv=totals.total_mtv_ml, tlg=totals.total_tlg, seconds=job.seconds,
                device=(job.deviceUsed or "cpu").upper())
            if job.deviceNote:
                text += " " + job.deviceNote
            for warning in job.result.warnings:  # e.g. a CT covering only part of the PET (also in the log)
                text += " " + _("Warning: {warning}").format(warning=warning)
            self._setStatus(text)

    def onShowTableButton(self):
        node = self._parameterNode
        tableNode = node.outputSegmentation.GetNodeReference(results.TABLE_REFERENCE_ROLE) if node else None
        if tableNode is None:
            return
        slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
        appLogic.PropagateTableSelection()


#
# VeloxSegSlicerTest
#


class VeloxSegSlicerTest(ScriptedLoadableModuleTest):
    """Self-test in real Slicer: the bundled model on the bundled sample study, plus input checks.

    Mirrors Testing/slicer/test_logic.py, which runs the same Logic on slicer-core with a test model.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleStudy()
        self.setUp()
        self.test_BadInputsAndCancel()

    def _loadSampleStudy(self):
        import SampleData

        registerSampleData()
        nodes = SampleData.SampleDataLogic().downloadSamples(sampledata.SAMPLE_NAME)
        byName = {node.GetName(): node for node in nodes}
        return byName["STS_002_CT"], byName["STS_002_PET_SUV"], byName["STS_002_GTV"]

    def test_SegmentSampleStudy(self):
        self.delayDisplay("Segmenting the sample study with the bundled model")
        ctNode, petNode, gtvNode = self._loadSampleStudy()
        self.assertEqual(inputs.guessCtAndPet(), (ctNode, petNode))
        logic = VeloxSegSlicerLogic()
        segNode, tableNode = logic.segment(ctNode, petNode, device="cpu", threads=1)

        # geometry: the segmentation is defined on the CT grid
        converter = slicer.vtkSegmentationConverter
        ijkToRas = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(ijkToRas)
        self.assertEqual(
            segNode.GetSegmentation().GetConversionParameter(converter.GetReferenceImageGeometryParameterName()),
            converter.SerializeImageGeometry(ijkToRas, ctNode.GetImageData()))
        self.assertEqual(segNode.GetNodeReference(segNode.GetReferenceImageGeometryReferenceRole()), ctNode)

        # table: one row per lesion + the total, totals add up
        lesionCount = int(tableNode.GetAttribute("VeloxSeg.LesionCount"))
        self.assertGreaterEqual(lesionCount, 1, "the bundled model found no lesion in the sample study")
        table = tableNode.GetTable()
        self.assertEqual(table.GetNumberOfRows(), lesionCount + 1)
        mtv = table.GetColumnByName("MTV_mL")
        self.assertAlmostEqual(sum(mtv.GetValue(r) for r in range(lesionCount)), mtv.GetValue(lesionCount), places=4)
        self.assertEqual(segNode.GetSegmentation().GetNumberOfSegments(), lesionCount)

        # the hottest lesion lies in the expert tumour contour
        suvMax = table.GetColumnByName("SUVmax")
        hottest = max(range(lesionCount), key=suvMax.GetValue)
        centroid = [table.GetColumnByName(c).GetValue(hottest)
                    for c in ("CentroidR_mm", "CentroidA_mm", "CentroidS_mm")]
        bounds = [0.0] * 6
        gtvNode.GetRASBounds(bounds)
        for axis in range(3):
            self.assertTrue(bounds[2 * axis] - 5 <= centroid[axis] <= bounds[2 * axis + 1] + 5,
                            f"hottest lesion centroid {centroid} is outside the GTV {bounds}")

        # terminology and subject hierarchy placement (DICOM SEG export needs both)
        segment = segNode.GetSegmentation().GetNthSegment(0)
        self.assertIn("108369006", segment.GetTerminology())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segNode)),
                         shNode.GetItemParent(shNode.GetItemByDataNode(ctNode)))
        self.delayDisplay("Sample study segmented")

    def test_BadInputsAndCancel(self):
        self.delayDisplay("Checking bad inputs and cancel")
        ctNode, petNode, _gtv = self._loadSampleStudy()
        logic = VeloxSegSlicerLogic()
        with self.assertRaises(InputError):
            logic.segment(ctNode, ctNode)
        with self.assertRaises(InputError):
            logic.segment(None, petNode)
        labelNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
        with self.assertRaises(InputError):
            logic.segment(ctNode, labelNode)
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Cancelled):
            logic.segment(ctNode, petNode, cancelCallback=lambda: True)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount, "cancel left nodes behind")
        self.delayDisplay("Bad inputs rejected, cancel left the scene unchanged")

