"""Threshold calibration and the second-look candidate classifier (docs/training.md, "The second look").

- `calibrate`: the network runs once over each whole validation volume (the engine's segment_study, as
  `evaluate`), keeping the blended logit difference on the model grid; the ground truth is carried onto that
  grid (nearest neighbour). A sweep over lesion thresholds then scores each threshold exactly from the sorted
  logits of the truth and non-truth voxels, and picks the one maximising
      objective = mean Dice over the cases with lesions - penalty_per_ml x mean false-positive mL over the
                  lesion-free cases
  (ties: the threshold nearest 0). The default penalty, 0.01 per mL, prices the issue's limit of 10 mL per
  lesion-free study at 0.1 Dice: a threshold that buys Dice with false positives on healthy studies loses.
- `collect_candidates`: per case the candidates of the engine's own feature extraction (engine/inference/candidates.py)
  at a candidate threshold, each labelled positive when it holds a true lesion voxel and either at least
  `min_fraction` (10 %) of its voxels are lesion or it holds at least half of one true lesion (so a large
  physiological region that merely touches a lesion is negative, and a lesion found as part of a larger
  candidate is positive).
- `train_classifier`: a small MLP (or logistic regression, hidden=0) on standardised features, trained in
  PyTorch with class-balanced BCE; cross-validated by case (grouped folds, no case in two folds), AUC of the
  pooled out-of-fold scores; the score threshold keeps `min_recall` of the positive candidates out of fold
  (midway to the next negative, see score_threshold_for). The final model (all data) is written as a
  hand-built ONNX graph (Gemm, Relu, Sigmoid), checked against PyTorch with onnxruntime, with its manifest
  (engine/inference/manifest.py validates it).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk  # noqa: N813 - the library's conventional alias
from scipy import ndimage

from .evaluate import EvaluationError, iter_cases, load_any_model

DEFAULT_PROBABILITIES = tuple(round(p, 4) for p in np.arange(0.05, 0.951, 0.025))
DEFAULT_PENALTY_PER_ML = 0.01
SECOND_LOOK_FORMAT = "veloxseg-second-look/1"


def logit(probability: float) -> float:
    return float(math.log(probability / (1.0 - probability)))


def probability_of(logit_value: float) -> float:
    return float(1.0 / (1.0 + math.exp(-logit_value)))


# --------------------------------------------------------------------------- the network's whole-volume maps
@dataclass
class CaseMaps:
    name: str
    source: str
    result: object  # engine SegmentationResult with keep_maps=True
    truth: np.ndarray  # bool (z, y, x) on the model grid
    voxel_ml: float


def truth_on_model_grid(label: sitk.Image, grid) -> np.ndarray:
    reference = sitk.Image([int(n) for n in grid.size], sitk.sitkUInt8)
    reference.SetOrigin(tuple(float(o) for o in grid.origin))
    reference.SetSpacing(tuple(float(s) for s in grid.spacing))
    binary = sitk.Cast(label > 0, sitk.sitkUInt8)
    moved = sitk.Resample(binary, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(moved) > 0


def case_maps(model_path, cases_dir, split: Optional[str] = None, device: str = "cpu", threads: int = 0,
              overlap: float = 0.25, blending: str = "uniform", log=print):
    """Yield CaseMaps: the network run once over each whole case (segment_study with keep_maps)."""
    from VeloxSegSlicerLib.engine import SegmentOptions, VeloxSegError, segment_study

    model = load_any_model(model_path, device, threads)
    # the network alone: no second look while its own outputs are measured
    if getattr(model, "second_look", None) is not None:
        model.second_look = None
    options = SegmentOptions(overlap=overlap, blending=blending, min_lesion_ml=0.0, min_suv_max=0.0)
    for case in iter_cases(cases_dir, split):
        try:
            result = segment_study(case.ct, case.pet, model, options, keep_maps=True)
        except VeloxSegError as error:
            raise EvaluationError(f"case {case.name}: {error}") from None
        grid = result.model_grid
        log(f"{case.name}: {result.windows_run} windows, {sum(result.seconds.values()):.1f} s")
        yield model, CaseMaps(case.name, case.source, result, truth_on_model_grid(case.label, grid),
                              float(np.prod(grid.spacing)) / 1000.0)


# --------------------------------------------------------------------------- calibration
@dataclass
class CaseLogits:
    """What the sweep needs of one case: the sorted logits of its truth voxels and of the other voxels above
    the lowest threshold swept."""

    name: str
    positive: np.ndarray
    negative: np.ndarray
    voxel_ml: float

    @classmethod
    def of(cls, name: str, logit_diff: np.ndarray, truth: np.ndarray, voxel_ml: float, lowest: float):
        negative = logit_diff[~truth]
        return cls(name, np.sort(logit_diff[truth]), np.sort(negative[negative > lowest]), voxel_ml)

    def above(self, threshold: float):
        """(true-positive, false-positive) voxels at lesion where logit > threshold."""
        t = np.float32(threshold)
        tp = self.positive.size - int(np.searchsorted(self.positive, t, side="right"))
        fp = self.negative.size - int(np.searchsorted(self.negative, t, side="right"))
        return tp, fp


def sweep(cases: Sequence[CaseLogits], thresholds: Sequence[float],
          penalty_per_ml: float = DEFAULT_PENALTY_PER_ML) -> List[Dict[str, float]]:
    """One row per threshold (logit): mean Dice of the lesion cases, mean FP mL of the lesion-free cases, the
    objective (module docstring) and more."""
    rows = []
    for threshold in thresholds:
        dices, fp_neg, fp_all = [], [], []
        for case in cases:
            tp, fp = case.above(threshold)
            fp_all.append(fp * case.voxel_ml)
            if case.positive.size:
                fn = case.positive.size - tp
                dices.append(2.0 * tp / (2.0 * tp + fp + fn))
            else:
                fp_neg.append(fp * case.voxel_ml)
        dice = float(np.mean(dices)) if dices else 0.0
        fp_ml_neg = float(np.mean(fp_neg)) if fp_neg else 0.0
        rows.append({"threshold_logit": float(threshold), "probability": probability_of(threshold),
                     "dice_pos": dice, "fp_ml_neg": fp_ml_neg, "fp_ml_all": float(np.mean(fp_all)),
                     "objective": dice - penalty_per_ml * fp_ml_neg})
    return rows


def best_row(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """The row of the highest objective; on a tie the threshold nearest 0 (the uncalibrated one)."""
    return max(rows, key=lambda r: (round(r["objective"], 12), -abs(r["threshold_logit"])))


def calibrate(model_path, cases_dir, out_dir, split: Optional[str] = "val", device: str = "cpu", threads: int = 0,
              penalty_per_ml: float = DEFAULT_PENALTY_PER_ML, probabilities=DEFAULT_PROBABILITIES,
              write_manifest=None, log=print) -> dict:
    """Sweep the lesion threshold on whole validation volumes; write calibration.csv and calibration.json
    into out_dir (and the chosen threshold into write_manifest). -> the calibration record."""
    thresholds = sorted(logit(p) for p in probabilities)
    cases = [CaseLogits.of(maps.name, maps.result.logit_diff, maps.truth, maps.voxel_ml, thresholds[0])
             for _, maps in case_maps(model_path, cases_dir, split, device, threads, log=log)]
    if not cases:
        raise EvaluationError(f"{cases_dir}: no cases to calibrate on")
    rows = sweep(cases, thresholds, penalty_per_ml)
    chosen = best_row(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_rows(out_dir / "calibration.csv", list(rows[0]), rows)
    lesion_cases = sum(1 for c in cases if c.positive.size)
    record = {
        "logit": round(chosen["threshold_logit"], 6),
        "probability": round(chosen["probability"], 6),
        "chosen_on": f"{cases_dir}" + (f" split {split}" if split else "") +
                     f": {lesion_cases} cases with lesions, {len(cases) - lesion_cases} lesion-free",
        "metric": f"max mean Dice (lesion cases) - {penalty_per_ml:g} x mean FP mL (lesion-free cases), "
                  "voxels on the model grid",
        "dice_pos": round(chosen["dice_pos"], 6), "fp_ml_neg": round(chosen["fp_ml_neg"], 6),
        "at_0.5": {k: round(v, 6) for k, v in min(rows, key=lambda r: abs(r["threshold_logit"])).items()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / "calibration.json").write_text(json.dumps({"model": str(model_path), "lesion_threshold": record},
                                                         indent=2))
    if write_manifest is not None:
        update_manifest(write_manifest, {"lesion_threshold": record})
    log(f"chosen lesion threshold: logit {record['logit']:.4f} (probability {record['probability']:.3f}), "
        f"Dice {chosen['dice_pos']:.3f}, FP {chosen['fp_ml_neg']:.1f} mL per lesion-free case")
    return record


def update_manifest(manifest_path, entries: dict, remove: Sequence[str] = ()) -> None:
    """Set entries in a model manifest (never its ONNX file), validated by the engine before it replaces
    the manifest (a threshold below the second look's candidate threshold, say, leaves it untouched)."""
    from VeloxSegSlicerLib.engine import load_manifest, verify_model_file

    path = Path(manifest_path)
    if path.suffix != ".json" or not path.is_file():
        raise EvaluationError(f"{path}: give an exported model's manifest (.json) to write into")
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(entries)
    for key in remove:
        data.pop(key, None)
    handle, temporary = tempfile.mkstemp(prefix=".manifest-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(data, indent=2) + "\n")
        verify_model_file(load_manifest(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_rows(path: Path, columns: List[str], rows: List[Dict[str, object]]) -> None:
    with Path(path).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.7g}" if isinstance(v, float) else v) for k, v in row.items()})


# --------------------------------------------------------------------------- candidates
MIN_FRACTION = 0.1


def candidate_labels(labels: np.ndarray, count: int, voxels: np.ndarray, truth: np.ndarray,
                     min_fraction: float = MIN_FRACTION):
    """-> (label (count,) int, overlap voxels (count,)) by the rule of the module docstring."""
    overlap = np.bincount(labels[truth].ravel(), minlength=count + 1)[1:].astype(np.int64)
    positive = (overlap > 0) & (overlap >= min_fraction * voxels)
    true_lesions, n = ndimage.label(truth, structure=np.ones((3, 3, 3), bool))
    if n:
        sizes = np.bincount(true_lesions.ravel(), minlength=n + 1)
        both = (true_lesions > 0) & (labels > 0)
        pairs, counts = np.unique(true_lesions[both].astype(np.int64) * (count + 1) + labels[both],
                                  return_counts=True)
        for pair, shared in zip(pairs, counts):
            lesion, candidate = divmod(int(pair), count + 1)
            if shared >= 0.5 * sizes[lesion]:
                positive[candidate - 1] = True
    return positive.astype(np.int64), overlap


def collect_candidates(model_path, cases_dir, out_csv, split: Optional[str] = "train",
                       candidate_probability: float = 0.25, device: str = "cpu", threads: int = 0,
                       min_fraction: float = MIN_FRACTION, log=print) -> dict:
    """Write one row per candidate (case, features, label) to out_csv and its description to out_csv.json."""
    from VeloxSegSlicerLib.engine import candidate_features

    threshold = logit(candidate_probability)
    rows, names, model_info = [], None, {}
    true_total = true_covered = 0
    for model, maps in case_maps(model_path, cases_dir, split, device, threads, log=log):
        manifest = model.manifest
        lesion_threshold = float(getattr(manifest, "lesion_threshold", 0.0))
        if threshold > lesion_threshold:
            raise EvaluationError(f"the candidate threshold (probability {candidate_probability:g}) is above the "
                                  f"model's lesion threshold (probability {probability_of(lesion_threshold):.3g}); "
                                  "choose a lower --candidate-probability")
        result = maps.result
        organ_codes = (sitk.GetArrayViewFromImage(result.organ_map.image) if result.organ_map is not None else None)
        found = candidate_features(result.logit_diff, result.model_ct_hu, result.model_pet_suv, result.model_grid,
                                   threshold, organ_codes, manifest.organ_names, manifest.organ_names)
        names = found.feature_names
        model_info = {"organ_names": list(manifest.organ_names), "lesion_threshold": lesion_threshold}
        labels, overlap = candidate_labels(found.labels, found.count, found.voxels, maps.truth, min_fraction)
        true_lesions, n = ndimage.label(maps.truth, structure=np.ones((3, 3, 3), bool))
        true_total += n
        true_covered += len(np.unique(true_lesions[(true_lesions > 0) & (found.labels > 0)]))
        for index in range(found.count):
            row = {"case": maps.name, "source": maps.source, "candidate": index + 1,
                   "voxels": int(found.voxels[index]), "overlap_voxels": int(overlap[index]),
                   "label": int(labels[index])}
            row.update({name: float(v) for name, v in zip(names, found.features[index])})
            rows.append(row)
        log(f"  {found.count} candidates, {int(labels.sum())} positive")
    if names is None:
        raise EvaluationError(f"{cases_dir}: no cases")
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out_csv, ["case", "source", "candidate", "voxels", "overlap_voxels", "label", *names], rows)
    description = {
        "model": str(model_path), "cases": str(cases_dir), "split": split,
        "candidate_threshold": {"logit": round(threshold, 6), "probability": candidate_probability},
        "feature_names": list(names), "label_rule": f"holds a true-lesion voxel and either >= {min_fraction:g} of "
                                                    "its voxels are lesion or it holds >= half of a true lesion",
        "candidates": len(rows), "positives": int(sum(r["label"] for r in rows)),
        "cases_used": len({r["case"] for r in rows}), "true_lesions": true_total,
        "true_lesions_in_candidates": true_covered, **model_info,
    }
    sidecar(out_csv).write_text(json.dumps(description, indent=2))
    log(f"{len(rows)} candidates ({description['positives']} positive); candidates hold {true_covered} of "
        f"{true_total} true lesions")
    return description


def sidecar(csv_path) -> Path:
    return Path(csv_path).with_suffix(".json")


# --------------------------------------------------------------------------- the classifier
def read_table(csv_path):
    """-> (features (n, f) float32, labels (n,), cases (n,), description) of a candidates CSV."""
    description_path = sidecar(csv_path)
    if not description_path.is_file():
        raise EvaluationError(f"{description_path} is missing: write the table with `veloxseg-train candidates`")
    description = json.loads(description_path.read_text())
    names = description["feature_names"]
    with Path(csv_path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise EvaluationError(f"{csv_path}: no candidates")
    features = np.array([[float(r[n]) for n in names] for r in rows], dtype=np.float32)
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    cases = np.array([r["case"] for r in rows])
    return features, labels, cases, description


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    positive, negative = int(labels.sum()), int((1 - labels).sum())
    if positive == 0 or negative == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels == 1].sum() - positive * (positive + 1) / 2.0) / (positive * negative))


