"""Every bad input gives one exact line on stderr, a non-zero exit, no traceback, and leaves the
user's files byte-identical (nothing created, changed or removed). Pickle payloads never run.

Each case builds its inputs in a fresh folder, runs the real CLI entry point (`largo.cli.main`,
in-process for speed; one case also goes through `python -m largo`), and compares the folder's
files before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import largo
from largo.cli import main
from largo.train.run import train
from tests.conftest import tiny_config

TOML_ERROR = "Expected ']' at the end of a table declaration (at line 1, column 7)"  # tomllib's own words
PICKLE_REFUSED = ("is a pickle / torch.save file, which can run code when loaded; largo reads only safetensors "
                  "(convert it with safetensors.torch.save_file where you trust it)")


class RunsCode:
    """A pickle payload: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class World:
    """One case's folder, with helpers that copy the shared prepared data and trained run into it."""

    tmp: Path
    data_src: Path
    run_src: Path

    @property
    def marker(self) -> Path:
        return self.tmp / "code_ran"

    def data(self) -> Path:
        """A private copy of the prepared tiny corpus (so a case may damage it)."""
        shutil.copytree(self.data_src, self.tmp / "data")
        return self.tmp / "data"

    def config(self, data_dir: Path | None = None, **sections: dict) -> str:
        """cfg.json for a tiny run in tmp/runs/t (data_dir defaults to the shared prepared corpus)."""
        cfg = tiny_config(self.tmp, data_dir or self.data_src, **sections)
        path = self.tmp / "cfg.json"
        path.write_text(json.dumps(cfg.to_dict()))
        return str(path)

    def run(self) -> Path:
        """A copy of a trained run (checkpoints step_1 and step_2) at tmp/runs/t."""
        shutil.copytree(self.run_src, self.tmp / "runs" / "t")
        return self.tmp / "runs" / "t"

    def toml(self, text: str) -> str:
        (self.tmp / "bad.toml").write_text(text)
        return str(self.tmp / "bad.toml")


def resign(ckpt: Path, change: Callable[[dict], None] = lambda _s: None) -> None:
    """Edit state.json and recompute its digest, as a forger would (the digest alone only catches accidents)."""
    from largo.checkpoint.state_schema import signed

    state = json.loads((ckpt / "state.json").read_text())
    change(state)
    (ckpt / "state.json").write_text(json.dumps(signed(state)))


def rehash(ckpt: Path, name: str) -> None:
    """Make state.json vouch for the current bytes of `name` (a forger would)."""
    resign(ckpt, lambda s: s["files"].update({name: hashlib.sha256((ckpt / name).read_bytes()).hexdigest()}))


def edit_json(path: Path, change: Callable[[dict], None]) -> None:
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


def flip_byte(path: Path, offset: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def truncate(path: Path, drop: int) -> None:
    path.write_bytes(path.read_bytes()[:-drop])


def _shard_escape(w: World) -> list[str]:
    data = w.data()
    shutil.copy(data / "val_000.bin", w.tmp / "outside.bin")  # the right size: only the escape can be refused
    edit_json(data / "manifest.json", lambda m: m["splits"]["val"]["shards"][0].update(file="../outside.bin"))
    return ["train", w.config(data)]


def _empty_source(w: World) -> list[str]:
    (w.tmp / "empty").mkdir()
    (w.tmp / "empty" / "a.txt").write_text("")
    return ["train", w.config(w.tmp / "newdata", data={"source": str(w.tmp / "empty")})]


def _reprepare_empty_val(w: World) -> list[str]:
    """Re-prepare an existing prepared folder from one document: the tokenizer is trained before the val split is found empty."""
    (w.tmp / "one").mkdir()
    (w.tmp / "one" / "a.txt").write_text("def f(x):\n    return x + 1\n" * 20)
    return ["train", w.config(w.data(), data={"source": str(w.tmp / "one")})]


def _jsonl(w: World, text: str) -> list[str]:
    (w.tmp / "a.jsonl").write_text(text)
    return ["train", w.config(w.tmp / "newdata", data={"source": str(w.tmp / "a.jsonl")})]


def _pickle_file(w: World, name: str) -> Path:
    path = w.tmp / name
    if name.endswith(".pt"):
        path.write_bytes(pickle.dumps(RunsCode(w.marker), protocol=2))  # a raw pickle stream
    else:
        torch.save({"weight": RunsCode(w.marker)}, path)  # torch.save's zip archive
    return path


def _pickle_in_checkpoint(w: World) -> list[str]:
    ckpt = w.run() / "checkpoints" / "step_0000002"
    shutil.copy(_pickle_file(w, "evil.bin"), ckpt / "model.safetensors")
    (w.tmp / "evil.bin").unlink()
    rehash(ckpt, "model.safetensors")
    return ["eval", str(ckpt)]


def _garbage_safetensors(w: World) -> list[str]:
    ckpt = w.run() / "checkpoints" / "step_0000002"
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}..")
    rehash(ckpt, "model.safetensors")
    return ["eval", str(ckpt)]


def _linked_out(w: World) -> list[str]:
    ckpt = w.run() / "checkpoints" / "step_0000002"
    (ckpt / "model.safetensors").rename(w.tmp / "elsewhere.safetensors")
    (ckpt / "model.safetensors").symlink_to(w.tmp / "elsewhere.safetensors")
    return ["eval", str(ckpt)]


def _state_escape(w: World) -> list[str]:
    ckpt = w.run() / "checkpoints" / "step_0000002"
    resign(ckpt, lambda s: s["files"].update({"../../../../cfg.json": "0" * 64}))
    return ["eval", str(ckpt)]


def _state_not_json(w: World) -> list[str]:
    ckpt = w.run() / "checkpoints" / "step_0000002"
    (ckpt / "state.json").write_text('{"format": "largo-checkpoint-v1", "step": ')
    return ["eval", str(ckpt)]


