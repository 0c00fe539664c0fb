"""onnxruntime, installed on first use and only with the user's consent.

Called right before a segmentation runs (never at import or module construction, as the Slicer
extension rules require). Where Slicer has ``pip_ensure`` (5.12+: ``slicer.packaging``, later
``slicer.pydeps``) it checks, asks, installs and offers a restart; on older Slicer a confirmation
dialog is followed by ``slicer.util.pip_install``. ``onnxruntime-gpu`` is only ever asked for when the
user chose the GPU. Outside the Slicer application nothing is installed: the error says what to run.
"""

import importlib
import logging
import os

import slicer

from .engine.errors import ModelError

REQUESTER = "VeloxSeg"
REQUIREMENTS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "Resources", "requirements.txt")


def cpuRequirement(requirementsPath=REQUIREMENTS_FILE):
    """The onnxruntime requirement line of Resources/requirements.txt (e.g. 'onnxruntime>=1.16')."""
    with open(requirementsPath, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line.lower().startswith("onnxruntime"):
                return line
    raise ModelError(f"{requirementsPath} does not list onnxruntime; reinstall the VeloxSeg extension.")


def gpuRequirement(requirementsPath=REQUIREMENTS_FILE):
    """The same version range for the CUDA build, 'onnxruntime-gpu...'."""
    return "onnxruntime-gpu" + cpuRequirement(requirementsPath)[len("onnxruntime"):]


def onnxruntimeStatus():
    """(installed, has CUDA provider, version) of the onnxruntime importable right now."""
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return False, False, ""
    return True, "CUDAExecutionProvider" in ort.get_available_providers(), getattr(ort, "__version__", "")


def _packagingModule():
    """Slicer's module that has pip_ensure + load_requirements, or None (Slicer < 5.12)."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure"):
            return module
    return None


def _askAndPipInstall(requirement, replaceCpuBuild):
    """Slicer < 5.12: confirmation dialog, then slicer.util.pip_install."""
    message = (f"VeloxSeg needs the Python package '{requirement}' to run its model (about 20-300 MB, "
               "downloaded from pypi.org).\n\nInstall it now?")
    if replaceCpuBuild:
        message += "\n\nThe CPU-only onnxruntime will be replaced by the GPU build; restart Slicer afterwards."
    if not slicer.util.confirmOkCancelDisplay(message, f"{REQUESTER} - Install Python package"):
        raise ModelError(f"'{requirement}' was not installed, so VeloxSeg cannot run. Click Segment lesions "
                         "again to install it, or choose another device.")
    if replaceCpuBuild:
        slicer.util.pip_uninstall("onnxruntime")
    slicer.util.pip_install(requirement)
    importlib.invalidate_caches()


def ensureOnnxRuntime(gpu=False):
    """Make sure an onnxruntime that can run on the chosen device is importable.

    Raises ModelError when it is missing and cannot (or may not) be installed, or when Slicer must be
    restarted to load a newly installed build. For the GPU, a CPU-only onnxruntime is left in place when
    the user declines; the engine then falls back to the CPU and says so.
    """
    installed, hasCuda, version = onnxruntimeStatus()
    if installed and (not gpu or hasCuda):
        return
    requirement = gpuRequirement() if gpu else cpuRequirement()
    if not hasattr(slicer, "app"):
        if installed:
            return  # CPU build present outside Slicer: the engine falls back to the CPU and says why
        raise ModelError(f"onnxruntime is not installed. Run: pip install '{requirement}'")
    replaceCpuBuild = gpu and installed
    pydeps = _packagingModule()
    try:
        if pydeps is not None and not replaceCpuBuild:
            if gpu:
                from packaging.requirements import Requirement  # ships with Slicer (pip needs it)

                requirements = [Requirement(requirement)]
            else:
                requirements = pydeps.load_requirements(REQUIREMENTS_FILE)
            pydeps.pip_ensure(requirements, requester=REQUESTER)
        else:
            _askAndPipInstall(requirement, replaceCpuBuild)
    except ModelError:
        if gpu and installed:
            logging.warning("onnxruntime-gpu not installed; VeloxSeg runs on the CPU.")
            return
        raise
    except RuntimeError as error:  # pip_ensure raises RuntimeError when the user declines
        if gpu and installed:
            logging.warning("onnxruntime-gpu not installed; VeloxSeg runs on the CPU.")
            return
        raise ModelError(f"onnxruntime was not installed ({error}), so VeloxSeg cannot run. Click Segment "
                         "lesions again to install it.") from error
    nowInstalled, nowHasCuda, _ = onnxruntimeStatus()
    if replaceCpuBuild or (installed and version and gpu and not nowHasCuda):
        raise ModelError("onnxruntime-gpu was installed. Restart Slicer to use the GPU.")
    if not nowInstalled:
        raise ModelError(f"Installing '{requirement}' did not make onnxruntime importable; restart Slicer, "
                         "or install it from the Python console: slicer.util.pip_install('onnxruntime')")
