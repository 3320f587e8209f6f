"""Sequence to sequence: the gettext and docstring sources on this machine's files, the split by group, KV-cached
decoding against the uncached path, beam search against greedy, a tiny translation run end to end, bad inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from largo.cli import main
from largo.data.prepare import train_tokenizer
from largo.data.seq2seq import Seq2SeqDataConfig, prepare_pairs, split_pairs
from largo.data.sources import PAIRS, SourceStats, open_source
from largo.data.sources.docstrings import module_pairs, top_level
from largo.data.sources.gettext_catalogs import LOCALE_DIR, catalog_messages, unique_catalogs
from largo.errors import ConfigError, DataError
from largo.models.decode import Hypothesis, beam_search, best_of, greedy
from largo.models.seq2seq import KeepPlaceholders, PrefixLM, Seq2SeqConfig
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



class _Rule:
    """A constraint for the tests: `accepts` as given, every beam viable unless `at_most_once` names a token."""

    def __init__(self, accepts: Callable[[list[int]], bool], at_most_once: int | None = None):
        self.accepts, self.once = accepts, at_most_once

    def viable(self, tokens: list[int]) -> bool:
        return self.once is None or tokens.count(self.once) <= 1


def _stop_token(model: PrefixLM) -> int:
    """A token the model emits a few steps in: the stop token, so that searches end and differ."""
    free = greedy(model, torch.tensor([[3, 7, 9, 1]]), stop_id=-1, max_new_tokens=20)[0].tokens
    return next(t for i, t in enumerate(free) if i >= 3 and t not in free[:i])


def test_beam_search_returns_the_best_candidate_a_constraint_accepts(one_thread: None) -> None:
    model = _tiny_model()
    stop = _stop_token(model)
    for prefix in ([3, 7, 9, 1], [4, 4, 2, 8], [5, 11, 12, 13, 14]):
        best = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0)
        other = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0,
                            constraint=_Rule(lambda t, best=best: t != best.tokens))  # type: ignore[misc]
        assert other.tokens != best.tokens and other.logprob <= best.logprob + 1e-6  # the runner-up, never a better one
        assert other.logprob == pytest.approx(_logprob(model, prefix, other.tokens, stop, other.finished), abs=1e-3)
        nothing = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0,
                              constraint=_Rule(lambda t: False))
        assert nothing.tokens == best.tokens  # accepting none falls back to the best of all


def test_a_constraint_steers_the_search_to_outputs_the_model_does_not_prefer(one_thread: None) -> None:
    model = _tiny_model()
    stop = _stop_token(model)
    # (prefix, token): the unconstrained best holds the token 0 or 2 times; the rule wants it exactly once
    for prefix, x in (([3, 7, 9, 1], 31), ([4, 4, 2, 8], 18), ([5, 11, 12, 13, 14], 17)):
        best = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0)
        assert best.tokens.count(x) != 1
        got = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0,
                          constraint=_Rule(lambda t, x=x: t.count(x) == 1, at_most_once=x))  # type: ignore[misc]
        assert got.finished and got.tokens.count(x) == 1  # found by the search, not only re-ranked
        assert got.logprob == pytest.approx(_logprob(model, prefix, got.tokens, stop, True), abs=1e-3)
        assert got.logprob <= best.logprob + 1e-6


def test_best_of_ranks_by_score_and_keeps_the_placeholder_test() -> None:
    cands = [Hypothesis([1, 2], -1.0, True), Hypothesis([3], -0.5, True), Hypothesis([4, 5, 6], -2.0, True)]
    assert best_of(cands, 0.0, None).tokens == [3]
    assert best_of(cands, 0.0, lambda t: len(t) > 1).tokens == [1, 2]
    assert best_of(cands, 0.0, lambda t: 9 in t).tokens == [3]
    cut = [Hypothesis([7] * 9, -0.1, False), *cands]  # the best score, but cut at the length limit
    assert best_of(cut, 0.0, None).tokens == [7] * 9  # unconstrained: the score alone
    assert best_of(cut, 0.0, lambda t: 9 in t).tokens == [3]  # none accepted: the best finished one

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
    # the data folder prepared again (another largo) with another tokenizer: not the ids the model learned
    tok_file, manifest_file = tmp_path / "data" / "tokenizer.json", tmp_path / "data" / "manifest.json"
    tok_file.write_text(tok_file.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    manifest = json.loads(manifest_file.read_text())
    manifest["meta"]["tokenizer_sha256"] = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    manifest_file.write_text(json.dumps(manifest))
    assert main(["eval", str(run), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tokenizer.json" in err and "prepared again" in err and len(err.splitlines()) == 1


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

    rule = KeepPlaceholders(Letters(), "Open %s and %d")  # type: ignore[arg-type]
    assert rule.accepts([0, 1, 2, 3]) and rule.accepts([0, 3, 2, 1])  # order is the translator's
    assert not rule.accepts([0, 1, 2]) and not rule.accepts([0, 1, 2, 3, 1]) and not rule.accepts([0, 1, 2, 3, 4, 0])
    assert rule.viable([0, 1, 2]) and rule.viable([0, 3])  # may still gain the missing one
    assert not rule.viable([0, 1, 2, 1]) and not rule.viable([0, 4, 2])  # one %s too many, a newline the source lacks
    bare = KeepPlaceholders(Letters(), "Open it")  # type: ignore[arg-type]
    assert bare.accepts([0, 2]) and not bare.accepts([0, 5]) and not bare.viable([0, 5])  # none wanted: none may appear


@needs_fr
def test_pairs_encode_with_a_given_tokenizer_and_its_own_separator(tmp_path: Path) -> None:
    catalogs = _small_catalogs()[:4]
    if len(catalogs) < 4:
        pytest.skip(f"fewer than 4 of the small French catalogs {SMALL} in {FR}")
    given = train_tokenizer(iter(["Ouvrir le fichier", "Open the file", "Enregistrer sous"] * 50), 300)
    given.add_special_tokens(["<|im_start|>"])  # a pretrained model's tokenizer: its own special tokens, no <|sep|>
    path = tmp_path / "given.json"
    given.save(str(path))
    d = Seq2SeqDataConfig(lang="fr", catalogs=catalogs, dir=str(tmp_path / "data"), tokenizer=str(path),
                          separator="<|im_start|>", test_fraction=0.2, val_fraction=0.1)
    prepared = prepare_pairs(d, seq_len=64, log=lambda _m: None)
    assert Tokenizer.from_file(str(tmp_path / "data" / "tokenizer.json")).get_vocab() == given.get_vocab()  # no new BPE
    sep = given.token_to_id("<|im_start|>")
    x, src = prepared.arrays["train_x"], prepared.arrays["train_src"]
    assert len(x) > 20 and all(int(x[i, src[i]]) == sep for i in range(len(x)))
    assert prepared.meta["sep_id"] == sep and prepared.meta["vocab_size"] == given.get_vocab_size()
    with pytest.raises(ConfigError, match="data.separator '<|sep|>' is not a token of data.tokenizer"):
        prepare_pairs(dataclasses.replace(d, separator="<|sep|>", dir=str(tmp_path / "other")), seq_len=64, log=lambda _m: None)
    assert not (tmp_path / "other").exists()  # nothing written


def test_the_source_loss_adds_the_sources_next_token_loss_in_training_only(one_thread: None) -> None:
    """With model.source_loss w, training reads sum_target + w x mean_source x n_target; evaluation the target's alone."""
    from largo.data.seq2seq import pair_batch

    torch.manual_seed(0)
    cfg = Seq2SeqConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=40, tie_embeddings=False, source_loss=0.5)
    model = PrefixLM(cfg)
    model.init_weights()
    rows = torch.randint(3, 50, (2, 12))
    rows[0, 5], rows[1, 3] = 1, 1  # the separator (id 1) after a source of 5 and of 3 tokens; row 1 ends early
    inputs, targets = pair_batch(rows.numpy(), src_len=torch.tensor([5, 3]).numpy(), length=torch.tensor([12, 9]).numpy())
    with torch.no_grad():
        logp = torch.log_softmax(model(inputs).float(), -1)  # (b, t, vocab): the full head
        nll = -logp.gather(-1, rows[:, 1:, None])[..., 0]  # (b, t): every position's next-token loss
        tgt = targets != -100
        src = torch.zeros_like(tgt)
        src[0, :5], src[1, :3] = True, True  # positions before the separator predict source tokens, then the separator
        expected = nll[tgt].sum() + 0.5 * nll[src].mean() * tgt.sum()
        assert torch.allclose(model.train()(inputs, targets=targets), expected, rtol=1e-4)
        assert torch.allclose(model.eval()(inputs, targets=targets), nll[tgt].sum(), rtol=1e-4)


