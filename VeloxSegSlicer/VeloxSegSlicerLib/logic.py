"""VeloxSegSlicerLogic: PET/CT lesion segmentation on MRML nodes, without GUI and without Qt.

One run has three steps, so the module can keep the GUI responsive and the scene consistent:

1. ``prepare`` (main thread): check the inputs, copy the voxels out of the nodes -> a job;
2. ``job.run`` (any thread): the engine's numpy/onnxruntime work, cancellable, touches no MRML;
3. ``finish`` (main thread): build the segmentation and table and put them into the scene at once.

``segment`` does the three in a row (blocking, for the Python console and scripts); ``segmentFolder``
is the engine's cohort runner (``run_batch``, as ``veloxseg batch``) plus a Slicer segmentation file per
study and, when asked, the results in the scene. Cancelling or failing before step 3 leaves the scene
unchanged.

Console example::

    import VeloxSegSlicer
    logic = VeloxSegSlicer.VeloxSegSlicerLogic()
    seg, table = logic.segment(getNode("STS_002_CT"), getNode("STS_002_PET_SUV"))
"""

import logging
import threading
import time

import SimpleITK as sitk

from . import batch, dependencies, inputs, mrml_io, results
from .engine import (
    DEFAULT_MIN_LESION_ML,
    DEFAULT_MIN_SUV_MAX,
    Cancelled,
    InputError,
    SegmentOptions,
    VeloxSegError,
    load_model,
    run_batch,
    segment_study,
)
from .engine.errors import plural
from .engine.inference.pipeline import ReleasableImage

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
        options = self._checkedOptions(device, threads, overlap, minLesionMl, blending, minSuvMax)
        ctImage = mrml_io.sitkImageFromVolumeNode(ctNode)
        petImage = mrml_io.sitkImageFromVolumeNode(petNode)
        return SegmentationJob(self, ctNode, petNode, ctImage, petImage, outputSegmentationNode, device,
                               int(threads), options, bool(oneSegmentPerLesion))

    def _checkedOptions(self, device, threads, overlap, minLesionMl, blending, minSuvMax):
        """The engine's SegmentOptions, every argument checked (InputError), before any copy or run."""
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
        return options

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
        segNode, tableNode = results.commitResults(job.ctNode, job.petNode, segmentation, rows, len(lesionIds),
                                                   outputSegmentationNode=output, showResult=showResult)
        for warning in result.warnings:  # e.g. a CT covering only part of the PET: never silent
            logging.warning(f"VeloxSeg: {warning}")
        return segNode, tableNode

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
                      progressCallback=None, cancelCallback=None, blending="uniform", minSuvMax=DEFAULT_MIN_SUV_MAX,
                      workers=1, scheduler=None, loadResults=False):
        """Segment every study sub-folder of ``inputDir`` into ``outputDir``: the engine's ``run_batch``
        (what ``veloxseg batch`` runs: docs/cli.md), plus ``<study>/lesions.seg.nrrd``. Returns its
        BatchReport (``rows``: those of ``summary.csv``; ``tally()``; ``exit_code``).

        Each sub-folder is a study with one CT and one PET (image files or DICOM series folders; PET DICOM
        becomes SUVbw), told apart by the engine's name rule or the globs ``ctPattern``/``petPattern``.
        Per study ``lesions.nii.gz``, ``lesions.csv``, ``veloxseg_run.json`` and ``lesions.seg.nrrd``; a
        rerun skips studies finished with the same inputs, model and options; a failing study is reported
        in ``summary.csv`` and the others run. ``workers``: 1 runs the studies in this process, N > 1 in N
        worker processes, 0 one per core; ``scheduler``: a Dask scheduler address. ``loadResults``: also put
        each finished study (CT, PET, segmentation, lesion table) into the scene; otherwise the scene is left
        as it was. ``progressCallback(fraction, text)``; ``cancelCallback()`` -> True stops the run: running
        studies write nothing, finished ones stay, and Cancelled is raised.
        """
        options = self._checkedOptions(device, threads, overlap, minLesionMl, blending, minSuvMax)
        if scheduler is None:  # the studies run on this computer, in Slicer's Python
            dependencies.ensureOnnxRuntime(gpu=(device == "gpu"))
        # in this process: the Logic's cached model; worker processes load it themselves from its manifest
        model = self.model(device, threads) if scheduler is None and workers == 1 else self.manifestPath
        extras = batch.StudyOutputs(inputDir, oneSegmentPerLesion, loadResults)
        report = run_batch(inputDir, outputDir, model, options, workers=workers, scheduler=scheduler, device=device,
                           threads=int(threads), ct_pattern=ctPattern, pet_pattern=petPattern,
                           cancelled=cancelCallback, show_progress=False, progress=progressCallback,
                           after_study=extras)
        for row in report.rows:
            if row["status"] == "failed":
                logging.error(f"VeloxSeg: study {row['study']} failed: {row.get('message', '')}")
            elif row.get("warning"):
                logging.warning(f"VeloxSeg: study {row['study']}: {row.get('message', '')}")
        if report.cancelled:
            raise Cancelled(f"Cancelled; finished studies are kept. {report.tally()}")
        logging.info(f"VeloxSeg: {report.tally()}")
        if progressCallback is not None:
            progressCallback(1.0, f"Done: {report.tally()}")
        return report
