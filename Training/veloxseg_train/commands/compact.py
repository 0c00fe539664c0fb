"""`veloxseg-train compact MODEL.json`: rewrite an exported model's storage (each weight once), verified.

For a model that is already exported (the bundled one, say) and whose checkpoint is not at hand: the graph
is rewritten by `onnx_storage.compact_model` and kept only if ONNX Runtime's logits from the new file
agree with those from the old one by the export's own rule (`export.agreement_report`, the old file's
logits standing for PyTorch's) on the export's verification input and, with --study, on every patch the
engine runs for that study. Then the .onnx is replaced and its manifest's SHA-256 updated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, help="the model's .json manifest; its .onnx is rewritten in place")
    parser.add_argument("--float16", action="store_true",
                        help="store large weights as float16, cast to float32 when the model loads (lossy)")
    parser.add_argument("--study", nargs=2, type=Path, metavar=("CT", "PET_SUV"),
                        help="also check on every patch of this study (CT in HU, PET in SUVbw image files)")


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_inputs(manifest, study) -> list:
    """(name, input batch) pairs: the export's verification input, then the patches the engine feeds the
    model for `study` (CT, PET SUV paths), if given."""
    import numpy as np
    import torch

    from VeloxSegSlicerLib.engine import load_model, read_image, segment_study

    generator = torch.Generator().manual_seed(20260)  # as export.verification_input
    inputs = [("verification input", torch.randn(1, 2, *manifest.patch_size_zyx, generator=generator).numpy())]
    if study:
        model = load_model(manifest.path, threads=1)
        run = model.run

        def recording_run(batch):
            inputs.append((f"study patch {len(inputs)}", np.array(batch, dtype=np.float32)))
            return run(batch)

        model.run = recording_run
        segment_study(read_image(study[0]), read_image(study[1]), model)
    return inputs


def run(args: argparse.Namespace) -> int:
    from VeloxSegSlicerLib.engine import ModelError, file_sha256, load_manifest, verify_model_file

    from ..export import agreement_report
    from ..onnx_storage import compact_onnx_file

    try:
        manifest = load_manifest(args.manifest)
        verify_model_file(manifest)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    onnx_path = manifest.onnx_path
    partial = onnx_path.with_name(onnx_path.name + ".partial")
    try:
        storage = compact_onnx_file(onnx_path, partial, float16=args.float16)
        old, new = _session(onnx_path), _session(partial)
        checks = {}
        for name, batch in check_inputs(manifest, args.study):
            feed = {manifest.input_name: batch}
            expected = old.run([manifest.output_name], feed)[0]
            report = agreement_report(new.run([manifest.output_name], feed)[0], expected)
            checks[name] = {k: report[k] for k in ("max_abs_delta", "limit", "argmax_identical")}
            if not report["agrees"]:
                print(f"error: the rewritten model disagrees with {onnx_path.name} on the {name}: max |delta| "
                      f"{report['max_abs_delta']:.3g} (limit {report['limit']:.3g}), argmax identical outside "
                      f"numerical ties: {report['argmax_identical']}. Nothing was changed.", file=sys.stderr)
                return 3
        data = dict(manifest.raw)
        previous = data["onnx_sha256"]
        data["onnx_sha256"] = file_sha256(partial)
        provenance = data.setdefault("provenance", {})
        provenance["storage"] = {
            "float16": args.float16, "tensor_bytes": storage["bytes_after"],
            "rewritten_from_sha256": previous, "tensor_bytes_before": storage["bytes_before"],
            "max_abs_delta_vs_previous": max(c["max_abs_delta"] for c in checks.values()),
        }
        tmp_manifest = manifest.path.with_name(manifest.path.name + ".partial")
        tmp_manifest.write_text(json.dumps(data, indent=2) + "\n")
        partial.replace(onnx_path)
        tmp_manifest.replace(manifest.path)
    finally:
        if partial.exists():
            partial.unlink()
    print(f"Rewrote {onnx_path} ({storage['bytes_before']:,} -> {storage['bytes_after']:,} bytes of tensors, "
          f"float16: {args.float16}) and its manifest; new vs old logits: {json.dumps(checks)}")
    return 0