def _unwritable(w: World) -> list[str]:
    (w.tmp / "blocker").write_text("a file where the runs folder should be")
    return ["train", w.config(run={"out_dir": str(w.tmp / "blocker")})]


def _classifier(w: World, arch: str, source: Path, **data: str) -> list[str]:
    """`train` of a one-block classifier on `source`, prepared into tmp/cdata (which a refused source must not create)."""
    keys = "".join(f"{k} = {json.dumps(v)}\n" for k, v in data.items())
    return ["train", w.toml(f'[run]\nout_dir = {json.dumps(str(w.tmp / "runs"))}\n[data]\nsource = {json.dumps(str(source))}\n'
                            f'dir = {json.dumps(str(w.tmp / "cdata"))}\n{keys}[model]\narch = "{arch}"\ndim = 32\nn_heads = 2\nn_layers = 1\n')]


def _image_folder(w: World, bad: bytes | None) -> list[str]:
    """A folder of 8x8 PNGs with classes a and b; `bad` bytes become b/bad.png, None leaves class b out."""
    from PIL import Image

    for cls in ("a", "b") if bad is not None else ("a",):
        (w.tmp / "imgs" / cls).mkdir(parents=True)
        Image.new("L", (8, 8), 200).save(w.tmp / "imgs" / cls / "1.png")
    if bad is not None:
        (w.tmp / "imgs" / "b" / "bad.png").write_bytes(bad)
    return _classifier(w, "vit", w.tmp / "imgs")


def _wav_folder(w: World) -> list[str]:
    import wave

    for cls in ("a", "b"):
        (w.tmp / "wavs" / cls).mkdir(parents=True)
        with wave.open(str(w.tmp / "wavs" / cls / "1.wav"), "wb") as f:
            f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000), f.writeframes(b"\0\1" * 800)
    (w.tmp / "wavs" / "b" / "bad.wav").write_bytes(b"ID3 an mp3 renamed to .wav")
    return _classifier(w, "audio", w.tmp / "wavs")


def _csv_without_labels(w: World) -> list[str]:
    (w.tmp / "r.csv").write_text("text,stars\ngreat film,5\ndull,1\n")
    return _classifier(w, "text_classifier", w.tmp / "r.csv")


def _not_parquet(w: World) -> list[str]:
    (w.tmp / "a.parquet").write_text("plain text, named like a table\n")
    return ["train", w.config(w.tmp / "newdata", data={"source": str(w.tmp / "a.parquet")})]


def _json_list_config(w: World) -> list[str]:
    (w.tmp / "c.json").write_text("[1, 2]")
    return ["train", str(w.tmp / "c.json")]


def _damaged_metrics(w: World) -> list[str]:
    metrics = w.run() / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text(lines[0] + '{"kind": "train", "step": \n' + "".join(lines[1:]))
    return ["report", str(w.tmp / "runs" / "t")]


def _existing_file_as_export_folder(w: World) -> list[str]:
    w.run()
    (w.tmp / "out.bin").write_text("not a folder")
    return ["export", str(w.tmp / "runs" / "t"), str(w.tmp / "out.bin"), "--format", "safetensors"]


def _linked_checkpoint(w: World) -> list[str]:
    root = w.run() / "checkpoints"
    (root / "step_0000002").rename(w.tmp / "kept_elsewhere")
    (root / "step_0000002").symlink_to(w.tmp / "kept_elsewhere")
    return ["train", w.config(), "--resume", "auto"]


def _state_edit(w: World, change: Callable[[dict], None], *, sign: bool) -> list[str]:
    """eval of step 2 after editing its state.json, re-signed (a forger) or not (a careless edit)."""
    ckpt = w.run() / "checkpoints" / "step_0000002"
    resign(ckpt, change) if sign else edit_json(ckpt / "state.json", change)
    return ["eval", str(ckpt)]


