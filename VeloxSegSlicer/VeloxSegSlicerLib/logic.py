"""VeloxSegSlicerLogic: PET/CT lesion segmentation on MRML nodes, without GUI and without Qt.

One run has three steps, so the module can keep the GUI responsive and the scene consistent:

1. ``prepare`` (main thread): check the inputs, copy the voxels out of the nodes -> a job;
2. ``job.run`` (any thread): the engine's numpy/onnxruntime work, cancellable, touches no MRML;
3. ``finish`` (main thread): build the segmentation and table and put them into the scene at once.

``segment`` does the three in a row (blocking, for the Python console and scripts); ``segmentFolder``
runs it on every case of a folder. Cancelling or failing before step 3 leaves the scene unchanged.

Console example::

    import VeloxSegSlicer
    logic = VeloxSegSlicer.VeloxSegSlicerLogic()
    seg, table = logic.segment(getNode("STS_002_CT"), getNode("STS_002_PET_SUV"))
"""

import logging
import os
import threading
import time

import SimpleITK as sitk
import slicer

from . import batch, dependencies, inputs, mrml_io, results
from .engine import (
    DEFAULT_MIN_LESION_ML,
    DEFAULT_MIN_SUV_MAX,
    Cancelled,
    InputError,
    SegmentOptions,
    VeloxSegError,
    load_model,
    segment_study,
)
from .engine.pipeline import ReleasableImage
from .engine.progress import plural

try:  # real Slicer; slicer-core has no ScriptedLoadableModule (the tests provide a stub)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:
    ScriptedLoadableModuleLogic = object

# Overall progress: preparing 0-5 %, the engine 5-90 %, putting results into the scene 90-100 %.
_ENGINE_START, _ENGINE_END = 0.05, 0.90


class SegmentationJob:
    """Everything one run needs, copied out of the scene, plus its outcome.

    ``run`` may be called from a worker thread: it only uses the copied images and the engine.
    """

    def __init__(self, logic, ctNode, petNode, ctImage, petImage, outputSegmentationNode, device, threads,
                 options, oneSegmentPerLesion):
        self.logic = logic
        self.ctNode = ctNode
        self.petNode = petNode
        self.ctImage = ctImage
        self.petImage = petImage
        self.ctIjkToRasLocal = mrml_io.ijkToRasArray(ctNode, world=False)
        self.outputSegmentationNode = outputSegmentationNode
        self.device = device
        self.threads = threads
        self.options = options
        self.oneSegmentPerLesion = oneSegmentPerLesion
        self.result = None
        self.error = None  # the exception that ended run(), if any
        self.deviceUsed = None
        self.deviceNote = ""  # e.g. why the GPU was not used
        self.seconds = 0.0

    def run(self, progressCallback=None, cancelCallback=None):
        """Run the engine; returns its result. Raises Cancelled, VeloxSegError, ... (also kept in .error)."""
        report = progressCallback or (lambda fraction, stage: None)
        started = time.perf_counter()
        try:
            report(_ENGINE_START, "Loading the model")
            model = self.logic.model(self.device, self.threads)
            self.deviceUsed = model.device
            self.deviceNote = " ".join(note for note in (model.fallback_reason, model.threads_note) if note)

            def engineProgress(fraction, stage):
                report(_ENGINE_START + (_ENGINE_END - _ENGINE_START) * float(fraction), stage)

            # hand the CT copy over: the engine frees it once resampled (a whole-body CT is ~0.8 GB)
            ctImage, self.ctImage = ReleasableImage(self.ctImage), None
            self.result = segment_study(ctImage, self.petImage, model, self.options,
                                        progress=engineProgress,
                                        cancelled=cancelCallback or (lambda: False))
            # drop the voxel copies as soon as possible; whole-body studies are large
            self.ctImage = self.petImage = None
            return self.result
        except BaseException as error:
            self.error = error
            raise
        finally:
            self.seconds = time.perf_counter() - started


