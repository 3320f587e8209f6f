"""`largo explain` on a sequence-to-sequence run: every output token attributed to the source, shown to be right.

The run translates a colour word hidden among filler words ("the cat red sat on" -> "rouge"): the data makes the
output depend on that one source word only, so its first token's attribution must peak on it. Around that: the output
and its probabilities against greedy decoding and a plain forward, completeness, the shares, the page and the index,
--target, and the one-line errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("captum", reason="explanations need Captum: pip install 'largo-train[explain]'")

from largo.checkpoint.restore import restore  # noqa: E402
from largo.cli import main  # noqa: E402
from largo.config import RunConfig, load_config  # noqa: E402
from largo.data.seq2seq import TEST_PAIRS, read_pairs  # noqa: E402
from largo.data.sources import PAIRS, DataSource, Roles, Row, SourceStats, register_source  # noqa: E402
from largo.explain.attribute import COMPLETENESS_TOLERANCE  # noqa: E402
from largo.models import get_spec  # noqa: E402
from largo.models.decode import greedy  # noqa: E402
from largo.rundir import TOKENIZER  # noqa: E402
from largo.train.run import train  # noqa: E402

COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "grey": "gris"}
FILLERS = ["the", "cat", "dog", "sat", "on", "a", "mat", "big", "small", "old"]


class ColourPairs(DataSource):
    """800 pairs: four random filler words with a colour word inserted anywhere -> that colour in French."""

    def fingerprint(self) -> str:
        return "colour-pairs-v1"

    def rows(self, roles: Roles, stats: SourceStats) -> Iterator[Row]:
        rng, names = np.random.default_rng(0), list(COLOURS)
        for i in range(800):
            words = [str(w) for w in rng.choice(FILLERS, 4)]
            words.insert(int(rng.integers(0, 5)), names[i % len(names)])
            yield {"text": " ".join(words), "target": COLOURS[names[i % len(names)]], "group": f"g{i % 8}"}


register_source("test-colour-pairs", ColourPairs, provides=[PAIRS])


def colour_run(tmp_path_factory: pytest.TempPathFactory, **more: str) -> RunConfig:
    """The translation recipe shrunk to one 32-wide layer on the colour pairs: 120 steps, about a second on one thread."""
    tmp, threads = tmp_path_factory.mktemp("colours"), torch.get_num_threads()
    cfg = load_config("translate_en_fr", {**more,
        "run.out_dir": str(tmp / "runs"), "run.name": "colours", "data.dir": str(tmp / "data"), "data.source": "test-colour-pairs",
        "data.vocab_size": "300", "data.test_fraction": "0.2", "data.val_fraction": "0.1", "data.bucket_rows": "32",
        "model.dim": "32", "model.n_layers": "1", "model.n_heads": "2", "model.max_seq_len": "24", "model.beam": "1",
        "train.steps": "120", "train.global_batch": "32", "train.micro_batch": "32", "train.time_budget_s": "0",
        "train.precision": "fp32", "train.threads": "1", "train.log_every": "10", "eval.every": "0", "eval.max_batches": "2",
        "checkpoint.every": "0", "optim.warmup_steps": "5", "optim.lr": "1e-2",
        # the explanation is under test, not the preset's optimiser: AdamW, cosine, a tied head (the known-answer margin was set with them)
        "optim.name": "adamw", "optim.schedule": "cosine", "optim.min_lr_ratio": "0.1", "optim.embed_lr_mult": "1",
        "model.tie_embeddings": "true", "model.zero_init_head": "false"})
    torch.set_num_threads(1)
    try:
        train(cfg, log=lambda _m: None)
    finally:
        torch.set_num_threads(threads)
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    return colour_run(tmp_path_factory)


def test_a_pointer_models_explanations_hold_its_copy_targets_and_stay_complete(tmp_path_factory: pytest.TempPathFactory,
                                                                               tmp_path: Path, one_thread: None) -> None:
    """model.pointer: the baseline's scores copy the input's tokens (the path's start), so attributions still sum to
    the score difference within the tolerance."""
    run = colour_run(tmp_path_factory, **{"model.pointer": "true"})
    assert main(["explain", str(run.run_dir), "the cat red sat on", "--split", "test", "--limit", "2", "--out", str(tmp_path)]) == 0
    records = [r for rs in by_input(tmp_path).values() for r in rs]
    assert len(records) >= 3 and all(r["completeness_error"] <= COMPLETENESS_TOLERANCE for r in records)


def by_input(out: Path) -> dict[str, list[dict]]:
    """explain.json's records (one per output token) grouped by input, in order."""
    grouped: dict[str, list[dict]] = {}
    for r in json.loads((out / "explain.json").read_text())["inputs"]:
        grouped.setdefault(r["input"], []).append(r)
    return grouped


def test_every_output_token_is_attributed_and_the_colour_word_decides_the_first(run: RunConfig, tmp_path: Path,
                                                                                one_thread: None) -> None:
    out = tmp_path / "explained"
    sources = ["the cat red sat on", "big white dog mat a"]
    assert main(["explain", str(run.run_dir), sources[0], "--input", sources[1], "--split", "test", "--limit", "6",
                 "--out", str(out)]) == 0
    grouped = by_input(out)
    assert list(grouped) == [*(f"test[{i}]" for i in range(6)), *sources]
    model, cfg, ckpt = restore(run.run_dir)
    spec = get_spec("seq2seq")
    codec = spec.run_codec(ckpt / TOKENIZER, cfg.model, cfg.data)
    pairs = read_pairs(cfg.data.dir, TEST_PAIRS)[:6]
    texts = {**{f"test[{i}]": (p["source"], p["reference"]) for i, p in enumerate(pairs)}, **{s: (s, None) for s in sources}}
    for name, records in grouped.items():
        source, reference = texts[name]
        assert all(r["reference"] == reference for r in records)
        prefix = codec.prefix(source)
        hyp = greedy(model, torch.tensor([prefix]), stop_id=codec.stop, max_new_tokens=codec.room(prefix))[0]
        tokens = hyp.tokens + [codec.stop]
        assert hyp.finished and [r["position"] for r in records] == list(range(len(tokens)))  # one record per output token
        assert [r["token"] for r in records] == spec.token_pieces(ckpt, tokens)
        assert all(r["output"] == codec.text(hyp) for r in records)
        with torch.no_grad():  # probabilities against a plain forward of the whole sequence
            probs = model(torch.tensor([prefix + tokens[:-1]]))[0, len(prefix) - 1 :].softmax(-1)
        np.testing.assert_allclose([r["probability"] for r in records], probs[range(len(tokens)), tokens].numpy(), rtol=1e-4)
        for k, r in enumerate(records):
            difference = r["score"] - r["baseline_score"]
            assert r["completeness_error"] <= COMPLETENESS_TOLERANCE
            assert abs(r["attribution_sum"] - difference) <= COMPLETENESS_TOLERANCE * abs(difference) + 1e-6
            # what the token reads (source, separator, output before it) carries the whole sum: nothing after it counts
            assert len(r["attribution"]) == len(prefix) + k
            assert sum(v for _, v in r["attribution"]) == pytest.approx(r["attribution_sum"], rel=1e-4, abs=1e-6)
            assert r["attribution"][len(prefix) - 1] == ["<|sep|>", 0.0]  # the separator is in the baseline
            assert r["source_share"] + r["target_prefix_share"] == pytest.approx(1.0)
        assert records[0]["target_prefix_share"] == 0.0
        # the known answer: the output is the colour's French word, and its first token leans on the colour word most
        colour = next(w for w in source.split() if w in COLOURS)
        assert records[0]["output"] == COLOURS[colour]
        read = records[0]["attribution"][: len(prefix) - 1]
        best = max(range(len(read)), key=lambda j: read[j][1])
        start = sum(len(piece) for piece, _ in read[:best])
        assert "".join(piece for piece, _ in read) == source
        assert source.index(colour) <= start < source.index(colour) + len(colour), (name, read)
        assert read[best][1] > 0.4 * records[0]["attribution_sum"]
        page = (out / records[0]["file"]).read_text()
        assert page.count('<table class="heat">') == 2  # integrated gradients, rollout
        assert all(f"<th>{k}: " in page for k in range(len(tokens)))  # a column per output token
    index = (out / "index.html").read_text()
    assert "attribution [[" not in index  # the per-position lists stay in explain.json
    links = set(re.findall(r'href="([^"]+)"', index))
    assert len(links) == 8 and all((out / link).is_file() for link in links)


def test_target_names_the_output_whose_tokens_are_attributed(run: RunConfig, tmp_path: Path, one_thread: None,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(run.run_dir), "--input", "the cat red sat on"]) == 0
    assert capsys.readouterr().out.strip() == "rouge"  # what explain attributes without --target
    out = tmp_path / "forced"
    assert main(["explain", str(run.run_dir), "--input", "the cat red sat on", "--target", "vert", "--out", str(out)]) == 0
    records = by_input(out)["the cat red sat on"]
    assert "".join(r["token"] for r in records) == "vert<|endoftext|>" and records[0]["output"] == "vert"
    assert records[0]["probability"] < 0.1 and max(r["completeness_error"] for r in records) <= COMPLETENESS_TOLERANCE
    assert main(["explain", str(run.run_dir), "--input", "the cat red sat on", "--out", str(tmp_path / "free")]) == 0
    decoded = by_input(tmp_path / "free")["the cat red sat on"]
    assert decoded[0]["token"] == "rou" and decoded[0]["probability"] > 0.5
    # against the blank baseline any colour word raises every colour's first token, "red" that of "rouge" most
    red = [next(v for piece, v in r[0]["attribution"] if piece == "red") for r in (decoded, records)]
    assert red[0] > 2 * red[1]


def test_bad_inputs_are_one_line(run: RunConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, words in ((["--input", "  "], "give the source text"), (["--input", ""], "give the source text"),
                        (["--input", "cat " * 30], "sources of at most 22 tokens"),
                        (["--split", "val"], "its 'test' pairs"),
                        (["--input", "red cat", "--target", ""], "encodes to no token"),
                        (["--input", "red cat", "--target", "rouge " * 20], "has room for")):
        assert main(["explain", str(run.run_dir), *argv, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, (argv, err)
    assert not (tmp_path / "bad" / "explain.json").exists()