def standardisation(features: np.ndarray):
    mean = features.mean(axis=0).astype(np.float64)
    std = features.std(axis=0).astype(np.float64)
    std[std < 1e-6] = 1.0  # a constant feature (e.g. an organ never seen) passes as it is
    return mean, std


def fit(features: np.ndarray, labels: np.ndarray, hidden: int = 16, epochs: int = 400, seed: int = 0,
        weight_decay: float = 1e-3):
    """-> (weights [(W, b), ...] as numpy, mean, std): a class-balanced MLP (hidden=0: logistic regression)."""
    import torch

    mean, std = standardisation(features)
    x = torch.from_numpy(((features - mean) / std).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)] if hidden else \
        [torch.nn.Linear(x.shape[1], 1)]
    network = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for layer in network:
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) * 2 * bound - bound)
                layer.bias.zero_()
    positives = max(float(y.sum()), 1.0)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - positives) / positives))
    optimiser = torch.optim.Adam(network.parameters(), lr=0.02, weight_decay=weight_decay)
    for _ in range(epochs):
        optimiser.zero_grad()
        loss = loss_fn(network(x).squeeze(1), y)
        loss.backward()
        optimiser.step()
    weights = [(layer.weight.detach().numpy().astype(np.float32), layer.bias.detach().numpy().astype(np.float32))
               for layer in network if isinstance(layer, torch.nn.Linear)]
    return weights, mean, std


