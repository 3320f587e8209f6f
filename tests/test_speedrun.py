"""benchmarks/speedrun.py's pieces: bits per byte (any tokenizer) against a direct computation, the race's order and
bookkeeping, and a short smoke of two contenders through the harness (1 thread, tiny models). No timing is asserted."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.race.common import Corpus, the_held_out  # noqa: E402
from benchmarks.race.heldout import bits_per_byte, score, stream_nats, token_stream  # noqa: E402
from benchmarks.race.tally import best_lrs, headline, race_round, sweep_round, time_to  # noqa: E402
from largo.data.config import TextDataConfig  # noqa: E402
from largo.config import load_config  # noqa: E402
from largo.data.prepare import EOT, prepare, train_tokenizer  # noqa: E402
from largo.train.run import train  # noqa: E402

DOCS = ("def add(a, b):\n    return a + b\n", "# café: naïve UTF-8, ünïcödé ✓\nx = [i * i for i in range(10)]\n",
        "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n")


def byte_tokenizer() -> tuple[object, int, int]:
    """UTF-8 bytes as ids 0-255, end-of-text 256."""
    return (lambda text: list(text.encode("utf-8"))), 256, 257


def bpe_tokenizer() -> tuple[object, int, int]:
    """largo's byte-level BPE trained on the documents themselves."""
    tok = train_tokenizer(iter(DOCS * 20), 300)
    return (lambda text: tok.encode(text).ids), tok.token_to_id(EOT), tok.get_vocab_size()


def bigram(vocab: int) -> torch.Tensor:
    """A fixed random table: the logits of the next token given only the current one."""
    return torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("tokenizer", [byte_tokenizer, bpe_tokenizer])
def test_bits_per_byte_matches_a_direct_sum(tokenizer) -> None:  # noqa: ANN001
    encode, eot, vocab = tokenizer()
    table = bigram(vocab)
    ids = token_stream(DOCS, encode, eot)
    direct = -sum(float(torch.log_softmax(table[a], -1)[b]) for a, b in zip(ids[:-1], ids[1:]))  # every token after the first
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCS)
    for seq_len in (5, 16, len(ids)):  # full windows, a short last one, one window (scored in fp32: 1e-6)
        assert stream_nats(lambda x: table[x], ids, seq_len, batch=3) == pytest.approx(direct, rel=1e-6)
    held = type("Held", (), {"docs": DOCS, "n_bytes": n_bytes})()
    assert score(lambda x: table[x], held, encode, eot, 7) == pytest.approx(direct / math.log(2) / n_bytes, rel=1e-6)
    uniform = score(lambda x: torch.zeros(*x.shape, vocab), held, encode, eot, 7)  # a known answer: log2(V) bits a token
    assert uniform == pytest.approx((len(ids) - 1) * math.log2(vocab) / n_bytes, rel=1e-6)


def test_rounds_interleave_and_rotate() -> None:
    lrs = {"largo": [8e-3], "plain": [1e-3, 2e-3, 4e-3], "hf": [5e-4, 1e-3]}
    assert sweep_round(lrs) == [(1, "largo", 8e-3), (1, "plain", 1e-3), (1, "hf", 5e-4), (1, "plain", 2e-3), (1, "hf", 1e-3),
                                (1, "plain", 4e-3)]
    chosen = {"largo": 8e-3, "plain": 2e-3, "hf": 1e-3}
    assert [n for _, n, _ in race_round(chosen, 2)] == ["plain", "hf", "largo"]
    assert [n for _, n, _ in race_round(chosen, 3)] == ["hf", "largo", "plain"]
    assert race_round(chosen, 4) == [(4, "largo", 8e-3), (4, "plain", 2e-3), (4, "hf", 1e-3)]


