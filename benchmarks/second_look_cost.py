"""What the second look costs on a whole-body study: the same network with and without the candidate classifier.

Builds (or reuses, --keep) the synthetic AutoPET-size study of wholebody_latency.py and segments it with one
thread, in one process, alternating between
  (a) "plain": a copy of the model's manifest without "lesion_threshold" and "second_look" (the engine as
      before the stage);
  (b) "second look": a copy naming a classifier: --classifier SECOND_LOOK.json (trained by `veloxseg-train
      train-classifier`), or by default a stand-in of the same size (an MLP of the engine's features, 16
      hidden units, random weights, candidate threshold probability 0.25, score threshold 0.5: what it keeps
      does not matter here, only what scoring every candidate costs).
Prints per variant the median wall and CPU (process) seconds of segment_study over --rounds rounds, and of
the second look itself (candidates, features, classifier, decision map) its wall and CPU seconds and the
number of candidates.

    python benchmarks/second_look_cost.py [--model MANIFEST] [--classifier SECOND_LOOK.json] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "VeloxSegSlicer"))
sys.path.insert(0, str(ROOT / "Training"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def manifests(model: Path, classifier, folder: Path) -> dict:
    data = json.loads(model.read_text())
    data["onnx_file"] = str((model.parent / data["onnx_file"]).resolve())
    data.pop("second_look", None)
    data.pop("lesion_threshold", None)
    plain = folder / "plain.json"
    plain.write_text(json.dumps(data))
    if classifier is None:
        import numpy as np

        from veloxseg_train.second_look import SECOND_LOOK_FORMAT, export_onnx
        from VeloxSegSlicerLib.engine.inference.candidates import FEATURE_NAMES
        from VeloxSegSlicerLib.engine.inference.manifest import file_sha256

        rng = np.random.default_rng(0)
        width = len(FEATURE_NAMES)
        weights = [(rng.normal(0, 0.3, (16, width)).astype(np.float32), np.zeros(16, np.float32)),
                   (rng.normal(0, 0.3, (1, 16)).astype(np.float32), np.zeros(1, np.float32))]
        export_onnx(weights, folder / "stand_in.onnx")
        classifier = folder / "stand_in.json"
        classifier.write_text(json.dumps({
            "format": SECOND_LOOK_FORMAT, "onnx_file": "stand_in.onnx",
            "onnx_sha256": file_sha256(folder / "stand_in.onnx"), "input_name": "features", "output_name": "score",
            "feature_names": list(FEATURE_NAMES), "feature_mean": [0.0] * width, "feature_std": [1.0] * width,
            "candidate_threshold": {"logit": -1.0986123, "probability": 0.25}, "score_threshold": 0.5}))
    else:
        classifier = Path(classifier).resolve()
        sl = json.loads(classifier.read_text())
        shutil.copy(classifier.parent / sl["onnx_file"], folder / sl["onnx_file"])
        shutil.copy(classifier, folder / classifier.name)
        classifier = folder / classifier.name
    data["second_look"] = classifier.name
    looked = folder / "second_look_model.json"
    looked.write_text(json.dumps(data))
    return {"plain": plain, "second look": looked}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "VeloxSegSlicer/Resources/Models/veloxseg.json"))
    parser.add_argument("--classifier", help="a second-look manifest (default: a stand-in of the same size)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="folder for the synthetic study (reused if it holds one)")
    args = parser.parse_args()

    import SimpleITK as sitk  # noqa: N813
    from wholebody_latency import kept_study

    from VeloxSegSlicerLib.engine import load_model, segment_study
    from VeloxSegSlicerLib.engine.inference import second_look as second_look_module

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    folder, ct, pet = kept_study(args.keep, "veloxseg-second-look-")
    models = {name: load_model(path, threads=1) for name, path in manifests(Path(args.model), args.classifier,
                                                                             folder).items()}
    look = {"wall": 0.0, "cpu": 0.0}
    decide = second_look_module.SecondLook.decide

    def timed_decide(self, *a, **k):
        wall, cpu = time.perf_counter(), time.process_time()
        result = decide(self, *a, **k)
        look["wall"], look["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
        return result

    second_look_module.SecondLook.decide = timed_decide
    times = {name: {"wall": [], "cpu": [], "look_wall": [], "look_cpu": []} for name in models}
    outcome = {}
    names = list(models)
    for round_number in range(args.rounds):
        for name in names if round_number % 2 == 0 else names[::-1]:
            look["wall"] = look["cpu"] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            result = segment_study(ct, pet, models[name])
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["look_wall"].append(look["wall"])
            times[name]["look_cpu"].append(look["cpu"])
            outcome[name] = (result.totals.lesion_count, result.second_look_candidates, result.second_look_kept,
                             result.windows_run, result.model_grid)
            print(f"round {round_number + 1} {name}: {times[name]['wall'][-1]:.2f} s wall, "
                  f"{times[name]['cpu'][-1]:.2f} s CPU", flush=True)
    grid = outcome["plain"][4]
    print(f"\nstudy: CT {ct.GetSize()}, PET {pet.GetSize()}; model grid {tuple(grid.size)}, {outcome['plain'][3]} "
          f"windows; {args.rounds} rounds, one thread, medians")
    print(f"{'variant':<12} {'lesions':>7} {'candidates':>10} {'kept':>5} {'wall s':>8} {'CPU s':>8} "
          f"{'2nd look wall s':>16} {'2nd look CPU s':>15}")
    for name in names:
        row = times[name]
        lesions, candidates, kept = outcome[name][:3]
        print(f"{name:<12} {lesions:7d} {'-' if candidates is None else candidates:>10} "
              f"{'-' if kept is None else kept:>5} {statistics.median(row['wall']):8.2f} "
              f"{statistics.median(row['cpu']):8.2f} {statistics.median(row['look_wall']):16.3f} "
              f"{statistics.median(row['look_cpu']):15.3f}")
    plain = times["plain"]
    for key in ("wall", "cpu"):
        share = statistics.median(times["second look"][f"look_{key}"]) / statistics.median(plain[key])
        total = statistics.median(times["second look"][key]) / statistics.median(plain[key]) - 1.0
        print(f"second look ({key}): the stage is {100 * share:.2f} % of the plain study; whole study "
              f"{100 * total:+.1f} % (includes run-to-run noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