def _nested_state(w: World) -> list[str]:
    ckpt = w.run() / "checkpoints" / "step_0000002"
    (ckpt / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    return ["eval", str(ckpt)]


def _forged_tokenizer(w: World, content: bytes) -> list[str]:
    """generate from step 2 after its tokenizer.json is replaced and re-hashed (a forger; the hash alone says nothing)."""
    ckpt = w.run() / "checkpoints" / "step_0000002"
    (ckpt / "tokenizer.json").write_bytes(content)
    rehash(ckpt, "tokenizer.json")
    return ["generate", str(ckpt)]


def _index_claiming_4tb(w: World) -> list[str]:
    """export of a sharded checkpoint whose re-signed index gives the embedding 2**20 x 2**20 float32s (4 TiB)."""
    from largo.checkpoint.checkpointer import Checkpointer
    from largo.checkpoint.restore import restore
    from largo.distributed.env import DistEnv

    model, cfg, ckpt = restore(w.run() / "checkpoints" / "step_0000002")
    out = Checkpointer(w.tmp / "sharded" / "checkpoints", model=model, optimizers=[], schedule=None, env=DistEnv(), sharded=True,
                       keep_last=1, files={"tokenizer.json": ckpt / "tokenizer.json"}).save(2, {"config": cfg.to_dict(), "data": {"samples_seen": 0}})
    huge = [2**20, 2**20]
    edit_json(out / "dcp" / "index.json", lambda i: i["tensors"]["model.tok_emb.weight"].update(size=huge, chunks=[{"offsets": [0, 0], "sizes": huge}]))
    rehash(out, "dcp/index.json")
    return ["export", str(out), str(w.tmp / "out"), "--format", "safetensors"]


def _export_over(w: World, *names: str) -> list[str]:
    """export of the run into tmp/out, which already holds `names` (files an export writes)."""
    w.run()
    (w.tmp / "out").mkdir()
    for name in names:
        (w.tmp / "out" / name).write_text("the user's own file")
    return ["export", str(w.tmp / "runs" / "t"), str(w.tmp / "out"), "--format", "safetensors"]


EDITED = "; the checkpoint is damaged or was edited"


PARQUET_ERROR = "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."
IMAGE_TYPES = "['.bmp', '.gif', '.jpeg', '.jpg', '.pgm', '.png', '.ppm', '.tif', '.tiff', '.webp']"
CKPT = "{tmp}/runs/t/checkpoints/step_0000002"
OFFLINE = ("is not a local folder or file, and the Hugging Face Hub is offline (HF_HUB_OFFLINE=1, largo's default); give "
           "hf:<folder from save_to_disk>, hf:<folder of data files> or hf:parquet|json|csv|text with data.data_files, "
           "or set HF_HUB_OFFLINE=0 to allow the download")
REBUILD = "rebuild with `largo prepare <config> --force`"
CASES: list[tuple[str, Callable[[World], list[str]], str, int]] = [
    # --- configs -----------------------------------------------------------------------------------------------
    ("malformed TOML", lambda w: ["train", w.toml("[model\ndim = 3")], f"{{tmp}}/bad.toml: malformed TOML: {TOML_ERROR}", 2),
    ("unknown key", lambda w: ["train", w.toml("[model]\nn_layer = 2\n")], "unknown key model.n_layer; did you mean 'n_layers'?", 2),
    ("unknown section", lambda w: ["train", w.toml("[modle]\ndim = 2\n")], "unknown section [modle]; did you mean 'model'?", 2),
    ("wrong type", lambda w: ["train", w.toml('[model]\ndim = "wide"\n')], "model.dim = 'wide' has type str; expected int", 2),
    ("out of range", lambda w: ["train", w.toml("[train]\nsteps = 0\n")], "train.steps (0) must be >= 1", 2),
    ("heads do not divide width", lambda w: ["train", w.toml("[model]\ndim = 100\nn_heads = 3\n")],
     "model.n_heads (3) must divide model.dim (100)", 2),
    ("batch not divisible", lambda w: ["train", w.toml("[train]\nglobal_batch = 10\nmicro_batch = 4\n")],
     "train.global_batch (10) must divide by train.micro_batch (4)", 2),
    ("override not a number", lambda w: ["train", w.config(), "--optim.lr", "fast"], "--optim.lr 'fast' is not a valid float", 2),
    ("override not a choice", lambda w: ["train", w.config(), "--train.precision", "fp16"],
     "train.precision = 'fp16' is not valid; choose one of 'auto', 'fp32', 'bf16'", 2),
    ("negative learning rate", lambda w: ["train", w.config(), "--optim.lr", "-1"], "optim.lr (-1.0) must be > 0", 2),
    ("zero embedding rate", lambda w: ["train", w.config(), "--optim.embed_lr_mult", "0"], "optim.embed_lr_mult (0.0) must be > 0", 2),
    ("max_bad_steps zero", lambda w: ["train", w.config(), "--faults.max_bad_steps", "0"], "faults.max_bad_steps (0) must be >= 1", 2),
    ("missing config file", lambda w: ["train", str(w.tmp / "nope.toml")], "config {tmp}/nope.toml: no such file, and no preset of that name; presets: asr_sentences, detect_fashion, generate_fashion, gpt2_124m, sentiment_imdb, speech_digits, summarize_docstrings, text_speedrun, text_tiny, translate_en_fr, tts_allison, vision_digits, vision_fashion (largo presets lists them)", 2),
    # --- data ----------------------------------------------------------------------------------------------------
    ("missing data source", lambda w: ["train", w.config(w.tmp / "newdata", data={"source": str(w.tmp / "nowhere")})],
     "data.source '{tmp}/nowhere': no such file, folder or glob match", 2),
    ("empty data", _empty_source, "data.source '{tmp}/empty' holds no text", 2),
    ("re-preparing into a prepared folder fails", _reprepare_empty_val,
     "data.source '{tmp}/one': the val split is empty; add documents or raise data.val_fraction", 2),
    ("jsonl without the text column", lambda w: _jsonl(w, '{"body": "hello"}\n'),
     "{tmp}/a.jsonl:1: no column 'text' (data.text_column); has ['body']", 2),
    ("jsonl line not JSON", lambda w: _jsonl(w, '{"text": "fine"}\n{"text": \n'), "{tmp}/a.jsonl:2: not valid JSON", 2),
    ("truncated token shard", lambda w: (truncate(w.data() / "train_000.bin", 10), ["train", w.config(w.tmp / "data")])[1],
     f"{{tmp}}/data/train_000.bin: {{train_bytes_minus_10}} bytes, manifest says {{train_bytes}}; the shard is truncated or corrupt; {REBUILD}", 2),
    ("corrupt token shard", lambda w: (flip_byte(w.data() / "val_000.bin"), ["train", w.config(w.tmp / "data")])[1],
     f"{{tmp}}/data/val_000.bin: sha256 does not match manifest.json; the shard is corrupt; {REBUILD}", 2),
    ("manifest token count wrong", lambda w: (edit_json(w.data() / "manifest.json", lambda m: m["splits"]["val"]["shards"][0].update(tokens=5)),
                                              ["train", w.config(w.tmp / "data")])[1],
     f"{{tmp}}/data/val_000.bin: {{val_bytes}} bytes, manifest says 10; the shard is truncated or corrupt; {REBUILD}", 2),
    ("manifest names a missing shard", lambda w: ((w.data() / "val_000.bin").unlink(), ["train", w.config(w.tmp / "data")])[1],
     f"{{tmp}}/data/val_000.bin: missing, manifest.json lists it; {REBUILD}", 2),
    ("manifest shard path escapes", _shard_escape, "{tmp}/data/manifest.json: shard path '../outside.bin' escapes the data folder", 2),
    ("tokenizer changed after prepare", lambda w: ((w.data() / "tokenizer.json").open("a").write(" "), ["train", w.config(w.tmp / "data")])[1],
     f"{{tmp}}/data/tokenizer.json: missing or does not match manifest.json's tokenizer hash; {REBUILD}", 2),
    ("vocab size differs from tokenizer", lambda w: ["train", w.config(), "--model.vocab_size", "300"],
     "model.vocab_size (300) differs from the tokenizer's 512; set it to 0 or 512", 2),
    # --- classifier data: refused before data.dir is created ---------------------------------------------------------
    ("corrupt image in a class folder", lambda w: _image_folder(w, b"\x89PNG but cut short"),
     "{tmp}/imgs/b/bad.png: not a readable image (cannot identify image file '{tmp}/imgs/b/bad.png')", 2),
    ("image folder with one class", lambda w: _image_folder(w, None),
     f"data.source '{{tmp}}/imgs': needs one subfolder of images per class, at least two classes with {IMAGE_TYPES} files", 2),
    ("not a WAV in an audio folder", _wav_folder, "{tmp}/wavs/b/bad.wav: not a RIFF/WAVE file", 2),
    ("csv without the label column", _csv_without_labels, "{tmp}/r.csv: no column 'label' (data.label_column); has ['text', 'stars']", 2),
    # --- run directories -------------------------------------------------------------------------------------------
    ("run dir holds another run", lambda w: (w.run(), ["train", w.config()])[1],
     "{tmp}/runs/t already holds a run; pass --resume auto to continue it or --overwrite to replace it", 2),
    ("unwritable output directory", _unwritable,
     "run directory {tmp}/blocker/t is not writable (Not a directory); set run.out_dir or run.name", 2),
    # --- checkpoints -------------------------------------------------------------------------------------------------
    ("truncated safetensors", lambda w: (truncate(w.run() / "checkpoints/step_0000002/model.safetensors", 100), ["eval", CKPT.format(tmp=w.tmp)])[1],
     f"{CKPT}/model.safetensors: sha256 does not match state.json; the file is truncated or corrupt", 2),
    ("corrupt safetensors, hash forged", _garbage_safetensors,
     f"{CKPT}/model.safetensors: not a readable safetensors file (Error while deserializing header: invalid JSON in header: key must be a string at line 1 column 2)", 2),
    ("checkpoint of another model shape", lambda w: (w.run(), ["train", w.config(), "--resume", "auto", "--model.mlp_hidden", "128"])[1],
     f"{CKPT}: checkpoint does not fit this model: trunk.blocks.0.mlp.gate.weight (192, 64) vs model (128, 64); "
     "trunk.blocks.0.mlp.up.weight (192, 64) vs model (128, 64); trunk.blocks.0.mlp.down.weight (64, 192) vs model (64, 128); "
     "trunk.blocks.1.mlp.gate.weight (192, 64) vs model (128, 64); and 2 more", 2),
    ("resume with another optimizer", lambda w: (w.run(), ["train", w.config(), "--resume", "auto", "--optim.name", "muon"])[1],
     f"{CKPT}: optimizer, schedule or RNG state does not fit this run (was optim.name changed?): optimizer_groups: 2 saved where this run has 3", 2),
    ("eval of a run without a checkpoint", lambda w: ((w.tmp / "runs/empty/checkpoints").mkdir(parents=True), ["eval", str(w.tmp / "runs/empty")])[1],
     "{tmp}/runs/empty: neither a checkpoint folder nor a run directory with a complete checkpoint", 2),
    ("every checkpoint damaged", lambda w: ([truncate(c / "rng.safetensors", 1) for c in (w.run() / "checkpoints").glob("step_*")],
                                            ["train", w.config(), "--resume", "auto"])[1],
     "{tmp}/runs/t/checkpoints: every checkpoint is damaged (step_0000002, step_0000001); move them away to start over", 2),
    ("resume from a missing folder", lambda w: ["train", w.config(), "--resume", str(w.tmp / "gone")],
     "--resume {tmp}/gone: no such checkpoint folder (or use --resume auto)", 2),
    ("state.json not JSON", _state_not_json, f"{CKPT}/state.json: not valid JSON", 2),
    ("state.json path escapes", _state_escape, f"{CKPT}: file '../../../../cfg.json' listed in state.json is missing or outside the checkpoint", 2),
    ("weights symlinked out of the checkpoint", _linked_out,
     f"{CKPT}: file 'model.safetensors' listed in state.json is missing or outside the checkpoint", 2),
    # --- pickle: refused, and the payload never runs --------------------------------------------------------------------
    ("pickle .pt to eval", lambda w: ["eval", str(_pickle_file(w, "evil.pt"))],
     "{tmp}/evil.pt: a file; largo loads a run directory or a checkpoint folder of safetensors + JSON, never a pickle/.pt/.bin file (loading one can run code)", 2),
    ("torch.save .bin to generate", lambda w: ["generate", str(_pickle_file(w, "evil.bin"))],
     "{tmp}/evil.bin: a file; largo loads a run directory or a checkpoint folder of safetensors + JSON, never a pickle/.pt/.bin file (loading one can run code)", 2),
    ("pickle .pt to --resume", lambda w: ["train", w.config(), "--resume", str(_pickle_file(w, "evil.pt"))],
     "--resume {tmp}/evil.pt: a file, not a checkpoint folder; largo resumes only from its own safetensors checkpoint folders (it never loads pickle files)", 2),
    ("pickle inside a checkpoint, hash forged", _pickle_in_checkpoint, f"{CKPT}/model.safetensors: {PICKLE_REFUSED}", 2),
    # --- inputs that once ended in exit 1 or were accepted -------------------------------------------------------------
    ("text file named .parquet", _not_parquet, "{tmp}/a.parquet: not a readable parquet file ({parquet_error})", 2),
    ("JSON config holding a list", _json_list_config,
     '{tmp}/c.json: a JSON config must be an object of sections such as {{"train": {{...}}}}, got a list', 2),
    ("generate at temperature nan", lambda w: ["generate", str(w.run()), "--temperature", "nan"],
     "--temperature (nan) must be a finite number >= 0 (0 = greedy)", 2),
    ("generate at temperature -1", lambda w: ["generate", str(w.run()), "--temperature", "-1"],
     "--temperature (-1.0) must be a finite number >= 0 (0 = greedy)", 2),
    ("generate -5 tokens", lambda w: ["generate", str(w.run()), "--max-new-tokens", "-5"],
     "--max-new-tokens (-5) must be >= 1 and --top-k (50) >= 0 (0 = no cut)", 2),
    ("eval of -1 batches", lambda w: ["eval", str(w.run()), "--max-batches", "-1"],
     "--max-batches (-1) must be >= 0 (0 = the whole held-out split)", 2),
    ("report of a damaged metrics line", _damaged_metrics,
     "{tmp}/runs/t/metrics.jsonl:2: not a JSON record; the metrics file was edited or damaged", 2),
    ("export onto an existing file", _existing_file_as_export_folder,
     "export output {tmp}/out.bin is a file; give a folder (it is created if missing)", 2),
    ("plan of -5 tokens", lambda w: ["plan", w.config(), "--tokens", "-5"], "--tokens (-5.0) must be a finite number >= 1, e.g. 1.4e11", 2),
    ("infinite learning rate", lambda w: ["train", w.config(), "--optim.lr", "inf"], "optim.lr = inf is not a finite number", 2),
    ("run name climbing out of out_dir", lambda w: ["train", w.config(), "--run.name", "../../x"],
     "run.name '../../x' must be one folder name (no '/', not '.' or '..'); the run goes to run.out_dir/run.name", 2),
    ("absolute run name", lambda w: ["train", w.config(), "--run.name", "/tmp/x"],
     "run.name '/tmp/x' must be one folder name (no '/', not '.' or '..'); the run goes to run.out_dir/run.name", 2),
    ("checkpoint folder that is a link", _linked_checkpoint,
     f"{CKPT}: a symbolic link; largo writes and prunes its checkpoint folders itself, so replace the link with a copy of the folder", 2),
    # --- state.json edited: by hand (digest) or by a forger who re-signs it (schema) --------------------------------------
    ("state.json step edited", lambda w: _state_edit(w, lambda s: s.update(step=100), sign=False),
     f"{CKPT}/state.json: its digest does not match its content{EDITED}", 2),
    ("state.json schedule edited", lambda w: _state_edit(w, lambda s: s["schedule"].update(applied_steps=1), sign=False),
     f"{CKPT}/state.json: its digest does not match its content{EDITED}", 2),
    ("state.json step forged", lambda w: _state_edit(w, lambda s: s.update(step=100), sign=True),
     f"{CKPT}/state.json: 'step' is 100, but the folder is step 2{EDITED}", 2),
    ("state.json step true", lambda w: _state_edit(w, lambda s: s.update(step=True), sign=True),
     f"{CKPT}/state.json: 'step' is True, but the folder is step 2{EDITED}", 2),
    ("state.json step negative", lambda w: _state_edit(w, lambda s: s.update(step=-3), sign=True),
     f"{CKPT}/state.json: 'step' is -3, but the folder is step 2{EDITED}", 2),
    ("state.json schedule garbage", lambda w: _state_edit(w, lambda s: s.update(schedule={"applied_steps": "x"}), sign=True),
     f"{CKPT}/state.json: 'schedule' must hold applied_steps, at most the step{EDITED}", 2),
    ("state.json lists no files", lambda w: _state_edit(w, lambda s: s.update(files={}), sign=True),
     f"{CKPT}/state.json: 'files' does not list model.safetensors{EDITED}", 2),
    ("state.json nested 100,000 deep", _nested_state, f"{CKPT}/state.json: not valid JSON", 2),
    # --- Hugging Face datasets, fine-tuning, lm-eval tasks and export options --------------------------------------------------
    ("hub dataset name while offline", lambda w: ["prepare", w.toml(f'[data]\nsource = "hf:someone/corpus"\ndir = "{w.tmp}/d"\n')],
     f"data.source 'hf:someone/corpus': 'someone/corpus' {OFFLINE}", 2),
    ("hf builder without data_files", lambda w: ["prepare", w.toml(f'[data]\nsource = "hf:parquet"\ndir = "{w.tmp}/d"\n')],
     "data.source 'hf:parquet': the parquet builder reads local files; list them in data.data_files "
     "(or data.test_files for a test_source), e.g. [\"corpus/*.parquet\"]", 2),
    ("unknown finetune key", lambda w: ["train", w.toml("[finetune]\nrnk = 4\n")], "unknown key finetune.rnk; did you mean 'rank'?", 2),
    ("LoRA without pretrained weights", lambda w: ["train", w.config(finetune={"method": "lora"})],
     "finetune.method = 'lora' trains adapters over pretrained weights; set model.init_from (a run directory or checkpoint, "
     "e.g. one made by largo import)", 2),
    ("LoRA on a module the model lacks", lambda w: ["train", w.config(run={"name": "ft"}, model={"init_from": str(w.run())},
                                                                      finetune={"method": "lora", "target_modules": ["q_proj"]})],
     "finetune.target_modules ['q_proj'] name no nn.Linear of this model; its nn.Linear names: down, gate, up, wk, wo, wq, wv", 2),
    ("model key contradicting model.init_from", lambda w: ["train", w.toml(f'[model]\ninit_from = "{w.run()}"\ndim = 128\n')],
     "model.dim = 128 contradicts model.init_from '{tmp}/runs/t', whose model.dim is 64; "
     "drop the key (the model's shape comes from the source) or set it to 64", 2),
    ("model.init_from naming nothing", lambda w: ["train", w.toml(f'[model]\ninit_from = "{w.tmp}/nowhere"\n')],
     "model.init_from '{tmp}/nowhere': no largo checkpoint folder or run directory there "
     "(a Hugging Face folder or GGUF file becomes one with `largo import`)", 2),
    ("export --adapter-only of a full run", lambda w: ["export", str(w.run()), str(w.tmp / "out"), "--format", "hf", "--adapter-only"],
     f"{CKPT}: holds no adapters (finetune.method = 'full'); export the whole model without --adapter-only", 2),
    ("export --max-shard-size not a size", lambda w: ["export", str(w.run()), str(w.tmp / "out"), "--format", "hf", "--max-shard-size", "lots"],
     "--max-shard-size 'lots' is not a size such as '5GB', '500MB' or a number of bytes", 2),
    ("export --dtype for ONNX", lambda w: ["export", str(w.run()), str(w.tmp / "out"), "--format", "onnx", "--dtype", "bf16"],
     "--dtype and --max-shard-size shape Hugging Face folders (--format hf), not --format onnx", 2),
    ("eval --tasks of a missing task file", lambda w: ["eval", str(w.run()), "--tasks", str(w.tmp / "nope.yaml")],
     "--tasks {tmp}/nope.yaml: no such task file", 2),
    # --- files a checkpoint handle reads, and the run folder it guards -------------------------------------------------
    ("tokenizer.json not JSON, hash forged", lambda w: _forged_tokenizer(w, b"\xff\xfe\x00 not text"),
     f"{CKPT}/tokenizer.json: not valid JSON; a checkpoint's tokenizer is a Hugging Face tokenizers file", 2),
    ("tokenizer.json not a tokenizer, hash forged", lambda w: _forged_tokenizer(w, b'{"vocab": [1, 2]}'),
     f"{CKPT}/tokenizer.json: not a tokenizer (no 'model' object); a checkpoint's tokenizer is a Hugging Face tokenizers file", 2),
    ("sharded index claiming 4 TiB, re-signed", _index_claiming_4tb,
     "{tmp}/sharded/checkpoints/step_0000002/dcp/index.json: tensor 'model.tok_emb.weight' of size [1048576, 1048576] claims "
     "4,398,046,511,104 bytes, more than its chunks hold in the data files; the sharded checkpoint index is damaged or was not written by largo", 2),
    ("export into its own run folder", lambda w: ["export", str(w.run()), str(w.tmp / "runs" / "t"), "--format", "hf"],
     "export output {tmp}/runs/t is a run folder (it holds config.json, metrics.jsonl, checkpoints, .lock); export into a new or empty folder", 2),
    ("export into a checkpoint folder", lambda w: ["export", str(w.run()), CKPT.format(tmp=w.tmp), "--format", "safetensors"],
     f"export output {CKPT} is a checkpoint folder; export into a new or empty folder", 2),
    ("export over files it would write", lambda w: _export_over(w, "config.json", "model.safetensors", "notes.txt"),
     "export output {tmp}/out already holds config.json, model.safetensors, which the export would overwrite; "
     "export into a new or empty folder, or remove them", 2),
    ("integer key beyond 64 bits", lambda w: ["train", w.config(), "--train.steps", "99999999999999999999"],
     "train.steps (99999999999999999999) must be at most 9223372036854775807: integer keys take 64-bit values", 2),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A 2-step run with a checkpoint after each step, copied into every case that needs one."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(tmp, tiny_data, train={"steps": 2, "threads": 1}, checkpoint={"every": 1, "keep_last": 5})
    train(cfg, log=lambda _m: None)
    torch.set_num_threads(2)
    return cfg.run_dir


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (links as their target) -> sha256 of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# Cases whose message comes from an optional library's feature: skipped, with the extra to install, where it is absent.
NEEDS = {"hub dataset name while offline": "datasets", "hf builder without data_files": "datasets",
         "export --max-shard-size not a size": "huggingface_hub", "export into its own run folder": "huggingface_hub", "eval --tasks of a missing task file": "lm_eval"}


def _params() -> list:
    from importlib.util import find_spec

    from largo.optional import EXTRAS

    def installed(module: str) -> bool:
        return find_spec(module) is not None

    return [pytest.param(*case, id=case[0], marks=pytest.mark.skipif(
        case[0] in NEEDS and not installed(NEEDS[case[0]]),
        reason=f"needs {NEEDS.get(case[0])}: pip install 'largo-train[{EXTRAS.get(NEEDS.get(case[0], ''), '')}]'")) for case in CASES]


@pytest.mark.parametrize(("name", "setup", "message", "code"), _params())
def test_bad_input_one_line_nothing_damaged(name: str, setup: Callable[[World], list[str]], message: str, code: int,
                                            tmp_path: Path, tiny_data: Path, trained_run: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    w = World(tmp_path, tiny_data, trained_run)
    argv = setup(w)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == code
    err = capsys.readouterr().err
    sizes = {f"{s}_bytes": (tiny_data / f"{s}_000.bin").stat().st_size for s in ("train", "val")}
    expected = message.format(tmp=tmp_path, train_bytes_minus_10=sizes["train_bytes"] - 10, parquet_error=PARQUET_ERROR, **sizes)
    assert err.splitlines() == [f"largo: error: {expected}"]
    assert snapshot(tmp_path) == before, "the user's files changed"
    assert not w.marker.exists(), "a pickle payload ran"


def test_resume_of_a_finished_run_is_one_line_exit_0_nothing_changed(tmp_path: Path, tiny_data: Path, trained_run: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    """A requeued job of a run that already reached train.steps ends cleanly (no longer a bad input: it was exit 2)."""
    w = World(tmp_path, tiny_data, trained_run)
    w.run()
    argv = ["train", w.config(train={"steps": 2}), "--resume", "auto"]
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        f"{tmp_path}/runs/t already finished at step 2 (train.steps = 2); nothing to do: raise --train.steps to train further"]
    assert out.err == ""
    assert snapshot(tmp_path) == before, "the finished run's files changed"


def test_the_pickle_payloads_are_live(tmp_path: Path) -> None:
    """The payloads above would run code if anything unpickled them (so their refusal means something)."""
    w = World(tmp_path, tmp_path, tmp_path)
    pickle.loads(_pickle_file(w, "evil.pt").read_bytes())
    assert w.marker.exists()
    w.marker.unlink()
    torch.load(_pickle_file(w, "evil.bin"), weights_only=False)
    assert w.marker.exists()


def test_real_cli_process_no_traceback_unless_debug(tmp_path: Path, tiny_data: Path) -> None:
    """Through `python -m largo`: one line and exit 2; with --debug the traceback is shown."""
    w = World(tmp_path, tiny_data, tmp_path)
    argv = ["train", w.config(), "--resume", str(_pickle_file(w, "evil.pt"))]
    env = {**os.environ, "PYTHONPATH": str(Path(largo.__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "largo", *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "largo", "--debug", *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr and "CheckpointError" in proc.stderr
    assert not w.marker.exists()


def test_unexpected_errors_are_one_line_too(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a user error (here an OSError from deep inside): still one line, exit 1, a pointer to --debug."""
    import largo.config

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device", "/runs/x/metrics.jsonl")

    monkeypatch.setattr(largo.config, "load_config", boom)
    assert main(["train", "x.toml"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "largo: error: /runs/x/metrics.jsonl: No space left on device (run with --debug for the traceback)"]


def test_invalid_utf8_is_replaced_and_counted(tmp_path: Path) -> None:
    """The decision for non-UTF-8 text: replace each bad sequence with U+FFFD and count it in the manifest."""
    from largo.config import build_config
    from largo.data.prepare import prepare

    src = tmp_path / "src"
    src.mkdir()
    good = "def f(x):\n    return x + 1\n" * 200
    (src / "a.txt").write_bytes(good.encode() + b"caf\xe9 \xff\xfe end\n")  # Latin-1 and stray bytes
    (src / "b.jsonl").write_bytes((b'{"text": "ol\xe9 ' + good.replace("\n", " ").encode() + b'"}\n') * 3)
    cfg = build_config({"data": {"source": str(src), "dir": str(tmp_path / "out"), "vocab_size": 300, "val_fraction": 0.3}})
    lines: list[str] = []
    manifest = prepare(cfg.data, log=lines.append)
    assert manifest["source"]["replaced_invalid_utf8"] == 3 + 3
    assert lines[-1].endswith("; 6 invalid UTF-8 sequences replaced with U+FFFD")


def test_no_pickle_loading_anywhere_in_the_source() -> None:
    """Guard: nothing unpickles freely (torch.load without weights_only=True, pickle/dill/joblib loads, np allow_pickle,
    an Unpickler in a module that restricts nothing with find_class)."""
    src = Path(largo.__file__).resolve().parent
    offenders = []
    for path in src.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if ("torch.load(" in code and "weights_only=True" not in code) or "pickle.load" in code \
                    or "allow_pickle=True" in code or "joblib.load" in code or "dill." in code \
                    or ("Unpickler" in code and "class " not in code and "find_class" not in path.read_text()):
                offenders.append(f"{path.relative_to(src)}:{lineno}: {line.strip()}")
    assert offenders == []


def test_checkpoint_paths_stay_inside(tmp_path: Path) -> None:
    """state.json may name files in subfolders (sharded checkpoints) but never leave the folder."""
    from largo.checkpoint.store import _inside

    ckpt = tmp_path / "ckpt"
    (ckpt / "dcp").mkdir(parents=True)
    (tmp_path / "out.txt").write_text("x")
    (ckpt / "dcp" / "link").symlink_to(tmp_path / "out.txt")
    ok = ["model.safetensors", "dcp/.metadata", "dcp/__0_0.distcp"]
    bad = ["", "/etc/passwd", "../out.txt", "dcp/../../out.txt", "dcp/link", "a\\..\\b", "a\0b"]
    assert [_inside(ckpt, n) for n in ok] == [True] * len(ok)
    assert [_inside(ckpt, n) for n in bad] == [False] * len(bad)


# --- hostile DCP indexes: largo never unpickles one ------------------------------------------------------------------


def _short(text: str) -> bytes:
    """SHORT_BINUNICODE: a string of under 256 bytes (protocol >= 4)."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _stack_global(module: str, name: str) -> bytes:
    return _short(module) + _short(name) + b"\x93"


def hostile_payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that run `touch marker` when unpickled, by every route a restricted unpickler has been bypassed."""
    cmd = f"touch {marker}"
    out = {f"__reduce__ protocol {p}": pickle.dumps(RunsCode(marker), protocol=p) for p in range(6)}
    for module in ("torch.distributed.checkpoint.filesystem", "torch.distributed.checkpoint.metadata",
                   "torch.distributed.checkpoint.utils", "torch.serialization", "pathlib", "torch"):
        # dotted names through a module's own `import os`: protocol 4+ resolves them with getattr, one dot at a time
        out[f"STACK_GLOBAL {module}.os.system"] = b"\x80\x04" + _stack_global(module, "os.system") + _short(cmd) + b"\x85R."
        out[f"GLOBAL {module} os.system (protocol 5)"] = b"\x80\x05c" + f"{module}\nos.system\n".encode() + b"(V" + cmd.encode() + b"\ntR."
    for fn in ("eval", "exec"):
        out[f"builtins.{fn}"] = b"\x80\x04" + _stack_global("builtins", fn) + _short(f"__import__('os').system({cmd!r})") + b"\x85R."
    imp_os = _stack_global("builtins", "__import__") + _short("os") + b"\x85R"  # the os module, on the stack
    out["nested REDUCE getattr(__import__('os'), 'system')"] = (b"\x80\x04" + _stack_global("builtins", "getattr") + imp_os
                                                                + _short("system") + b"\x86R" + _short(cmd) + b"\x85R.")
    out["operator.methodcaller"] = b"\x80\x04" + _stack_global("operator", "methodcaller") + _short("system") + _short(cmd) + b"\x86R" + imp_os + b"\x85R."
    out["operator.attrgetter"] = (b"\x80\x04" + _stack_global("operator", "attrgetter") + _short("system") + b"\x85R" + imp_os
                                  + b"\x85R" + _short(cmd) + b"\x85R.")
    # BUILD calls functools.partial.__setstate__, which swaps in os.system; an empty REDUCE then calls it
    out["BUILD with __setstate__ (functools.partial)"] = (
        b"\x80\x04" + _stack_global("functools", "partial") + _stack_global("builtins", "print") + b"\x85R"
        + b"(" + _stack_global("os", "system") + _short(cmd) + b"\x85}Nt" + b"b" + b")R.")
    out["copyreg._reconstructor(subprocess.Popen)"] = (b"\x80\x04" + _stack_global("copyreg", "_reconstructor")
                                                       + _stack_global("subprocess", "Popen") + _stack_global("subprocess", "Popen")
                                                       + b"](" + _short("touch") + _short(str(marker)) + b"e" + b"\x87R.")
    out["INST os system (protocol 0)"] = b"(V" + cmd.encode() + b"\nios\nsystem\n."
    out["OBJ os.system (protocol 1)"] = b"(cos\nsystem\nV" + cmd.encode() + b"\no."
    return out


def _unpickle_for_real(payload: bytes) -> None:
    """What a naive reader would do (the test below proves each payload is live)."""
    obj = pickle.loads(payload)
    if hasattr(obj, "wait"):  # the Popen payload runs its command in a child
        obj.wait()


def test_hostile_payloads_are_live(tmp_path: Path) -> None:
    """Every payload of the corpus runs code under plain pickle.loads, so refusing them means something."""
    for name, payload in hostile_payloads(tmp_path / "ran").items():
        _unpickle_for_real(payload)
        assert (tmp_path / "ran").exists(), name
        (tmp_path / "ran").unlink()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory, trained_run: Path) -> Path:
    """The trained run's step-2 weights as a sharded (DCP) checkpoint written by save_sharded, in one process."""
    from largo.checkpoint.checkpointer import Checkpointer
    from largo.checkpoint.restore import restore
    from largo.distributed.env import DistEnv
    from largo.train.optim import Schedule, build_optimizers

    model, cfg, ckpt = restore(trained_run)
    optimizers = build_optimizers(model.train(), cfg.optim)
    root = tmp_path_factory.mktemp("sharded") / "runs" / "t" / "checkpoints"
    Checkpointer(root, model=model, optimizers=optimizers, schedule=Schedule(optimizers, cfg.optim, 2, torch.device("cpu")), env=DistEnv(),
                 sharded=True, keep_last=2, files={"tokenizer.json": ckpt / "tokenizer.json"}).save(
        2, {"data": {"samples_seen": 16}, "config": cfg.to_dict()})
    return root.parent


def _plant(ckpt: Path, payload: bytes, *, old_format: bool) -> None:
    """dcp/.metadata := payload, listed and signed; old_format also marks the checkpoint as largo's pickled-index format."""
    (ckpt / "dcp" / ".metadata").write_bytes(payload)

    def change(state: dict) -> None:
        state["files"]["dcp/.metadata"] = hashlib.sha256(payload).hexdigest()
        state["sharded"]["format"] = "dcp-v1" if old_format else "dcp-v2"
    resign(ckpt, change)


PAYLOAD_NAMES = list(hostile_payloads(Path("/m")))
COMMANDS = {"eval": lambda c, w: ["eval", str(c)], "generate": lambda c, w: ["generate", str(c)],
            "export": lambda c, w: ["export", str(c), str(w.tmp / "out"), "--format", "safetensors"],
            "resume": lambda c, w: ["train", w.config(), "--resume", str(c)]}


@pytest.mark.parametrize("payload", PAYLOAD_NAMES)
def test_hostile_dcp_index_never_runs(payload: str, tmp_path: Path, tiny_data: Path, sharded_run: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """Each payload as dcp/.metadata, in a checkpoint of the old pickled-index format and beside a valid JSON index,
    through eval, generate, export and --resume: one line, exit 2, nothing changed, the marker never created."""
    w = World(tmp_path, tiny_data, sharded_run)
    runs = w.run()
    for i, (command, argv_of) in enumerate(COMMANDS.items()):
        old_format = i % 2 == 0
        ckpt = runs / "checkpoints" / "step_0000002"
        _plant(ckpt, hostile_payloads(w.marker)[payload], old_format=old_format)
        argv = argv_of(ckpt, w)
        before = snapshot(tmp_path)
        capsys.readouterr()
        assert main(argv) == 2, (command, capsys.readouterr())
        err = capsys.readouterr().err.splitlines()
        why = "sharded format" if old_format else "dcp/.metadata: a pickled DCP index"
        assert len(err) == 1 and why in err[0], (command, err)
        assert snapshot(tmp_path) == before and not w.marker.exists(), command