def predict(weights, mean, std, features: np.ndarray) -> np.ndarray:
    x = ((features - mean) / std).astype(np.float32)
    for index, (w, b) in enumerate(weights):
        x = x @ w.T + b
        if index < len(weights) - 1:
            x = np.maximum(x, 0.0)
    return (1.0 / (1.0 + np.exp(-x[:, 0].astype(np.float64)))).astype(np.float32)


def case_folds(cases: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per row, whole cases per fold (shuffled with seed)."""
    names = np.unique(cases)
    np.random.default_rng(seed).shuffle(names)
    fold_of = {name: i % folds for i, name in enumerate(names)}
    return np.array([fold_of[c] for c in cases])


def score_threshold_for(scores: np.ndarray, labels: np.ndarray, min_recall: float) -> float:
    """A threshold keeping at least min_recall of the positives (score >= threshold) and removing as many
    negatives as any such threshold, placed midway between the last positive kept and the next lower
    negative score (out-of-fold scores; the model trained on all data scores a little differently)."""
    positive = np.sort(scores[labels == 1])[::-1]
    if positive.size == 0:
        return 0.5
    keep = max(1, int(math.ceil(min_recall * positive.size)))
    threshold = float(positive[keep - 1])
    lower = scores[(labels == 0) & (scores < threshold)]
    return (threshold + float(lower.max())) / 2.0 if lower.size else threshold


def export_onnx(weights, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, initializers, current = [], [], "features"
    for index, (w, b) in enumerate(weights):
        initializers += [numpy_helper.from_array(w, f"w{index}"), numpy_helper.from_array(b, f"b{index}")]
        nodes.append(helper.make_node("Gemm", [current, f"w{index}", f"b{index}"], [f"h{index}"], transB=1))
        current = f"h{index}"
        if index < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{index}"]))
            current = f"r{index}"
    nodes.append(helper.make_node("Sigmoid", [current], ["score"]))
    graph = helper.make_graph(
        nodes, "veloxseg_second_look",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", int(weights[0][0].shape[1])])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="veloxseg-train")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def train_classifier(csv_paths: Sequence, out_onnx, hidden: int = 16, folds: int = 5, min_recall: float = 0.95,
                     epochs: int = 400, seed: int = 0, attach=None, log=print) -> dict:
    """Cross-validate, train on everything, export second_look.onnx + second_look.json (and, with attach, name
    it in that model manifest). -> the classifier's manifest."""
    import onnxruntime

    from VeloxSegSlicerLib.engine import file_sha256

    tables = [read_table(p) for p in csv_paths]
    descriptions = [t[3] for t in tables]
    if any(d["feature_names"] != descriptions[0]["feature_names"] for d in descriptions) or \
            any(d["candidate_threshold"] != descriptions[0]["candidate_threshold"] for d in descriptions):
        raise EvaluationError("the tables differ in features or candidate threshold; collect them with one model")
    features = np.concatenate([t[0] for t in tables])
    labels = np.concatenate([t[1] for t in tables])
    cases = np.concatenate([np.char.add(f"{i}:", t[2]) for i, t in enumerate(tables)])
    if labels.min() == labels.max():
        raise EvaluationError("the candidates are all of one class; the classifier needs positives and negatives")
    folds = max(2, min(folds, len(np.unique(cases))))
    fold = case_folds(cases, folds, seed)
    out_of_fold = np.zeros(len(labels), dtype=np.float32)
    fold_aucs = []
    for k in range(folds):
        train, test = fold != k, fold == k
        if labels[train].min() == labels[train].max():
            out_of_fold[test] = 0.5  # a fold without both classes to learn from: no opinion
            continue
        weights, mean, std = fit(features[train], labels[train], hidden, epochs, seed)
        out_of_fold[test] = predict(weights, mean, std, features[test])
        fold_aucs.append(auc(out_of_fold[test], labels[test]))
    cv_auc = auc(out_of_fold, labels)
    threshold = score_threshold_for(out_of_fold, labels, min_recall)
    kept = out_of_fold >= threshold
    weights, mean, std = fit(features, labels, hidden, epochs, seed)

    out_onnx = Path(out_onnx)
    out_onnx.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(weights, out_onnx)
    session = onnxruntime.InferenceSession(str(out_onnx), providers=["CPUExecutionProvider"])
    onnx_scores = session.run(["score"], {"features": ((features - mean) / std).astype(np.float32)})[0][:, 0]
    difference = float(np.abs(onnx_scores - predict(weights, mean, std, features)).max())
    if difference > 1e-4:
        raise EvaluationError(f"the exported classifier differs from the trained one by {difference:.2g}")
    first = descriptions[0]
    manifest = {
        "format": SECOND_LOOK_FORMAT,
        "onnx_file": out_onnx.name,
        "onnx_sha256": file_sha256(out_onnx),
        "input_name": "features",
        "output_name": "score",
        "feature_names": first["feature_names"],
        "feature_mean": [float(v) for v in mean],
        "feature_std": [float(v) for v in std],
        "candidate_threshold": first["candidate_threshold"],
        "score_threshold": round(threshold, 6),
        "classifier": {"kind": f"MLP {len(first['feature_names'])}-{hidden}-1" if hidden else "logistic regression",
                       "epochs": epochs, "seed": seed, "loss": "class-balanced BCE, Adam, full batch"},
        "training": {
            "tables": [str(p) for p in csv_paths],
            "data": [f"{d['cases']} split {d['split']} ({d['cases_used']} cases with candidates), model {d['model']}"
                     for d in descriptions],
            "label_rule": first["label_rule"],
            "candidates": int(len(labels)), "positives": int(labels.sum()),
            "cv_folds": folds, "cv_by": "case", "cv_auc": round(cv_auc, 6),
            "cv_fold_auc": [round(a, 6) for a in fold_aucs],
            "score_threshold_rule": f"keeps >= {min_recall:g} of the positive candidates out of fold, midway "
                                    "between the last positive kept and the next lower negative",
            "cv_at_threshold": {"positives_kept": round(float(kept[labels == 1].mean()), 6),
                                "negatives_removed": round(float(1.0 - kept[labels == 0].mean()), 6)
                                if (labels == 0).any() else None},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    manifest_path = out_onnx.with_suffix(".json")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    at = manifest["training"]["cv_at_threshold"]
    log(f"cross-validated AUC {cv_auc:.4f} ({folds} folds by case, {len(labels)} candidates, {int(labels.sum())} "
        f"positive); score threshold {threshold:.4f} keeps {at['positives_kept']:.3f} of positives and removes "
        f"{at['negatives_removed']} of negatives")
    if attach is not None:
        attach_second_look(attach, manifest_path)
        log(f"{attach} now names {manifest_path.name} as its second look")
    return manifest


def attach_second_look(model_manifest, second_look_manifest) -> None:
    """Name the classifier's manifest in a model manifest (path relative to it), validated by the engine."""
    model_manifest = Path(model_manifest)
    relative = os.path.relpath(Path(second_look_manifest).resolve(), model_manifest.resolve().parent)
    update_manifest(model_manifest, {"second_look": relative})