def _mo_file(entries: dict[bytes, bytes]) -> bytes:
    """A little-endian .mo file of (msgid, msgstr) byte strings, the layout msgfmt writes (no hash table)."""
    keys = sorted(entries)
    head, table = 28, 28 + 16 * len(keys)
    originals, translations, blob = [], [], b""
    for k in keys:
        originals.append((len(k), table + len(blob)))
        blob += k + b"\0"
    for k in keys:
        translations.append((len(entries[k]), table + len(blob)))
        blob += entries[k] + b"\0"
    index = b"".join(struct.pack("<2I", *e) for e in originals + translations)
    return struct.pack("<7I", 0x950412DE, 0, len(keys), head, head + 8 * len(keys), 0, table) + index + blob


def test_a_catalog_with_a_latin1_header_is_read_in_its_charset(tmp_path: Path) -> None:
    """Python's gettext reads a header as UTF-8 before its charset line (Debian's German net-tools.mo): read anyway."""
    header = "Last-Translator: Ralf B\xe4chle\nContent-Type: text/plain; charset=iso-8859-1\n".encode("latin-1")
    path = tmp_path / "net.mo"
    path.write_bytes(_mo_file({b"": header, b"Flags": "Flaggen f\xfcr".encode("latin-1")}))
    assert list(catalog_messages(path)) == [("Flags", "Flaggen f\xfcr")]
    path.write_bytes(b"\xde\x12\x04\x95" + b"\xff" * 10)  # a truncated catalog is still one line
    with pytest.raises(DataError, match="not a readable gettext catalog"):
        list(catalog_messages(path))


