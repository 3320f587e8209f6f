"""Fine-tuning: model.init_from gives the model its shape; LoRA through PEFT trains and checkpoints only adapters,
resumes bitwise, lowers held-out loss with a fraction of the optimizer memory, merges on export and exports alone."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import largo
import largo.interop.hub
import largo.models.finetune
import largo.optional
import largo.train.harness
from largo.checkpoint.restore import restore
from largo.checkpoint.store import load_tensors
from largo.config import build_config
from largo.data.prepare import prepare
from largo.distributed.env import DistEnv
from largo.errors import ConfigError
from largo.observe.metrics import read_metrics
from largo.train.evaluate import evaluate
from largo.train.run import build_task, train
from tests.conftest import tiny_config
from tests.test_interop import VARIANTS, checkpoint_with_random_weights, real_tokens

peft = pytest.importorskip("peft", reason="LoRA needs peft: pip install 'largo-train[lora]'")
quiet = dict(log=lambda _m: None)
LORA = {"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.1, "target_modules": ["wq", "wv"]}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A tiny GPT trained 10 steps: the pretrained model the adapters adapt."""
    tmp = tmp_path_factory.mktemp("base")
    cfg = tiny_config(tmp, tiny_data, train={"steps": 10}, checkpoint={"every": 0}, optim={"lr": 1e-2})
    return Path(train(cfg, **quiet)["run_dir"])


def _lora(tmp: Path, data_dir: Path, base: Path, finetune: dict | None = None, **sections: dict) -> largo.config.RunConfig:
    raw = {"run": {"name": "t", "out_dir": str(tmp / "runs"), "seed": 7},
           "data": {"source": "stdlib", "dir": str(data_dir), "vocab_size": 512, "max_bytes": 300_000, "val_fraction": 0.2},
           "model": {"init_from": str(base), "max_seq_len": 32},  # the shape comes from the base
           "optim": {"lr": 1e-2, "warmup_steps": 1, "weight_decay": 0.0},
           # fp32 pinned: `auto` measures bf16 against fp32 per run, and a loaded machine can answer differently per run
           "train": {"steps": 6, "global_batch": 8, "micro_batch": 4, "log_every": 1, "peak_tflops": 1.0, "precision": "fp32"},
           "eval": {"every": 0, "max_batches": 4}, "checkpoint": {"every": 3, "keep_last": 5},
           "finetune": finetune or LORA}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return build_config(raw)


def _tensors(run_dir: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "checkpoints" / f"step_{step:07d}" / name)


def _rows(run_dir: Path) -> dict[str, dict]:
    return {r["quantity"]: r for r in json.loads((run_dir / "plan_vs_measured.json").read_text())["rows"]}


def test_init_from_takes_the_model_shape_from_the_source(tmp_path: Path, tiny_data: Path) -> None:
    ckpt, source = checkpoint_with_random_weights(tmp_path / "a", tiny_data, **VARIANTS["untied-gqa"])
    cfg = build_config({"model": {"init_from": str(ckpt)}})
    keep = {"init_from", "init_std", "max_seq_len"}  # the run's own
    assert {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in keep} == \
           {k: v for k, v in dataclasses.asdict(source.model).items() if k not in keep}
    assert (cfg.model.n_kv_heads, cfg.model.tie_embeddings, cfg.model.mlp_hidden) == (2, False, 96)
    assert build_config({"model": {"init_from": str(ckpt), "dim": 64, "mlp_hidden": 96}}).model == cfg.model  # agreeing keys are fine
    with pytest.raises(ConfigError) as info:
        build_config({"model": {"init_from": str(ckpt), "dim": 128}})
    assert str(info.value) == (f"model.dim = 128 contradicts model.init_from {str(ckpt)!r}, whose model.dim is 64; "
                               f"drop the key (the model's shape comes from the source) or set it to 64")
    with pytest.raises(ConfigError, match=r"model.mlp_hidden = 0 contradicts .* whose model.mlp_hidden is 96"):
        build_config({"model": {"init_from": str(ckpt)}}, {"model.mlp_hidden": "0"})  # resolves to 192, not 96
    with pytest.raises(ConfigError, match="model.init_from 'nowhere': no largo checkpoint folder or run directory there"):
        build_config({"model": {"init_from": "nowhere"}})
    # an architecture built on the source's model takes its weights for another task; any other is refused
    seq2seq = build_config({"model": {"init_from": str(ckpt), "arch": "seq2seq"}}).model
    assert seq2seq.arch == "seq2seq" and (seq2seq.dim, seq2seq.n_kv_heads, seq2seq.mlp_hidden) == (64, 2, 96)
    with pytest.raises(ConfigError, match="model.arch = 'vit' contradicts model.init_from .* whose model.arch is 'gpt'"):
        build_config({"model": {"init_from": str(ckpt), "arch": "vit"}})

    run = tiny_config(tmp_path / "b", tiny_data, train={"steps": 1})
    run = build_config({**{k: v for k, v in run.to_dict().items() if k not in ("model", "finetune")},
                        "model": {"init_from": str(ckpt), "max_seq_len": 32}})
    summary = train(run, **quiet)
    assert summary["step"] == 1
    shutil.rmtree(tmp_path / "a")  # the saved config holds every key: a fine-tuned run restores without its source
    model, saved, _ = restore(summary["run_dir"])
    assert saved.model == dataclasses.replace(run.model, vocab_size=512) and model.head is not None


