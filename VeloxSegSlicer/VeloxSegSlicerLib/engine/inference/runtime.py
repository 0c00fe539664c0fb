"""ONNX Runtime session for a verified model: CPU with a fixed thread count, or CUDA when available.

onnxruntime is imported here, lazily, so the rest of the engine (and `veloxseg info`) works without it and
a missing runtime gives an install hint instead of an ImportError at import time.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError, ModelError, plural
from .manifest import Manifest, load_manifest, verify_model_file

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelError(
            "onnxruntime is not installed, and VeloxSeg needs it to run the model. Install it with "
            "`pip install onnxruntime` (or `pip install onnxruntime-gpu` for NVIDIA GPUs); inside 3D Slicer "
            "run `slicer.util.pip_install('onnxruntime')` in the Python console and restart Slicer."
        ) from exc
    return onnxruntime


class Model:
    """A loaded model: its manifest plus an ONNX Runtime session. Create it with load_model()."""

    def __init__(self, manifest: Manifest, session, device: str, threads: int, fallback_reason=None,
                 threads_note=None):
        self.manifest = manifest
        self.session = session
        self.device = device  # the device actually used: "cpu" or "gpu"
        self.threads = threads
        self.fallback_reason = fallback_reason  # why "gpu" was asked for and "cpu" is used, else None
        self.threads_note = threads_note  # why fewer threads are used than asked for, else None
        self.providers = tuple(session.get_providers())
        # the candidate classifier (second_look.SecondLook) when the manifest names one, else None
        self.second_look = None
        if manifest.second_look is not None:
            from .second_look import SecondLook

            self.second_look = SecondLook(manifest.second_look)

    @property
    def patch_size(self) -> tuple:
        return self.manifest.patch_size_zyx

    @property
    def has_organs(self) -> bool:
        """Whether the model has an organ output, i.e. names each lesion's site."""
        return self.manifest.has_organs

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, 2, D, H, W) float32 -> logits (N, classes, D, H, W) float32."""
        feed = {self.manifest.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self.manifest.output_name], feed)[0]

    def run_with_organs(self, batch: np.ndarray) -> tuple:
        """(N, 2, D, H, W) float32 -> (logits (N, classes, D, H, W), organ logits (N, organs, D/f, H/f, W/f)),
        both float32 from one run of the graph (f = the manifest's organ_downsampling)."""
        feed = {self.manifest.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        logits, organs = self.session.run([self.manifest.output_name, self.manifest.organ_output], feed)
        return logits, organs


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container quota)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def capped_threads(threads: int):
    """-> (threads to use, note or None). More threads than cores only slow every patch down (64 threads
    on 2 cores: 19 s a patch instead of 1.3 s) and delay a cancel by as long, so they are capped."""
    cores = available_cores()
    if threads > cores:
        return cores, (f"{threads} threads asked for, but this machine has {plural(cores, 'CPU core')} available; "
                       f"using {cores}.")
    return threads, None


def _session_options(ort, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0 lets onnxruntime use all physical cores
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _create_session(ort, manifest: Manifest, options, providers: list):
    try:
        return ort.InferenceSession(str(manifest.onnx_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ModelError(
            f"onnxruntime {ort.__version__} cannot load {manifest.onnx_path}: {exc}. "
            "Update onnxruntime, or re-export the model with a supported opset."
        ) from exc


def _check_io(session, manifest: Manifest) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if manifest.input_name not in inputs or manifest.output_name not in outputs:
        raise ModelError(
            f"{manifest.onnx_path} does not match its manifest: expected input '{manifest.input_name}' and "
            f"output '{manifest.output_name}', the graph has inputs {sorted(inputs)} and outputs "
            f"{sorted(outputs)}. Re-export the model."
        )
    shape = list(inputs[manifest.input_name].shape)
    expected = [2, *manifest.patch_size_zyx]
    if len(shape) != 5 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expected)):
        raise ModelError(
            f"{manifest.onnx_path}: input shape {shape} does not match the manifest (N, {expected}). "
            "Re-export the model."
        )
    if manifest.has_organs:
        _check_organ_output(session, manifest)


def _check_organ_output(session, manifest: Manifest) -> None:
    """The graph's organ output must exist and have one channel per organ of the manifest, on the patch grid
    divided by organ_downsampling (dimensions the graph leaves symbolic are checked at run time by numpy)."""
    outputs = {o.name: o for o in session.get_outputs()}
    if manifest.organ_output not in outputs:
        raise ModelError(
            f"{manifest.onnx_path} does not match its manifest: the manifest names the organ output "
            f"'{manifest.organ_output}', the graph has outputs {sorted(outputs)}. Re-export the model, or remove "
            "the organ entries from the manifest."
        )
    shape = list(outputs[manifest.organ_output].shape)
    factor = manifest.organ_downsampling
    expected = [len(manifest.organ_names), *(p // factor for p in manifest.patch_size_zyx)]
    if len(shape) != 5 or any(isinstance(s, int) and s != e for s, e in zip(shape[1:], expected)):
        raise ModelError(
            f"{manifest.onnx_path}: organ output '{manifest.organ_output}' has shape {shape}, the manifest "
            f"expects (N, {expected}): {len(manifest.organ_names)} organs (organ_names) on the patch grid "
            f"divided by {factor} (organ_downsampling). Re-export the model."
        )


def load_model(manifest_path=None, device: str = "cpu", threads: int = 1) -> Model:
    """Load the model of a manifest (None = the bundled one) after verifying its SHA-256.

    device "gpu" uses CUDA when onnxruntime-gpu and a GPU are available, otherwise it falls back to the CPU
    and sets Model.fallback_reason. threads is the CPU thread count (0 = all cores); more than the available
    cores are capped to them, with Model.threads_note saying so. The caller shows these notes (once).
    """
    if device not in ("cpu", "gpu"):
        raise InputError(f"Unknown device {device!r}: use 'cpu' or 'gpu'.")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise InputError(f"threads must be a whole number >= 0 (0 = all cores), got {threads!r}.")
    threads, threads_note = capped_threads(threads)
    manifest = load_manifest(manifest_path)
    verify_model_file(manifest)  # before any session: never execute an unverified graph
    ort = import_onnxruntime()
    options = _session_options(ort, threads)

    fallback_reason = None
    used = "cpu"
    session = None
    if device == "gpu":
        available = ort.get_available_providers()
        if CUDA_PROVIDER not in available:
            fallback_reason = (
                f"GPU requested but this onnxruntime ({ort.__version__}) has no CUDA support "
                f"(providers: {', '.join(available)}); running on the CPU. Install onnxruntime-gpu "
                "to use an NVIDIA GPU."
            )
        else:
            session = _create_session(ort, manifest, options, [CUDA_PROVIDER, CPU_PROVIDER])
            if session.get_providers()[0] == CUDA_PROVIDER:
                used = "gpu"
            else:
                fallback_reason = (
                    "GPU requested but onnxruntime could not start CUDA (no GPU, or CUDA/cuDNN libraries "
                    "missing); running on the CPU."
                )
    if session is None:
        session = _create_session(ort, manifest, options, [CPU_PROVIDER])
    _check_io(session, manifest)
    return Model(manifest, session, used, threads, fallback_reason, threads_note)
