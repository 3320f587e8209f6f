"""Config loading: TOML -> typed dataclasses, overrides, and one-line errors for every bad input."""

from __future__ import annotations

import os
import re
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
        ({"train": {"precision": "fp16"}}, {}, "train.precision = 'fp16' is not valid; choose one of 'auto', 'fp32', 'bf16'"),
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


# ---- the command line a newcomer meets: presets by name, every key shown, nothing silently ignored -------

def _largo(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "largo", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_presets_load_by_name_from_any_folder(tmp_path: Path) -> None:
    by_name = load_config("text_tiny", {"train.steps": "7"})
    assert by_name.train.steps == 7 and by_name == load_config(PRESETS / "text_tiny.toml", {"train.steps": "7"})
    assert load_config("text_tiny.toml") == load_config("text_tiny")
    with pytest.raises(ConfigError, match=r"config text_tnyi: no such file, and no preset of that name; presets: .*\btext_tiny, "):
        load_config("text_tnyi")
    listing = _largo("presets", cwd=tmp_path)  # another folder: presets come from the package, not the checkout
    names = [line.split()[0] for line in listing.stdout.splitlines()]
    assert listing.returncode == 0 and names == sorted(p.stem for p in PRESETS.glob("*.toml")) and "text_tiny" in names
    assert all(len(line.split(maxsplit=1)) == 2 for line in listing.stdout.splitlines())  # one line each, with what it trains


def test_config_show_prints_every_key_with_type_default_and_comment(tmp_path: Path) -> None:
    from largo.config_keys import show

    cfg = load_config("vision_digits", {"optim.lr": "0.003"})
    text = show(cfg)
    assert "lr = 0.003" in text and "# float, default 0.001: peak learning rate" in text  # changed: the default is shown
    assert "patch_size = " in text and "[model]  # " in text  # the architecture's own keys, with its section's docstring
    import dataclasses

    for section in ("run", "data", "model", "optim", "train", "eval", "checkpoint", "faults", "parallel"):
        for f in dataclasses.fields(getattr(cfg, section)):  # every key is listed
            assert f"\n{f.name} = " in text, f"{section}.{f.name} missing"
    proc = _largo("config", "show", "text_tiny", "--train.steps", "20", cwd=tmp_path)
    assert proc.returncode == 0 and "steps = 20" in proc.stdout and "default 200" in proc.stdout


def test_commands_refuse_overrides_they_would_ignore_and_print_their_version(tmp_path: Path) -> None:
    for cmd in (["report", "runs/x"], ["generate", "runs/x"], ["presets"]):  # eval takes decoding keys (test_speech.py)
        proc = _largo(*cmd, "--train.steps", "3", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"largo: error: largo {cmd[0]} does not take '--train.steps': --section.key overrides apply to prepare, train, "
            f"plan, config show (eval, transcribe: decoding keys); `largo {cmd[0]} --help` lists its options"]
    version = _largo("--version")
    from largo import __version__

    assert version.returncode == 0 and version.stdout.startswith(f"largo {__version__} (torch ")
    assert "largo config show CONFIG" in _largo("--help").stdout


@pytest.mark.parametrize("key", ["train.steps", "eval.every", "model.dim", "data.max_bytes", "run.seed"])
def test_integer_keys_beyond_64_bits_are_one_line(key: str) -> None:
    """Every integer key, whichever section or architecture holds it, is checked before anything converts it."""
    with pytest.raises(ConfigError) as info:
        build_config({}, {key: str(2**63)})
    assert str(info.value) == f"{key} ({2**63}) must be at most {2**63 - 1}: integer keys take 64-bit values"
    assert build_config({}, {"run.seed": str(-(2**63))}).run.seed == -(2**63)  # the seed may be any 64-bit value


def test_a_trained_model_takes_overrides_of_how_it_decodes_only() -> None:
    from largo.config import with_decoding

    cfg = build_config({"model": {"arch": "seq2seq", "beam": 4}})
    decoded = with_decoding(cfg, {"model.beam": "1", "model.length_penalty": "0.6", "model.keep_placeholders": "true"})
    assert (decoded.model.beam, decoded.model.length_penalty, decoded.model.keep_placeholders) == (1, 0.6, True)
    assert decoded.model.dim == cfg.model.dim and decoded.train == cfg.train
    for bad, says in (({"model.beam": "0"}, "model.beam (0) must be >= 1"), ({"train.steps": "3"}, "--train.steps: a trained model"),
                      ({"model.dim": "8"}, "--model.dim: a trained model")):
        with pytest.raises(ConfigError, match=re.escape(says)):
            with_decoding(cfg, bad)
    gpt = build_config({})
    with pytest.raises(ConfigError, match="none for model.arch = 'gpt'"):
        with_decoding(gpt, {"model.beam": "2"})
