"""The second look: a small classifier scores every lesion candidate; only those it keeps become lesions.

The candidates and their features are `candidates.candidate_features` (the candidate threshold of the
classifier's manifest, on the model grid). The classifier is an ONNX graph, run by onnxruntime on one thread:
input (N, features) float32, the features standardised with the manifest's mean and std, output (N,) or
(N, 1) scores in [0, 1]. A candidate is kept when its score >= the manifest's score_threshold.

Which voxels of a kept candidate are lesion: those above the lesion threshold (0, or the calibrated one), so
the classifier only removes false positives and never changes the outline of a lesion the network is sure
of; a kept candidate with no voxel above the lesion threshold (the network unsure everywhere: a rescued
lesion) keeps its voxels above the candidate threshold (its one-voxel rim is measured against that threshold
too, so its outline on the CT and PET grids is the network's at the candidate threshold). The result is a
decision map for `postprocess.label_maps` (lesion where > 0): the logit difference minus the threshold that
applies to the voxel, and sliding_window.NOT_COVERED over the rejected candidates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from .candidates import candidate_features
from .manifest import SecondLookManifest
from .postprocess import _dilate
from .sliding_window import NOT_COVERED


@dataclass
class SecondLookResult:
    decision: np.ndarray  # float32 (z, y, x): lesion where > 0 (see the module docstring)
    candidates: int = 0
    kept: int = 0
    scores: np.ndarray = None  # (candidates,) float32, candidate i + 1
    seconds: dict = field(default_factory=dict)


class SecondLook:
    """A loaded candidate classifier (its manifest verified by manifest.verify_model_file beforehand)."""

    def __init__(self, manifest: SecondLookManifest):
        from .runtime import import_onnxruntime

        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(manifest.onnx_path), sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise ModelError(f"onnxruntime cannot load the second-look classifier {manifest.onnx_path}: {exc}. "
                             "Re-export it with `veloxseg-train train-classifier`.") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if manifest.input_name not in inputs or manifest.output_name not in outputs:
            raise ModelError(f"{manifest.onnx_path} does not match {manifest.path}: expected input "
                             f"'{manifest.input_name}' and output '{manifest.output_name}', the graph has "
                             f"{sorted(inputs)} and {sorted(outputs)}.")
        width = inputs[manifest.input_name].shape[-1]
        if isinstance(width, int) and width != len(manifest.feature_names):
            raise ModelError(f"{manifest.onnx_path} takes {width} features, {manifest.path} lists "
                             f"{len(manifest.feature_names)}. Re-export it with `veloxseg-train train-classifier`.")
        self.manifest = manifest
        self.mean = np.asarray(manifest.feature_mean, dtype=np.float32)
        self.std = np.asarray(manifest.feature_std, dtype=np.float32)

    def score(self, features: np.ndarray) -> np.ndarray:
        """(N, features) raw features -> (N,) float32 scores."""
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        x = ((np.asarray(features, dtype=np.float32) - self.mean) / self.std).astype(np.float32)
        scores = self.session.run([self.manifest.output_name], {self.manifest.input_name: x})[0]
        return np.asarray(scores, dtype=np.float32).reshape(len(features))

    def decide(self, logit_diff: np.ndarray, ct_hu: np.ndarray, pet_suv: np.ndarray, grid,
               lesion_threshold: float, organ_codes=None, model_organ_names=(), threads: int = 1) -> SecondLookResult:
        """The decision map of the module docstring (a new array; logit_diff is not changed)."""
        started = time.perf_counter()
        found = candidate_features(logit_diff, ct_hu, pet_suv, grid, self.manifest.candidate_threshold,
                                   organ_codes, model_organ_names, self.manifest.organ_names, threads)
        featured = time.perf_counter()
        scores = self.score(found.features)
        scored = time.perf_counter()
        lesion_t = np.float32(lesion_threshold)
        candidate_t = np.float32(self.manifest.candidate_threshold)
        decision = logit_diff - lesion_t
        kept = 0
        for label in range(1, found.count + 1):
            lo, hi = found.boxes[label]
            region = tuple(slice(a, b) for a, b in zip(lo, hi))
            inside = found.labels[region] == label
            if scores[label - 1] >= self.manifest.score_threshold:
                kept += 1
                if not (logit_diff[region][inside] > lesion_t).any():
                    # rescued: the candidate and its one-voxel rim (what label_maps interpolates) measured
                    # against the candidate threshold, so its outline is the network's at that threshold
                    grown = tuple(slice(max(a - 1, 0), min(b + 1, n)) for a, b, n in zip(lo, hi, logit_diff.shape))
                    around = _dilate(found.labels[grown] == label) & (found.labels[grown] == 0)
                    around |= found.labels[grown] == label
                    decision[grown][around] = logit_diff[grown][around] - candidate_t
            else:
                decision[region][inside] = NOT_COVERED
        return SecondLookResult(decision, found.count, kept, scores,
                                {"features": featured - started, "classifier": scored - featured,
                                 "decision": time.perf_counter() - scored})
