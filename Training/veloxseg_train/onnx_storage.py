"""Compact storage for an exported ONNX graph: each weight stored once, derived constants rebuilt at load.

The exporter folds every constant it can, so the file holds derived tensors whole: the relative-position
bias pre-tiled for the M x M modality blocks, the in-window trilinear upsampling matrices (Kronecker
products of three small 1-D interpolation matrices, mostly zeros), sometimes also in transposed form.
This pass rewrites only how initializers are stored; the graph's operators, inputs and outputs are left
as they are, so it works on any exported graph whatever its outputs:
- identical initializers are stored once (their consumers read the kept one);
- a tensor that repeats a block along some axes is stored as that block and a Tile;
- a 2-D tensor that is a Kronecker product is stored as its factors and rebuilt by Reshape + Mul (accepted
  only when the float32 product differs from the stored tensor by at most KRON_ULPS units in the last
  place of its largest entry);
- a tensor of few distinct values is stored as those values and a uint8/uint16 index, rebuilt by a Gather;
- optionally (float16=True), float32 tensors of at least `min_bytes` are stored as float16 and cast back
  to float32 by a Cast (lossy: the caller verifies the outputs).
Every rebuilding node reads initializers only, so ONNX Runtime's constant folding (on at its default and
every higher optimisation level) computes them once when the session is created: inference runs on the
same float32 tensors as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_BYTES = 4096  # smaller tensors are left as they are
KRON_ULPS = 2  # largest accepted |factor product - stored| in float32 ulps of the tensor's largest entry
PALETTE_MAX_RATIO = 0.6  # a palette encoding must take at most this fraction of the plain tensor's bytes


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers' data."""
    return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


