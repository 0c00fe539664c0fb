"""What naming each lesion's site costs: a whole-body study with and without the organ output, same graph.

Builds (or reuses, --keep) the synthetic AutoPET-size study of wholebody_latency.py and segments it with one
thread, in one process, alternating between
  (a) "organs": the model's manifest as given (it must have the organ entries): both outputs per window, the
      organ map and each lesion's site;
  (b) "lesions only": the same .onnx with a copy of the manifest without the organ entries (the engine asks
      the graph for the lesion logits only, as for a model without an organ output);
  (c) optionally (--baseline MANIFEST, e.g. the bundled model) another model, for the cost of the organ head
      in the graph itself.
Prints per variant the median wall and CPU (process) seconds of segment_study over --rounds rounds, the time
spent building the organ map (OrganVotes.add), the organ map's memory, and checks that (a) and (b) give
bit-identical lesion labels.

    python benchmarks/organ_site_cost.py --model /tmp/organmodel/veloxseg.json [--rounds 3] [--baseline M]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "VeloxSegSlicer"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def lesions_only_manifest(manifest_path: Path, folder: Path) -> Path:
    """A copy of the manifest without the organ entries, naming the same .onnx by its absolute path."""
    from VeloxSegSlicerLib.engine.inference.manifest import ORGAN_KEYS

    data = json.loads(manifest_path.read_text())
    if "organ_output" not in data:
        raise SystemExit(f"{manifest_path} has no organ output; export a model with an organ head")
    for key in ORGAN_KEYS:
        data.pop(key, None)
    data["onnx_file"] = str((manifest_path.parent / data["onnx_file"]).resolve())
    path = folder / "lesions_only.json"
    path.write_text(json.dumps(data))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="manifest of a model with an organ output")
    parser.add_argument("--baseline", help="another manifest to time beside them (e.g. the bundled model)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", help="folder for the synthetic study (reused if it holds one)")
    args = parser.parse_args()

    import numpy as np
    import SimpleITK as sitk  # noqa: N813
    from wholebody_latency import kept_study

    from VeloxSegSlicerLib.engine import load_model, segment_study
    from VeloxSegSlicerLib.engine.inference import organs as organs_module

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    folder, ct, pet = kept_study(args.keep, "veloxseg-organs-")

    manifests = {"organs": Path(args.model), "lesions only": lesions_only_manifest(Path(args.model), folder)}
    if args.baseline:
        manifests["baseline"] = Path(args.baseline)
    models = {name: load_model(path, threads=1) for name, path in manifests.items()}

    vote_seconds = [0.0]
    add = organs_module.OrganVotes.add

    def timed_add(self, region, organ_logits):
        started = time.perf_counter()
        add(self, region, organ_logits)
        vote_seconds[0] += time.perf_counter() - started

    organs_module.OrganVotes.add = timed_add
    times = {name: {"wall": [], "cpu": [], "votes": [], "stages": []} for name in models}
    labels = {}
    names = list(models)
    for round_number in range(args.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            vote_seconds[0] = 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            result = segment_study(ct, pet, models[name])
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["votes"].append(vote_seconds[0])
            times[name]["stages"].append(result.seconds)
            labels[name] = (sitk.GetArrayFromImage(result.label_ct), sitk.GetArrayFromImage(result.label_pet),
                            [lesion.site for lesion in result.lesions], result.windows_run, result.model_grid,
                            result.totals.lesion_count)
            print(f"round {round_number + 1} {name}: {times[name]['wall'][-1]:.2f} s wall, "
                  f"{times[name]['cpu'][-1]:.2f} s CPU", flush=True)

    grid = labels["organs"][4]
    voxels = int(np.prod(grid.size))
    print(f"\nstudy: CT {ct.GetSize()}, PET {pet.GetSize()}; model grid {tuple(grid.size)} ({voxels / 1e6:.1f} M "
          f"voxels), {labels['organs'][3]} windows; {args.rounds} rounds, one thread, medians")
    stages = list(times["organs"]["stages"][0])
    print(f"{'variant':<14} {'lesions':>7} {'wall s':>8} {'CPU s':>8} {'organ map s':>12}  "
          + "  ".join(f"{stage} s" for stage in stages))
    for name in names:
        row = times[name]
        print(f"{name:<14} {labels[name][5]:7d} {statistics.median(row['wall']):8.2f} "
              f"{statistics.median(row['cpu']):8.2f} {statistics.median(row['votes']):12.3f}  "
              + "  ".join(f"{statistics.median(s.get(stage, 0.0) for s in row['stages']):{len(stage) + 2}.2f}"
                          for stage in stages))
    base = times["lesions only"]
    for key in ("wall", "cpu"):
        ratio = statistics.median(times["organs"][key]) / statistics.median(base[key]) - 1.0
        print(f"organ output ({key}): {100 * ratio:+.1f} % against lesions only (same graph)")
    print(f"organ map memory while the windows run: {4 * voxels / 1e6:.0f} MB (one uint32 vote, float16 confidence "
          f"and code, per model-grid voxel), {voxels / 1e6:.0f} MB afterwards (uint8 codes)")
    same = all(np.array_equal(a, b) for a, b in zip(labels["organs"][:2], labels["lesions only"][:2]))
    print(f"lesion labels (CT and PET grids) bit-identical with and without the organ output: {same}")
    print(f"sites: {labels['organs'][2]}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