class VeloxSegSlicerLogic(ScriptedLoadableModuleLogic):
    """Segment FDG-avid lesions of a CT + PET (SUVbw) pair into a coded segmentation and a lesion table."""

    DEVICES = ("cpu", "gpu")

    def __init__(self, manifestPath=None):
        """``manifestPath``: model manifest (.json) to use; None = the model bundled with the module."""
        if ScriptedLoadableModuleLogic is not object:
            ScriptedLoadableModuleLogic.__init__(self)
        self.manifestPath = manifestPath
        self._models = {}
        self._modelsLock = threading.Lock()

    # -- the model -------------------------------------------------------------------------------------

    def model(self, device="cpu", threads=1):
        """The loaded model for a device/thread count (cached: an onnxruntime session takes ~1 s to make)."""
        key = (str(self.manifestPath), device, int(threads))
        with self._modelsLock:
            if key not in self._models:
                model = load_model(self.manifestPath, device=device, threads=int(threads))
                for note in (model.fallback_reason, model.threads_note):
                    if note:  # once per loaded model (it is cached), not once per run
                        logging.warning(f"VeloxSeg: {note}")
                self._models[key] = model
            return self._models[key]

    # -- the three steps -------------------------------------------------------------------------------

    def prepare(self, ctNode, petNode, outputSegmentationNode=None, device="cpu", threads=1, overlap=0.25,
                minLesionMl=DEFAULT_MIN_LESION_ML, oneSegmentPerLesion=True, blending="uniform",
                minSuvMax=DEFAULT_MIN_SUV_MAX):
        """Check the inputs and copy their voxels; returns a SegmentationJob. Raises InputError."""
        inputs.validateInputs(ctNode, petNode)
        if outputSegmentationNode is not None and not outputSegmentationNode.IsA("vtkMRMLSegmentationNode"):
            raise InputError(f"'{outputSegmentationNode.GetName()}' is not a segmentation. Choose a segmentation "
                             "as output, or none to create a new one.")
        if device not in self.DEVICES:
            raise InputError(f"Unknown device {device!r}: use 'cpu' or 'gpu'.")
        if int(threads) < 0:
            raise InputError(f"threads must be 0 (all cores) or more, got {threads}.")
        if float(minLesionMl) < 0:
            raise InputError(f"The minimum lesion volume must be 0 mL or more, got {minLesionMl}.")
        if float(minSuvMax) < 0:
            raise InputError(f"The minimum lesion SUVmax must be 0 or more, got {minSuvMax}.")
        options = SegmentOptions(overlap=float(overlap), blending=blending, min_lesion_ml=float(minLesionMl),
                                 min_suv_max=float(minSuvMax))
        options.validate()  # the engine's own checks, here before any copy or background run
        ctImage = mrml_io.sitkImageFromVolumeNode(ctNode)
        petImage = mrml_io.sitkImageFromVolumeNode(petNode)
        return SegmentationJob(self, ctNode, petNode, ctImage, petImage, outputSegmentationNode, device,
                               int(threads), options, bool(oneSegmentPerLesion))

    def finish(self, job, showResult=True):
        """Put a finished job's results into the scene; returns (segmentationNode, tableNode)."""
        if job.result is None:
            raise VeloxSegError("The segmentation has not finished; there is nothing to add to the scene.")
        for node, role in ((job.ctNode, "CT"), (job.petNode, "PET")):
            if node.GetScene() is None:
                raise InputError(f"The {role} volume was removed from the scene while segmenting.")
        output = job.outputSegmentationNode
        if output is not None and output.GetScene() is None:
            output = None  # removed meanwhile: make a new one rather than touch a dead node
        result = job.result
        lesionIds = [int(lesion.id) for lesion in result.lesions]
        labelArray = sitk.GetArrayViewFromImage(result.label_ct)  # (k, j, i) on the CT grid
        segmentation, segmentOfLesion = results.buildSegmentation(labelArray, job.ctIjkToRasLocal, lesionIds,
                                                                  job.oneSegmentPerLesion)
        rows = results.buildTableRows(result.lesions, result.totals, segmentOfLesion)
        return results.commitResults(job.ctNode, job.petNode, segmentation, rows, len(lesionIds),
                                     outputSegmentationNode=output, showResult=showResult)

    # -- blocking API ----------------------------------------------------------------------------------

    def segment(self, ctNode, petNode, outputSegmentationNode=None, device="cpu", threads=1, overlap=0.25,
                minLesionMl=DEFAULT_MIN_LESION_ML, oneSegmentPerLesion=True, progressCallback=None,
                cancelCallback=None, showResult=True, blending="uniform", minSuvMax=DEFAULT_MIN_SUV_MAX):
        """Segment the lesions of a CT + PET (SUVbw) pair; returns (segmentationNode, tableNode).

        device: 'cpu' or 'gpu'; threads: CPU threads (0 = all cores); overlap: sliding-window overlap
        (0 fast, 0.25 standard, 0.5 fine); minLesionMl, minSuvMax: report only lesions of at least this MTV
        and SUVmax (defaults: the lesion table's rule, docs/slicer.md); oneSegmentPerLesion: one
        segment per lesion, else one segment for all; blending: 'uniform' (average of the overlapping windows,
        as the reference) or 'gaussian' (window centres weigh more). An existing output segmentation gets its segments
        replaced only when everything succeeded. progressCallback(fraction, stage) reports progress;
        cancelCallback() -> True stops the run (raises Cancelled; the scene is left as it was).
        """
        report = progressCallback or (lambda fraction, stage: None)
        report(0.0, "Checking the inputs")
        inputs.validateInputs(ctNode, petNode)  # before any install prompt: bad input needs no onnxruntime
        dependencies.ensureOnnxRuntime(gpu=(device == "gpu"))
        job = self.prepare(ctNode, petNode, outputSegmentationNode, device, threads, overlap, minLesionMl,
                           oneSegmentPerLesion, blending, minSuvMax)
        job.run(report, cancelCallback)
        if cancelCallback is not None and cancelCallback():
            raise Cancelled("Cancelled; the scene was not changed.")
        report(_ENGINE_END, "Creating segments and statistics")
        segNode, tableNode = self.finish(job, showResult=showResult)
        report(1.0, "Done")
        found = plural(len(job.result.lesions), "lesion")
        logging.info(f"VeloxSeg: {found} in {job.seconds:.1f} s on {job.deviceUsed}")
        return segNode, tableNode

    def segmentFolder(self, inputDir, outputDir, ctPattern=None, petPattern=None, device="cpu", threads=1,
                      overlap=0.25, minLesionMl=DEFAULT_MIN_LESION_ML, oneSegmentPerLesion=True,
                      progressCallback=None, cancelCallback=None, blending="uniform", minSuvMax=DEFAULT_MIN_SUV_MAX):
        """Segment every case of ``inputDir``; write per case ``<case>.seg.nrrd`` and ``<case>_lesions.csv``
        into ``outputDir``, and ``summary.csv`` over all cases. Returns the summary rows (dicts).

        A case is a sub-folder (or ``inputDir`` itself) holding one CT and one PET, each an image file
        (NIfTI, NRRD, MHA) or a DICOM series folder; PET DICOM is converted to SUVbw from its header.
        Files are told apart by name (CT: 'ct'; PET: 'pet', 'suv' or 'pt'; masks/labels/segmentations are
        ignored) or by the glob patterns ``ctPattern``/``petPattern``. A failing case is reported in the
        summary and the next case runs; the scene is left as it was.
        """
        report = progressCallback or (lambda fraction, stage: None)
        cases = batch.findCases(inputDir, ctPattern, petPattern)
        if not cases:
            raise InputError(f"No case with a CT and a PET found in {inputDir}. Put each case in its own folder, "
                             "or pass ctPattern/petPattern.")
        dependencies.ensureOnnxRuntime(gpu=(device == "gpu"))
        os.makedirs(outputDir, exist_ok=True)
        summary = []
        for index, case in enumerate(cases):
            if cancelCallback is not None and cancelCallback():
                raise Cancelled(f"Cancelled after {index} of {len(cases)} cases.")

            def caseProgress(fraction, stage, index=index, case=case):
                report((index + fraction) / len(cases), f"{case.name} ({index + 1}/{len(cases)}): {stage}")

            summary.append(self._segmentCase(case, outputDir, caseProgress, cancelCallback, device, threads,
                                             overlap, minLesionMl, oneSegmentPerLesion, blending, minSuvMax))
        batch.writeSummary(summary, os.path.join(outputDir, "summary.csv"))
        report(1.0, f"Done: {plural(len(cases), 'case')}")
        return summary

    def _segmentCase(self, case, outputDir, report, cancelCallback, device, threads, overlap, minLesionMl,
                     oneSegmentPerLesion, blending, minSuvMax):
        scene = slicer.mrmlScene
        before = set(batch.nodeIds(scene))
        started = time.perf_counter()
        try:
            report(0.0, "Reading")
            ctNode, petNode = batch.loadCase(case)
            segNode, tableNode = self.segment(ctNode, petNode, None, device, threads, overlap, minLesionMl,
                                              oneSegmentPerLesion, report, cancelCallback, showResult=False,
                                              blending=blending, minSuvMax=minSuvMax)
            outputs = batch.saveCaseResults(case.name, segNode, tableNode, outputDir)
            row = batch.summaryRow(case, tableNode, outputs, time.perf_counter() - started)
        except Cancelled:
            raise
        except (VeloxSegError, OSError, RuntimeError, ValueError) as error:
            logging.error(f"VeloxSeg: case {case.name} failed: {error}")
            row = batch.summaryRow(case, None, {}, time.perf_counter() - started, error=str(error))
        finally:
            batch.removeNewNodes(scene, before)
        return row