def _pointer_model(seed: int = 0) -> PrefixLM:
    torch.manual_seed(seed)
    model = PrefixLM(Seq2SeqConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=40, tie_embeddings=False,
                                   pointer=True))
    model.init_weights()
    with torch.no_grad():  # peaked generation, a gate that varies: outputs stop and searches differ
        model.head.weight.mul_(20)
        model.pointer.gate.weight.normal_(std=0.3)
    return model.eval()


def test_the_pointers_loss_score_and_cached_decoding_read_one_mixture(one_thread: None) -> None:
    """model.pointer: training's loss, evaluation's and the outputs' log-probabilities are the same distribution,
    it sums to one, and the KV-cached greedy and beam outputs equal the uncached ones."""
    from largo.data.seq2seq import pair_batch

    model = _pointer_model()
    rows = torch.randint(3, 50, (2, 12))
    rows[0, 5], rows[1, 3] = 1, 1
    inputs, targets = pair_batch(rows.numpy(), src_len=torch.tensor([5, 3]).numpy(), length=torch.tensor([12, 9]).numpy())
    with torch.no_grad():
        logp = model(inputs)  # (b, t, vocab): log-probabilities of the mixture
        assert torch.allclose(logp.exp().sum(-1), torch.ones(2, 11), atol=1e-5)
        keep = targets != -100
        nll = -logp[keep].gather(-1, targets[keep][:, None]).sum()
        assert torch.allclose(model.train()(inputs, targets=targets), nll, rtol=1e-4)
        assert torch.allclose(model.eval()(inputs, targets=targets, score=True).loss, nll, rtol=1e-4)
        at = torch.tensor([6, 4])
        assert torch.allclose(model.logits_at(inputs, at), logp[torch.arange(2), at], atol=1e-5)
    stop = _stop_token(model)
    prefixes = torch.tensor([[3, 7, 9, 1], [4, 4, 2, 8]])
    cached = greedy(model, prefixes, stop_id=stop, max_new_tokens=20)
    assert [h.tokens for h in cached] == [h.tokens for h in greedy(model, prefixes, stop_id=stop, max_new_tokens=20, use_cache=False)]
    for prefix in ([3, 7, 9, 1], [5, 11, 12, 13, 14], [30, 31]):
        b = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0)
        uncached = beam_search(model, prefix, beam=4, stop_id=stop, max_new_tokens=20, length_penalty=0.0, use_cache=False)
        assert b.tokens == uncached.tokens and b.logprob == pytest.approx(uncached.logprob, abs=1e-4)
        assert b.logprob == pytest.approx(_logprob(model, prefix, b.tokens, stop, b.finished), abs=1e-3)


