"""Sequence to sequence: the gettext and docstring sources on this machine's files, the split by group, KV-cached
decoding against the uncached path, beam search against greedy, a tiny translation run end to end, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from largo.cli import main
from largo.data.seq2seq import Seq2SeqDataConfig, split_pairs
from largo.data.sources import PAIRS, SourceStats, open_source
from largo.data.sources.docstrings import module_pairs, top_level
from largo.data.sources.gettext_catalogs import LOCALE_DIR, catalog_messages, unique_catalogs
from largo.errors import DataError
from largo.models.decode import Hypothesis, beam_search, best_of, greedy
from largo.models.seq2seq import PrefixLM, Seq2SeqConfig, keeps_placeholders
from largo.models.text_metrics import placeholders, placeholders_kept

FR = LOCALE_DIR / "fr" / "LC_MESSAGES"
needs_fr = pytest.mark.skipif(not any(FR.glob("*.mo")) if FR.is_dir() else True,
                              reason=f"no French gettext catalogs in {FR}: apt-get install coreutils tar sed grep (with their translations)")
SMALL = ["tar", "sed", "grep", "xz", "psmisc", "findutils", "diffutils", "gprof", "libidn2", "Linux-PAM"]  # small catalogs


def _small_catalogs() -> list[str]:
    return [str(FR / f"{name}.mo") for name in SMALL if (FR / f"{name}.mo").is_file()]


@needs_fr
def test_twin_catalogs_are_read_once_and_the_split_keeps_groups_and_messages_apart() -> None:
    twins = [p for p in FR.glob("iso_639*.mo")]
    unique = unique_catalogs(twins)
    if len(twins) > len(unique):  # iso_639-3.mo and its link iso_639_3.mo: one of them, the real file
        assert len({p.read_bytes() for p in unique}) == len(unique) and not any(p.is_symlink() for p in unique)
    rows = list(open_source("gettext", PAIRS, Seq2SeqDataConfig(lang="fr")).rows({}, SourceStats()))
    assert all(r["text"] and r["target"] and "\x04" not in r["text"] for r in rows)
    assert len({r["group"] for r in rows}) == len(unique_catalogs(sorted(FR.glob("*.mo"))))
    splits = split_pairs(rows, 0.1, 0.02)
    groups = {k: {p.group for p in v} for k, v in splits.items()}
    sources = {k: [p.source for p in v] for k, v in splits.items()}
    assert not (groups["test"] & groups["train"]) and not (groups["test"] & groups["val"]) and not (groups["val"] & groups["train"])
    assert not (set(sources["test"]) & set(sources["train"])) and not (set(sources["val"]) & set(sources["train"]))
    assert all(len(v) == len(set(v)) for v in sources.values())  # each English message once per split
    assert 0.05 < len(sources["test"]) / len(rows) < 0.15


def test_docstring_pairs_take_the_body_and_the_summary_line() -> None:
    code = '''
def area(width: float, height: float) -> float:
    """Return the area of a rectangle
    given its two sides.

    Both sides are measured in the same unit, and the result is in that unit squared; negative
    sides are refused with a ValueError, since a rectangle cannot have them at all.
    """

def short():
    """Too short to summarise."""
'''
    pairs = list(module_pairs(code, "geometry"))
    assert pairs == [("def area(width: float, height: float) -> float\nBoth sides are measured in the same unit, and the result is in "
                      "that unit squared; negative\nsides are refused with a ValueError, since a rectangle cannot have them at all.",
                      "Return the area of a rectangle given its two sides.")]
    assert top_level(Path("email/mime/text.py")) == "email" and top_level(Path("os.py")) == "os"


def test_placeholders_are_compared_as_multisets() -> None:
    assert placeholders("%s: %(name)s {0} &File\n100%%") == placeholders("&Fichier {0} %(name)s : %s\n100 %%")
    kept, n = placeholders_kept(["a %s", "b", "c %d"], ["x %s", "y", "z %s"])
    assert n == 2 and kept == 50.0


def _tiny_model(seed: int = 0) -> PrefixLM:
    torch.manual_seed(seed)
    model = PrefixLM(Seq2SeqConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=40, tie_embeddings=False))
    model.init_weights()  # untied: a random tied head mostly repeats the last token
    with torch.no_grad():  # a peaked distribution, so that outputs stop and searches differ
        model.head.weight.mul_(20)
    return model.eval()


def _logprob(model: PrefixLM, prefix: list[int], out: list[int], stop: int, finished: bool) -> float:
    """The summed log-probability of out (and the stop token) after prefix, from one uncached forward."""
    seq = torch.tensor([prefix + out + ([stop] if finished else [])])
    with torch.no_grad():
        logp = torch.log_softmax(model(seq[:, :-1]).float(), -1)[0, len(prefix) - 1 :]
    return float(logp.gather(-1, seq[0, len(prefix):, None]).sum())


def test_cached_decoding_gives_the_uncached_tokens_and_beam_never_scores_below_greedy(one_thread: None) -> None:
    model = _tiny_model()
    prefixes = torch.tensor([[3, 7, 9, 1], [4, 4, 2, 8]])
    free = greedy(model, prefixes[:1], stop_id=-1, max_new_tokens=20)[0].tokens
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])  # a token greedy reaches late: outputs stop
    cached = greedy(model, prefixes, stop_id=stop, max_new_tokens=20)
    assert [h.tokens for h in cached] == [h.tokens for h in greedy(model, prefixes, stop_id=stop, max_new_tokens=20, use_cache=False)]
    assert cached[0].finished and len(cached[0].tokens) >= 3
    better = 0
    for prefix in ([3, 7, 9, 1], [4, 4, 2, 8], [5, 11, 12, 13, 14], [6], [30, 31]):
        g = greedy(model, torch.tensor([prefix]), stop_id=stop, max_new_tokens=20)[0]
        b = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0)
        uncached = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0, use_cache=False)
        assert b.tokens == uncached.tokens and b.logprob == pytest.approx(uncached.logprob, abs=1e-4)
        assert b.logprob >= g.logprob - 1e-4
        assert b.logprob == pytest.approx(_logprob(model, prefix, b.tokens, stop, b.finished), abs=1e-3)
        better += b.logprob > g.logprob + 1e-3
    assert better >= 1  # the search finds something greedy misses



def test_beam_search_returns_the_best_candidate_a_constraint_accepts(one_thread: None) -> None:
    model = _tiny_model()
    free = greedy(model, torch.tensor([[3, 7, 9, 1]]), stop_id=-1, max_new_tokens=20)[0].tokens
    stop = next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])
    for prefix in ([3, 7, 9, 1], [4, 4, 2, 8], [5, 11, 12, 13, 14]):
        best = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0)
        other = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0,
                            accept=lambda t, best=best: t != best.tokens)  # noqa: B023 (bound per prefix)
        assert other.tokens != best.tokens and other.logprob <= best.logprob + 1e-6  # the runner-up, never a better one
        assert other.logprob == pytest.approx(_logprob(model, prefix, other.tokens, stop, other.finished), abs=1e-3)
        nothing = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0, accept=lambda t: False)
        assert nothing.tokens == best.tokens  # accepting none falls back to the best of all


def test_best_of_ranks_by_score_and_keeps_the_placeholder_test() -> None:
    cands = [Hypothesis([1, 2], -1.0, True), Hypothesis([3], -0.5, True), Hypothesis([4, 5, 6], -2.0, True)]
    assert best_of(cands, 0.0, None).tokens == [3]
    assert best_of(cands, 0.0, lambda t: len(t) > 1).tokens == [1, 2]
    assert best_of(cands, 0.0, lambda t: 9 in t).tokens == [3]

@needs_fr
def test_a_tiny_translation_run_learns_and_answers(tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    catalogs = _small_catalogs()
    if len(catalogs) < 4:
        pytest.skip(f"fewer than 4 of the small French catalogs {SMALL} in {FR}")
    args = ["--run.out_dir", str(tmp_path / "runs"), "--run.name", "tiny", "--data.dir", str(tmp_path / "data"),
            "--data.catalogs", ",".join(catalogs), "--data.vocab_size", "400", "--data.test_fraction", "0.2",
            "--data.val_fraction", "0.1", "--model.dim", "64", "--model.n_layers", "2", "--model.max_seq_len", "64",
            "--model.beam", "2", "--train.steps", "40", "--train.global_batch", "16", "--train.micro_batch", "16",
            "--train.time_budget_s", "0", "--train.precision", "fp32", "--train.log_every", "1", "--eval.every", "0",
            "--eval.max_batches", "2", "--checkpoint.every", "0", "--data.bucket_rows", "16", "--optim.warmup_steps", "5"]
    assert main(["train", "translate_en_fr", *args]) == 0
    run = tmp_path / "runs" / "tiny"
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind", "train") == "train" and "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # from ln(400) = 6.0 towards the unigram entropy
    assert "- reference:" in (run / "examples.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--limit", "8", "--predictions", str(tmp_path / "p.jsonl")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"chrf", "bleu", "rougeL"} <= set(out["metrics"]) and set(out["baselines"]) == {"copy", "retrieval"}
    assert out["baselines"]["copy"]["chrf"] > 0
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 8 and all({"input", "reference", "output"} <= set(p) for p in lines)
    assert main(["generate", str(run), "--input", "File not found", "--beam", "2"]) == 0
    capsys.readouterr()  # an untrained model may stop at once: the call succeeding is what counts here
    for bad, words in ((["--input", "  "], "--input"), (["--input", "word " * 80], "tokens")):
        assert main(["generate", str(run), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1


def test_a_language_without_catalogs_and_a_file_that_is_not_a_catalog_are_one_line(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    not_mo = tmp_path / "notes.txt"
    not_mo.write_text("hello")
    for extra, words in ((["--data.lang", "xx-nowhere"], "no gettext catalogs"),
                         (["--data.catalogs", str(not_mo)], "not a compiled gettext catalog")):
        assert main(["prepare", "translate_en_fr", "--data.dir", str(tmp_path / "data"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
        assert not (tmp_path / "data").exists()  # nothing written
    with pytest.raises(DataError, match="not a readable gettext catalog"):
        list(catalog_messages(not_mo))


def test_the_placeholder_test_compares_output_and_source_placeholders_as_multisets() -> None:
    class Letters:  # a codec whose token i is the i-th piece
        pieces = ["Ouvrir ", "%s", " et ", "%d", "\n", "{name}"]

        def text(self, hyp: Hypothesis) -> str:
            return "".join(self.pieces[t] for t in hyp.tokens).strip()

    keeps = keeps_placeholders(Letters(), "Open %s and %d")  # type: ignore[arg-type]
    assert keeps([0, 1, 2, 3]) and keeps([0, 3, 2, 1])  # order is the translator's
    assert not keeps([0, 1, 2]) and not keeps([0, 1, 2, 3, 1]) and not keeps([0, 1, 2, 3, 4, 0])
    assert keeps_placeholders(Letters(), "Open it")([0, 2])  # no placeholders wanted: none may appear  # type: ignore[arg-type]
    assert not keeps_placeholders(Letters(), "Open it")([0, 5])  # type: ignore[arg-type]