class _Builder:
    """Collects the new initializers and nodes that rebuild the graph's constants."""

    def __init__(self, float16: bool, min_bytes: int):
        self.float16 = float16
        self.min_bytes = min_bytes
        self.initializers: List[TensorProto] = []
        self.nodes: List[onnx.NodeProto] = []
        self.encodings: Dict[str, str] = {}
        self.max_kron_error = 0.0

    def constant(self, name: str, array: np.ndarray) -> None:
        """A plain initializer (float16 + Cast when asked and the tensor is large enough)."""
        if self.float16 and array.dtype == np.float32 and array.nbytes >= self.min_bytes:
            self.initializers.append(numpy_helper.from_array(array.astype(np.float16), f"{name}/fp16"))
            self.nodes.append(helper.make_node("Cast", [f"{name}/fp16"], [name], name=f"{name}/cast",
                                               to=TensorProto.FLOAT))
            return
        self.initializers.append(numpy_helper.from_array(array, name))

    def shape(self, name: str, values) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def encode(self, name: str, array: np.ndarray) -> np.ndarray:
        """Emit what produces tensor `name` equal to `array`; returns the float32 value the graph computes
        before any float16 rounding (equal to `array` except within KRON_ULPS for Kronecker factors)."""
        if array.dtype != np.float32 or array.nbytes < self.min_bytes:
            self.constant(name, array)
            return array
        tile = _smallest_tile(array)
        if tile is not None:
            self._note(name, f"tile {list(tile.shape)} x {[a // b for a, b in zip(array.shape, tile.shape)]}")
            block = self.encode(f"{name}/block", tile)
            repeats = self.shape(f"{name}/repeats", [a // b for a, b in zip(array.shape, tile.shape)])
            self.nodes.append(helper.make_node("Tile", [f"{name}/block", repeats], [name], name=f"{name}/tile"))
            return np.tile(block, [a // b for a, b in zip(array.shape, tile.shape)])
        factors = _kronecker_factors(array) if array.ndim == 2 else None
        if factors is not None:
            (p1, q1), (p2, q2) = factors[0].shape, factors[1].shape
            self._note(name, f"kron {[p1, q1]} x {[p2, q2]}")
            left = self.encode(f"{name}/kron_a", factors[0])
            right = self.encode(f"{name}/kron_b", factors[1])
            for part, shape in (("a", (p1, 1, q1, 1)), ("b", (1, p2, 1, q2))):
                self.nodes.append(helper.make_node(
                    "Reshape", [f"{name}/kron_{part}", self.shape(f"{name}/kron_{part}_shape", shape)],
                    [f"{name}/kron_{part}4"], name=f"{name}/kron_{part}_reshape"))
            self.nodes.append(helper.make_node("Mul", [f"{name}/kron_a4", f"{name}/kron_b4"], [f"{name}/kron"],
                                               name=f"{name}/kron_mul"))
            self.nodes.append(helper.make_node("Reshape", [f"{name}/kron", self.shape(f"{name}/shape", array.shape)],
                                               [name], name=f"{name}/kron_reshape"))
            value = np.kron(left, right).astype(np.float32)  # float32 products, as ONNX Runtime's Mul
            error = float(np.abs(value - array).max())
            self.max_kron_error = max(self.max_kron_error, error / max(float(np.abs(array).max()), 1e-30))
            return value
        palette = _palette(array)
        if palette is not None:
            values, index = palette
            self._note(name, f"palette of {values.size} values, {index.dtype} index")
            self.constant(f"{name}/values", values)
            self.initializers.append(numpy_helper.from_array(index, f"{name}/index"))
            self.nodes.append(helper.make_node("Cast", [f"{name}/index"], [f"{name}/index32"],
                                               name=f"{name}/index_cast", to=TensorProto.INT32))
            self.nodes.append(helper.make_node("Gather", [f"{name}/values", f"{name}/index32"], [name],
                                               name=f"{name}/gather", axis=0))
            return array
        self.constant(name, array)
        return array

    def _note(self, name: str, what: str) -> None:
        self.encodings.setdefault(name, what)


def _smallest_tile(array: np.ndarray) -> Optional[np.ndarray]:
    """The smallest block whose np.tile is exactly `array`, or None when no axis repeats."""
    block = array
    for axis, size in enumerate(array.shape):
        for period in range(1, size):
            if size % period == 0:
                first = np.take(block, range(period), axis=axis)
                reps = [1] * array.ndim
                reps[axis] = size // period
                if np.array_equal(np.tile(first, reps), block):
                    block = first
                    break
    return None if block.shape == array.shape else np.ascontiguousarray(block)


def _kronecker_factors(matrix: np.ndarray) -> Optional[tuple]:
    """(A, B) with float32 kron(A, B) within KRON_ULPS of `matrix`, A as small as possible; else None."""
    p, q = matrix.shape
    scale = float(np.abs(matrix).max())
    if scale == 0.0:
        return None
    tolerance = KRON_ULPS * float(np.spacing(np.float32(scale)))
    for size in sorted({(a, b) for a in range(1, p + 1) if p % a == 0 for b in range(1, q + 1) if q % b == 0},
                       key=lambda s: (s[0] * s[1], s)):
        p1, q1 = size
        if p1 * q1 in (1, p * q):
            continue
        p2, q2 = p // p1, q // q1
        # rows (i1, j1) of A's entries, columns (i2, j2) of B's: rank 1 exactly when matrix = kron(A, B)
        rearranged = matrix.reshape(p1, p2, q1, q2).transpose(0, 2, 1, 3).reshape(p1 * q1, p2 * q2)
        row, col = np.unravel_index(np.argmax(np.abs(rearranged)), rearranged.shape)
        pivot = rearranged[row, col]
        a = rearranged[:, col].astype(np.float32)
        b = (rearranged[row].astype(np.float64) / pivot).astype(np.float32)
        if np.abs(np.outer(a, b) - rearranged).max() <= tolerance:
            return a.reshape(p1, q1), b.reshape(p2, q2)
    return None


def _palette(array: np.ndarray) -> Optional[tuple]:
    """(distinct values, uint8/uint16 index of array's shape) when that is clearly smaller, else None."""
    values, inverse = np.unique(array, return_inverse=True)
    if values.size > 65536:
        return None
    index = inverse.reshape(array.shape).astype(np.uint8 if values.size <= 256 else np.uint16)
    if index.nbytes + values.nbytes > PALETTE_MAX_RATIO * array.nbytes:
        return None
    return values.astype(np.float32), index


def _deduplicate(graph: onnx.GraphProto) -> int:
    """Store identical initializers once; consumers of the others read the kept one. Returns bytes saved."""
    kept: Dict[tuple, str] = {}
    rename: Dict[str, str] = {}
    protected = {o.name for o in graph.output} | {i.name for i in graph.input}
    saved = 0
    for tensor in list(graph.initializer):
        array = numpy_helper.to_array(tensor)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key in kept and tensor.name not in protected:
            rename[tensor.name] = kept[key]
            saved += array.nbytes
            graph.initializer.remove(tensor)
        else:
            kept.setdefault(key, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return saved


def compact_model(model: onnx.ModelProto, float16: bool = False, min_bytes: int = MIN_BYTES) -> dict:
    """Rewrite `model`'s initializer storage in place (module docstring); returns a report of what changed."""
    graph = model.graph
    if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for attr in node.attribute):
        raise ValueError("graphs with subgraphs (If, Loop, Scan) are not supported")
    before = tensor_bytes(model)
    _deduplicate(graph)
    overridable = {i.name for i in graph.input}  # an initializer listed as an input may be fed: leave it alone
    builder = _Builder(float16, min_bytes)
    kept = []
    for tensor in graph.initializer:
        if tensor.name in overridable:
            kept.append(tensor)
        else:
            builder.encode(tensor.name, numpy_helper.to_array(tensor))
    del graph.initializer[:]
    graph.initializer.extend(kept + builder.initializers)
    nodes = list(builder.nodes) + list(graph.node)  # the rebuilding nodes read initializers only: first
    del graph.node[:]
    graph.node.extend(nodes)
    _deduplicate(graph)
    return {"bytes_before": before, "bytes_after": tensor_bytes(model), "float16": float16,
            "rebuilt": builder.encodings, "max_kron_error_relative": builder.max_kron_error}


def compact_onnx_file(source: Path, destination: Optional[Path] = None, float16: bool = False) -> dict:
    """compact_model on an ONNX file, written to `destination` (default: over `source`); checked by onnx."""
    model = onnx.load(str(source))
    report = compact_model(model, float16=float16)
    onnx.checker.check_model(model)
    onnx.save(model, str(destination or source))
    return report
