"""The prepared GPU benchmark (benchmarks/gpu_gpt2.py) runs end to end on the CPU, so it works when a GPU is lent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def _script():
    spec = importlib.util.spec_from_file_location("gpu_gpt2", Path("benchmarks/gpu_gpt2.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_script_smoke_runs_and_reports(tiny_data: Path, tmp_path: Path) -> None:
    result = _script().main(["--smoke", "--data-dir", str(tiny_data), "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == result and result["device"] == "cpu (smoke)"
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1 and result["windows"] >= 1