def test_lora_trains_and_checkpoints_only_adapters_and_resumes_bitwise(tmp_path: Path, tiny_data: Path, base_run: Path) -> None:
    whole = _lora(tmp_path / "whole", tiny_data, base_run)
    train(whole, **quiet)
    part = _lora(tmp_path / "part", tiny_data, base_run)
    assert train(part, stop_at=3, **quiet)["stopped"]
    train(part, resume="auto", **quiet)
    for name in ("model.safetensors", "optim.safetensors"):
        a, b = _tensors(whole.run_dir, 6, name), _tensors(part.run_dir, 6, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    losses = lambda d: [r["loss"] for r in read_metrics(d / "metrics.jsonl", "train")]  # noqa: E731
    assert losses(whole.run_dir) == losses(part.run_dir)

    saved = _tensors(whole.run_dir, 6, "model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)  # no base weight is checkpointed
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in saved} == {"wq", "wv"}
    n_adapters = sum(t.numel() for t in saved.values())
    assert n_adapters == 2 * 4 * ((64 + 64) + (64 + 32))  # layers x rank x (in + out) of wq and wv (2 kv heads of 16)
    state = json.loads((whole.run_dir / "checkpoints" / "step_0000006" / "state.json").read_text())
    base_state = json.loads(next((base_run / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["adapters"]["method"] == "lora" and state["adapters"]["base"]["digest"] == base_state["digest"]

    merged, _, _ = restore(whole.run_dir)
    base, _, _ = restore(base_run)
    after, before = merged.state_dict(), base.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {f"trunk.blocks.{i}.attn.{m}.weight" for i in range(2) for m in ("wq", "wv")}

    rows = _rows(whole.run_dir)  # the planner counts adapters: trained parameters, optimizer states
    assert rows["params"]["estimate"] == rows["params"]["measured"] == n_adapters
    assert rows["optimizer_bytes"]["estimate"] == 8 * n_adapters  # AdamW's two fp32 moments
    assert 8 * n_adapters <= rows["optimizer_bytes"]["measured"] <= 8 * n_adapters + 4 * len(saved)  # + a step counter per tensor

    other = checkpoint_with_random_weights(tmp_path / "other", tiny_data)[0]  # resuming over another base is refused
    moved = dataclasses.replace(part, model=dataclasses.replace(part.model, init_from=str(other)), train=dataclasses.replace(part.train, steps=8))
    with pytest.raises(largo.errors.CheckpointError, match="its adapters were trained over another base"):
        train(moved, resume="auto", **quiet)


def test_lora_lowers_held_out_loss_with_a_fraction_of_the_optimizer_memory(tmp_path: Path, tiny_data: Path, base_run: Path) -> None:
    """The proof in miniature (docs/interop.md has SmolLM2-135M's): adapting the stdlib model to a new corpus (a dataset
    encoded with the base's own tokenizer) lowers its held-out loss while under 1% of the parameters train."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    pd.DataFrame({"text": [f"def scale_{i}(x):\n    return x * {i % 10}\n\n" * 4 for i in range(200)]}).to_parquet(tmp_path / "new.parquet")
    tokenizer = next((base_run / "checkpoints").glob("step_*/tokenizer.json"))
    data = {"source": "hf:parquet", "data_files": [str(tmp_path / "new.parquet")], "dir": str(tmp_path / "new"),
            "tokenizer": str(tokenizer), "val_fraction": 0.1, "max_bytes": 0}
    lora = _lora(tmp_path / "lora", tiny_data, base_run, {**LORA, "rank": 1, "dropout": 0.0}, data=data, optim={"lr": 2e-2})
    full = _lora(tmp_path / "full", tiny_data, base_run, {"method": "full"}, data=data, optim={"lr": 1e-3})
    model, _, _ = restore(base_run)
    task = build_task(lora, DistEnv(), **quiet)
    before = evaluate(model, task.dataset.eval_batches(lora.train.micro_batch, lora.eval.max_batches), device=torch.device("cpu"))
    after = train(lora, **quiet)
    train(full, **quiet)
    share = _rows(lora.run_dir)["params"]["measured"] / sum(p.numel() for p in model.parameters())
    assert share < 0.01
    assert after["val_loss"] < before["loss"] - 0.05  # the same held-out batches, before and after
    lora_bytes, full_bytes = _rows(lora.run_dir)["optimizer_bytes"]["measured"], _rows(full.run_dir)["optimizer_bytes"]["measured"]
    assert lora_bytes * 100 < full_bytes
    assert _rows(full.run_dir)["optimizer_bytes"]["estimate"] == 8 * sum(p.numel() for p in model.parameters())


def test_lora_exports_merged_and_as_a_peft_folder(tmp_path: Path, tiny_data: Path, base_run: Path) -> None:
    pytest.importorskip("transformers")
    from largo.interop.hf import hf_model
    from largo.interop.convert import export
    from transformers import LlamaForCausalLM

    cfg = _lora(tmp_path, tiny_data, base_run, {**LORA, "target_modules": ["wq", "wv", "down"]})
    train(cfg, **quiet)
    tokens = real_tokens(tiny_data, 2, 24)
    merged, _, _ = restore(cfg.run_dir)
    base, _, _ = restore(base_run)
    with torch.no_grad():
        ours, original = merged(tokens), base(tokens)
    assert (ours - original).abs().max() > 1e-2  # the adapters changed what the model computes

    export(cfg.run_dir, tmp_path / "hf", fmt="hf", **quiet)  # merges, then checks logits against transformers itself
    with torch.no_grad():
        theirs = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()(input_ids=tokens).logits
    assert (theirs - ours).abs().max() <= 1e-4

    export(cfg.run_dir, tmp_path / "adapter", fmt="hf", adapter_only=True, **quiet)
    adapter_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_cfg["target_modules"]) == ["down_proj", "q_proj", "v_proj"] and adapter_cfg["r"] == 4
    over_hf = peft.PeftModel.from_pretrained(hf_model(base, base.cfg), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert (over_hf(input_ids=tokens).logits - ours).abs().max() <= 1e-4

    export(cfg.run_dir, tmp_path / "adapter_largo", fmt="safetensors", adapter_only=True, **quiet)
    fresh, _, _ = restore(base_run)
    over_largo = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "adapter_largo")).eval()
    with torch.no_grad():
        assert (over_largo(tokens) - ours).abs().max() <= 1e-4
    with pytest.raises(largo.errors.CheckpointError, match="holds no adapters"):
        export(base_run, tmp_path / "nothing", fmt="hf", adapter_only=True, **quiet)


def test_trainer_lora_on_a_users_module(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()

    def run(run_dir: Path, steps: int, resume: str | None) -> largo.Trainer:
        torch.manual_seed(1)
        model = nn.Sequential()
        model.add_module("fc1", nn.Linear(8, 32))
        model.add_module("act", nn.Tanh())
        model.add_module("fc2", nn.Linear(32, 2))
        trainer = largo.Trainer(model, lr=3e-2, steps=steps, run_dir=run_dir, resume=resume, overwrite=resume is None,
                                checkpoint_every=3, finetune={"method": "lora", "rank": 2, "dropout": 0.1, "target_modules": ["fc1"]},
                                **quiet)
        trainer.fit(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
        return trainer

    torch.manual_seed(1)
    reference = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 2)).state_dict()
    whole = run(tmp_path / "whole", 6, None)
    run(tmp_path / "part", 3, None)
    resumed = run(tmp_path / "part", 6, "auto")
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = load_tensors(tmp_path / "whole" / "checkpoints" / "step_0000006" / "model.safetensors")
    assert sorted(k.split("fc1.")[1] for k in saved) == ["lora_A.default.weight", "lora_B.default.weight"]
    plain = whole.merged_model()
    assert [n for n, _ in plain.named_children()] == ["fc1", "act", "fc2"] and type(plain.fc1) is nn.Linear
    assert torch.equal(plain.fc2.weight, reference["2.weight"])  # frozen: untouched
    assert not torch.equal(plain.fc1.weight, reference["0.weight"])  # the adapter folded in
    with torch.no_grad():
        assert (plain(x) - resumed.model.eval()(x)).abs().max() <= 1e-5


@pytest.mark.parametrize(("finetune", "message"), [
    ({"rnk": 4}, "unknown key finetune.rnk; did you mean 'rank'?"),
    ({"method": "qlora"}, "finetune.method = 'qlora' is not valid; choose one of 'full', 'lora'"),
    ({"method": "lora", "rank": 0}, "finetune.rank (0) must be >= 1"),
    ({"method": "lora", "target_modules": "wq"}, "finetune.target_modules = 'wq' must be a list of strings, e.g. [\"a\", \"b\"]"),
    ({"method": "lora", "target_modules": []}, "finetune.target_modules is empty; name the nn.Linear modules to adapt"),
])
def test_bad_finetune_keys_are_one_line(finetune: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"finetune": finetune})
    assert str(info.value).startswith(message)


def test_bad_lora_runs_are_one_line(tmp_path: Path, tiny_data: Path, base_run: Path) -> None:
    assert build_config({}, {"finetune.target_modules": "wq, wo"}).finetune.target_modules == ["wq", "wo"]
    no_base = tiny_config(tmp_path / "a", tiny_data, finetune={"method": "lora"})
    with pytest.raises(ConfigError, match="finetune.method = 'lora' trains adapters over pretrained weights; set model.init_from"):
        train(no_base, **quiet)
    wrong = _lora(tmp_path / "b", tiny_data, base_run, {**LORA, "target_modules": ["q_proj"]})
    with pytest.raises(ConfigError) as info:
        train(wrong, **quiet)
    assert str(info.value) == "finetune.target_modules ['q_proj'] name no nn.Linear of this model; its nn.Linear names: down, gate, up, wk, wo, wq, wv"


def test_largo_plan_counts_adapters_as_trained_and_the_base_as_held(tmp_path: Path, tiny_data: Path, base_run: Path) -> None:
    from largo.plan.devices import get_device
    from largo.plan.planner import build_plan, workload_from_config

    lora, full = (_lora(tmp_path, tiny_data, base_run, f) for f in (LORA, {"method": "full"}))
    plans = [build_plan(workload_from_config(c, devices=1, device=get_device("h100"), mfu=0.4)) for c in (lora, full)]
    adapters, base = 2 * 4 * ((64 + 64) + (64 + 32)), plans[1]["params"]["total"]
    assert (plans[0]["params"]["total"], plans[0]["params"]["frozen"], plans[1]["params"]["frozen"]) == (adapters, base, 0)
    lo, fu = plans[0]["memory"]["none"], plans[1]["memory"]["none"]
    assert (lo["optimizer"], fu["optimizer"]) == (8 * adapters, 8 * base)  # AdamW's two moments (fp32 layout: no master copy)
    assert lo["params"] == fu["params"] + 4 * adapters  # the base is held either way; adapters are fp32
    assert lo["grads"] == 4 * adapters < fu["grads"] == 4 * base


@pytest.mark.parametrize(("module", "feature", "expected"), [
    ("peft", lambda tmp: largo.models.finetune.apply_finetune(nn.Linear(2, 2), largo.models.finetune.FinetuneConfig(
        method="lora", target_modules=["weight"])), "finetune.method = 'lora' needs peft: pip install 'largo-train[lora]'"),
    ("datasets", lambda tmp: prepare(build_config({"data": {"source": "hf:parquet", "data_files": ["x.parquet"],
                                                            "dir": str(tmp / "d")}}).data, log=lambda _m: None),
     "data.source 'hf:parquet' needs datasets: pip install 'largo-train[hfdata]'"),
    ("lm_eval", lambda tmp: largo.train.harness.evaluate_tasks(tmp, ["t.yaml"], device=torch.device("cpu")),
     "largo eval --tasks needs lm_eval: pip install 'largo-train[eval]'"),
    ("huggingface_hub", lambda tmp: largo.interop.hub.check_shard_size("5GB"),
     "writing Hugging Face safetensors shards needs huggingface_hub: pip install 'largo-train[hf]'"),
])
def test_a_missing_optional_library_is_one_line_naming_its_extra(module: str, feature, expected: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def absent(name: str, *args: object):
        if name == module:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(largo.optional.importlib, "import_module", absent)
    with pytest.raises(largo.errors.LargoError) as info:
        feature(tmp_path)
    assert str(info.value) == expected