def _copy_rows(copied: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """`copied others <sep> copied <eot>` rows (separator id 1, stop id 0)."""
    b = len(copied)
    return torch.cat([copied, others, torch.ones(b, 1, dtype=torch.long), copied, torch.zeros(b, 1, dtype=torch.long)], 1)


def _copy_accuracy(pointer: bool) -> float:
    """Train to copy the source's first 3 tokens (ids 3-29) past 2 others (ids 30-49, never a target); the share of test
    rows whose first 3 tokens, now ids 30-49, greedy decoding writes exactly."""
    from largo.data.seq2seq import pair_batch

    torch.manual_seed(0)
    model = PrefixLM(Seq2SeqConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, max_seq_len=16, tie_embeddings=False,
                                   pointer=pointer))
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    n, b = 3, 32
    for _ in range(300):
        rows = _copy_rows(torch.randint(3, 30, (b, n)), torch.randint(30, 50, (b, 2)))
        inputs, targets = pair_batch(rows.numpy(), src_len=torch.full((b,), n + 2).numpy(), length=torch.full((b,), 2 * n + 4).numpy())
        loss = model(inputs, targets=targets) / (targets != -100).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    test = torch.randint(30, 50, (64, n))
    prefixes = _copy_rows(test, torch.randint(30, 50, (64, 2)))[:, : n + 3]
    out = greedy(model.eval(), prefixes, stop_id=0, max_new_tokens=n)
    return sum(h.tokens == t.tolist() for h, t in zip(out, test)) / len(test)


def test_the_pointer_copies_tokens_the_head_never_learned_to_write(one_thread: None) -> None:
    """Copying the source: with the pointer, tokens never seen as targets come out right; without it they cannot."""
    assert _copy_accuracy(pointer=True) >= 0.9
    assert _copy_accuracy(pointer=False) <= 0.1


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_no_repeat_ngram_bans_repeats_of_the_output_and_keeps_the_models_log_probabilities(one_thread: None) -> None:
    """model.no_repeat_ngram n: greedy and beam outputs hold no n-gram twice (the unbanned ones do, on this model) and
    their log-probabilities are still the model's own."""
    model = _pointer_model()  # a random pointer model loops: [4, 4, 4, ...]
    prefix = [4, 4, 2, 8]
    free = greedy(model, torch.tensor([prefix]), stop_id=-1, max_new_tokens=12)[0].tokens
    assert len(set(_ngrams(free, 2))) < len(_ngrams(free, 2))
    for n in (1, 2, 3):
        g = greedy(model, torch.tensor([prefix]), stop_id=-1, max_new_tokens=12, no_repeat_ngram=n)[0]
        b = beam_search(model, prefix, beam=3, stop_id=-1, max_new_tokens=12, length_penalty=0.0, no_repeat_ngram=n)
        for hyp in (g, b):
            assert len(hyp.tokens) == 12 and len(set(_ngrams(hyp.tokens, n))) == len(_ngrams(hyp.tokens, n))
            assert hyp.logprob == pytest.approx(_logprob(model, prefix, hyp.tokens, -1, False), abs=1e-3)
        assert b.logprob >= g.logprob - 1e-4


def test_a_search_whose_outputs_the_constraint_refuses_is_tried_once_wider(one_thread: None) -> None:
    """widen w: an accepted output of the w-times-wider search replaces an unaccepted one; an accepted one stays."""
    model = _tiny_model()
    stop = _stop_token(model)
    changed = 0
    for prefix in ([3, 7, 9, 1], [4, 4, 2, 8], [5, 11, 12, 13, 14]):
        for x in range(3, 50):
            rule = _Rule(lambda t, x=x: t.count(x) == 2)  # type: ignore[misc]
            kw = dict(stop_id=stop, max_new_tokens=12, length_penalty=0.0, constraint=rule)
            narrow, wide = beam_search(model, prefix, beam=2, **kw), beam_search(model, prefix, beam=8, **kw)
            got = beam_search(model, prefix, beam=2, widen=4, **kw)
            expected = narrow if rule.accepts(narrow.tokens) or not rule.accepts(wide.tokens) else wide
            assert got.tokens == expected.tokens
            changed += got.tokens != narrow.tokens
    assert changed >= 1  # some outputs only the wider search finds