def test_best_lr_and_time_to_target() -> None:
    runs = [{"round": 1, "contender": "plain", "lr": 1e-3, "final_bpb": 2.5}, {"round": 1, "contender": "plain", "lr": 2e-3, "final_bpb": 2.2},
            {"round": 1, "contender": "plain", "lr": 4e-3, "final_bpb": math.nan}, {"round": 2, "contender": "plain", "lr": 4e-3, "final_bpb": 1.0}]
    assert best_lrs(runs) == {"plain": 2e-3}
    curve = [[10.0, 4.0], [20.0, 3.0], [30.0, 2.0]]
    assert time_to(curve, 2.5) == pytest.approx(25.0) and time_to(curve, 4.5) == 10.0 and time_to(curve, 1.0) == math.inf
    rows = {"largo": {"final_bpb": 2.0, "curves": [curve, [[10.0, 3.5], [20.0, 2.5]]]},
            "plain": {"final_bpb": 2.5, "curves": [[[40.0, 3.0], [80.0, 2.5]]]}}
    line, fig = headline(rows)
    assert fig["largo_s"] == pytest.approx(22.5) and fig["peer_s"] == 80.0  # median of 25 and 20; the peer's last point
    assert line == "time-to-target: largo 0.28 of plain's wall time (target 2.5000 bits/byte)"
    rows["largo_half"] = {"final_bpb": 2.4, "curves": [[[10.0, 3.0], [15.0, 2.4]], [[12.0, 2.6], [16.0, 2.5]]]}
    line, fig = headline(rows)  # the recipe's time is its fastest row's median: the half-budget runs' 14.17 s and 16 s
    assert fig["largo_row"] == "largo_half" and fig["largo_s"] == pytest.approx((10 + 5 * 0.5 / 0.6 + 16) / 2)
    assert line == "time-to-target: largo 0.19 of plain's wall time (target 2.5000 bits/byte, by largo_half)"
    rows["largo_half"]["curves"] = [[[10.0, 3.0]]]
    assert headline(rows)[1]["largo_row"] == "largo"  # never reached: the full-budget row's time stands


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared stdlib corpus (the race's split rule; a 512-token tokenizer on its first 1 MB, 46 documents)."""
    out = tmp_path_factory.mktemp("stdlib_small")
    prepare(TextDataConfig(source="stdlib", dir=str(out), vocab_size=512, val_fraction=0.05, max_bytes=1_000_000), log=lambda _m: None)
    return out


def test_smoke_two_contenders(small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """largo and the plain loop, tiny models, 2 s each on 1 thread (a few dozen steps): each learns (5% below the uniform guess) and the
    harness writes its table, JSON, picture and last line."""
    from benchmarks import speedrun

    tiny = "model.dim=32,model.n_layers=1,model.n_heads=2,model.n_kv_heads=1,model.max_seq_len=32"
    report = speedrun.main(["--budget-s", "2", "--rounds", "1", "--only", "largo,plain", "--threads", "1", "--points", "2", "--held-bytes", "4096",
                            "--precision", "fp32", "--data", str(small_corpus), "--out", str(tmp_path), "--lrs", "plain=1e-2",
                            "--extra", f"largo:{tiny},train.compile=false,train.global_batch=4,train.micro_batch=4,train.peak_tflops=1",
                            "--extra", f"plain:{tiny},compile=false,warmup_steps=2"])
    corpus = Corpus(small_corpus, 32)
    held = the_held_out(4096)
    uniform = (len(token_stream(held.docs, corpus.encode, corpus.eot)) - 1) * math.log2(corpus.vocab_size) / held.n_bytes
    for name in ("largo", "plain"):
        row = report["rows"][name]
        assert row["curves"] and all(len(c) >= 1 for c in row["curves"]), name
        assert row["final_bpb"] < 0.95 * uniform, (name, row["final_bpb"], uniform)  # it learned: below a uniform guess
    assert (tmp_path / "speedrun.png").stat().st_size > 0 and json.loads((tmp_path / "speedrun.json").read_text())["rows"]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("time-to-target: largo ")


def test_gpu_script_takes_the_speedrun_recipe(tiny_data: Path, tmp_path: Path) -> None:
    """benchmarks/gpu_gpt2.py --recipe speedrun trains with text_speedrun's techniques (its CPU smoke mode)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_gpt2", REPO / "benchmarks" / "gpu_gpt2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke", "--recipe", "speedrun", "--data-dir", str(tiny_data), "--out", str(tmp_path)])
    config = json.loads((tmp_path / "throughput" / "config.json").read_text())
    assert result["recipe"] == "speedrun" and result["tokens_per_s"] > 0
    assert config["optim"]["name"] == "muon" and config["optim"]["schedule"] == "wsd" and config["model"]["zero_init_head"] is True


def test_speedrun_recipe_resumes_bitwise_and_accumulates_exactly(tmp_path: Path, tiny_data: Path) -> None:
    """text_speedrun's optimiser, schedule and head (Muon, WSD, embeddings at 8x, zero-initialised untied head): a run
    stopped at step 3 and resumed ends with the same bytes as one run straight through; 2 micro-batches of 4 match 1 of 8."""
    from tests.conftest import tiny_config

    recipe = load_config("text_speedrun")
    optim = {k: getattr(recipe.optim, k) for k in ("name", "lr", "warmup_steps", "schedule", "decay_fraction", "min_lr_ratio", "embed_lr_mult")}
    model = {"tie_embeddings": False, "zero_init_head": True}

    def run(name: str, stop_at: int | None = None, resume: str | None = None, micro: int = 4) -> Path:
        cfg = tiny_config(tmp_path / name, tiny_data, optim=optim, model=model, train={"threads": 1, "micro_batch": micro})
        train(cfg, stop_at=stop_at, resume=resume, log=lambda _m: None)
        return cfg.run_dir / "checkpoints" / "step_0000006" / "model.safetensors"

    whole = run("whole").read_bytes()
    run("parted", stop_at=3)
    assert run("parted", resume="auto").read_bytes() == whole
    from safetensors.torch import load_file

    one, two = load_file(run("one", micro=8)), load_file(tmp_path / "whole" / "runs" / "t" / "checkpoints" / "step_0000006" / "model.safetensors")
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
