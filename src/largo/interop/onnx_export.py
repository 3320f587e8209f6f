"""ONNX export of any largo model from a real example input, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from torch import nn

from largo.errors import CheckpointError

INPUT, OUTPUT = "input", "output"


def dynamic_shapes(example: torch.Tensor, max_seq_len: int) -> tuple[dict[int, object]]:
    """Batch is always dynamic; so is the sequence of token inputs (integer (b, t)), up to max_seq_len."""
    dims: dict[int, object] = {0: torch.export.Dim("batch")}
    if example.dim() == 2 and not example.is_floating_point():
        dims[1] = torch.export.Dim("seq", min=1, max=max_seq_len)
    return (dims,)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, max_seq_len: int) -> Path:
    """Trace `model` on `example` (batch >= 2, so batch stays symbolic) and write a self-contained .onnx file."""
    try:
        import onnxscript  # noqa: F401  (the exporter's op library; checked here for a clear message)
    except ImportError:
        raise CheckpointError("ONNX export needs onnx and onnxscript: pip install 'largo-train[onnx]'") from None
    if example.shape[0] < 2:
        raise CheckpointError(f"ONNX export needs an example batch of >= 2 rows (got {example.shape[0]}) to keep the batch size dynamic")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with redirect_stdout(io.StringIO()):  # the exporter narrates every stage on stdout
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=dynamic_shapes(example, max_seq_len), verbose=False)
    program.save(str(path))
    return path


def onnx_max_abs_diff(path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Max |onnxruntime output - PyTorch output| on `inputs` (CPU, fp32)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("checking an ONNX file needs onnxruntime: pip install 'largo-train[onnx]'") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: inputs.cpu().numpy()})[0]
    with torch.no_grad():
        want = model.eval()(inputs).float().cpu().numpy()
    if got.shape != want.shape:
        raise CheckpointError(f"{path}: onnxruntime output shape {got.shape} differs from PyTorch's {want.shape}")
    return float(np.abs(got - want).max())
