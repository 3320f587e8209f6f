"""Config loading: TOML -> typed dataclasses, overrides, and one-line errors for every bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from largo.presets import ROOT as PRESETS
from largo.config import build_config, load_config, parse_overrides
from largo.errors import ConfigError


def test_overrides_are_typed() -> None:
    cfg = build_config({"model": {"dim": 128}}, {"optim.lr": "3e-4", "train.steps": "1e3", "model.tie_embeddings": "false"})
    assert (cfg.model.dim, cfg.optim.lr, cfg.train.steps, cfg.model.tie_embeddings) == (128, 3e-4, 1000, False)


def test_compile_takes_toml_booleans_and_auto() -> None:
    assert [build_config({"train": {"compile": v}}).train.compile for v in (True, False, "auto")] == ["true", "false", "auto"]
    assert build_config({}, {"train.compile": "true"}).train.compile == "true"
    with pytest.raises(ConfigError, match="train.compile = 'sometimes' is not valid; choose one of 'auto', 'true', 'false'"):
        build_config({"train": {"compile": "sometimes"}})


def test_parse_overrides_both_forms() -> None:
    assert parse_overrides(["--optim.lr", "1", "--train.steps=5"]) == {"optim.lr": "1", "train.steps": "5"}


@pytest.mark.parametrize(
    ("raw", "overrides", "message"),
    [
        ({"model": {"n_layer": 2}}, {}, "unknown key model.n_layer; did you mean 'n_layers'?"),
        ({"modle": {}}, {}, "unknown section [modle]; did you mean 'model'?"),
        ({"model": {"dim": "wide"}}, {}, "model.dim = 'wide' has type str; expected int"),
        ({"train": {"precision": "fp16"}}, {}, "train.precision = 'fp16' is not valid; choose one of 'fp32', 'bf16'"),
        ({"train": {"steps": 0}}, {}, "train.steps (0) must be >= 1"),
        ({"model": {"dim": 100, "n_heads": 3}}, {}, "model.n_heads (3) must divide model.dim (100)"),
        ({"train": {"global_batch": 10, "micro_batch": 4}}, {}, "train.global_batch (10) must divide by train.micro_batch (4)"),
        ({}, {"optim.lr": "fast"}, "--optim.lr 'fast' is not a valid float"),
        ({}, {"optim.lrr": "1"}, "unknown key optim.lrr; did you mean 'lr'?"),
    ],
)
def test_bad_config_names_key_and_valid_values(raw: dict, overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(raw, overrides)
    assert str(info.value) == message


def test_malformed_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\ndim = 3")
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(bad)


def test_cli_reports_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nn_layer = 2\n")
    proc = subprocess.run([sys.executable, "-m", "largo", "train", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["largo: error: unknown key model.n_layer; did you mean 'n_layers'?"]


def test_presets_load() -> None:
    for path in sorted(PRESETS.glob("*.toml")):
        load_config(path)
