"""Evaluation through the architecture's spec: the figures of the old cross-entropy-over-logits evaluation, and a
spec's own score used wherever a run evaluates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from largo.models import build_model, get_spec
from largo.models.gpt import GPTConfig
from largo.models.loss import IGNORE, Scored, linear_scores, score_targets, summed_loss
from largo.observe.metrics import read_metrics
from largo.train.evaluate import evaluate
from largo.train.run import train
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def _old_evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], classes: int = 0) -> dict:
    """The evaluation before ArchSpec.score: full logits, summed cross-entropy, argmax accuracy, confusion from the logits."""
    loss = correct = count = 0.0
    confusion = torch.zeros(classes, classes, dtype=torch.long) if classes else None
    with torch.no_grad():
        for x, y in batches:
            logits = model(x)
            keep = y != IGNORE
            loss += float(summed_loss(logits, y))
            correct += float((logits.argmax(-1)[keep] == y[keep]).sum())
            count += float(keep.sum())
            if confusion is not None:
                confusion += torch.bincount(y[keep] * classes + logits.argmax(-1)[keep], minlength=classes**2).view(classes, classes)
    return {"loss": loss / count, "accuracy": correct / count, "targets": int(count), "confusion": confusion}


def test_gpt_evaluation_through_its_spec_gives_the_old_figures_without_full_logits() -> None:
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=97, dim=32, n_layers=2, n_heads=4, max_seq_len=16))
    batches = [(torch.randint(0, 97, (3, 16)), torch.randint(0, 97, (3, 16))) for _ in range(3)]
    batches[1][1][0, :5] = IGNORE  # ignored targets count nowhere
    old = _old_evaluate(model, batches)
    new = evaluate(model, batches, device=CPU, score=get_spec("gpt").score)
    assert new["targets"] == old["targets"] == 3 * 48 - 5
    torch.testing.assert_close(new["loss"], old["loss"], rtol=1e-6, atol=0)
    assert new["accuracy"] == old["accuracy"]


def test_chunked_scores_equal_the_whole_logits_scores() -> None:
    """Large vocabularies score chunk by chunk (as the fused head + loss trains): the same sums and predictions."""
    torch.manual_seed(1)
    h, w, y = torch.randn(50, 8), torch.randn(300, 8), torch.randint(0, 300, (50,))
    y[::7] = IGNORE
    whole, chunked = score_targets(h @ w.t(), y), linear_scores(h, w, y, budget_bytes=4 * 300 * 8)  # 8 rows per chunk
    torch.testing.assert_close(chunked.loss, whole.loss, rtol=1e-6, atol=0)
    assert (chunked.correct, chunked.count) == (whole.correct, whole.count) and torch.equal(chunked.predicted, whole.predicted)


def test_classifier_evaluation_and_confusion_are_unchanged() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))  # any module whose outputs are class logits
    batches = [(torch.randn(6, 3, 4), torch.randint(0, 5, (6,))) for _ in range(4)]
    old = _old_evaluate(model, batches, classes=5)
    confusion = torch.zeros(5, 5, dtype=torch.long)
    new = evaluate(model, batches, device=CPU, confusion=confusion, score=get_spec("vit").score)  # the default score
    assert (new["loss"], new["accuracy"], new["targets"]) == (old["loss"], old["accuracy"], old["targets"])
    assert torch.equal(confusion, old["confusion"])


def test_a_spec_with_its_own_score_is_evaluated_with_it(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch,
                                                        one_thread: None) -> None:
    """An architecture trained on another loss is evaluated on it: the run's periodic and final evaluations use spec.score."""
    calls = []

    def half_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> Scored:
        calls.append(inputs.shape)
        n = torch.tensor(targets.numel())
        return Scored(n * 0.5, n * 0 + 1, n)  # loss 0.5 and one correct per batch, whatever the model says

    monkeypatch.setattr(get_spec("gpt"), "score", half_loss)
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 2}, eval={"every": 1, "max_batches": 2},
                      checkpoint={"every": 0})
    summary = train(cfg, log=lambda _m: None)
    evals = read_metrics(cfg.run_dir / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [1, 2] and all(e["loss"] == 0.5 for e in evals)
    assert summary["val_loss"] == 0.5 and summary["val_accuracy"] == 2 / (2 * 4 * 32)
    assert len(calls) == 4  # two batches at step 1 and two at the end


def test_eval_json_and_predictions_come_from_the_spec(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    """`largo eval --json` prints one JSON object on stdout; a spec's TaskResults give its metrics, baselines and predictions."""
    import json

    from largo.cli import main
    from largo.models.results import TaskResults

    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 2}, checkpoint={"every": 0})
    summary = train(cfg, log=lambda _m: None)
    capsys.readouterr()
    assert main(["eval", str(cfg.run_dir), "--json", "--max-batches", "2"]) == 0
    plain = json.loads(capsys.readouterr().out)  # loss and accuracy are a language model's metrics
    assert plain["baselines"] == {} and plain["metrics"]["loss"] == pytest.approx(summary["val_loss"], rel=1e-5)
    assert main(["eval", str(cfg.run_dir), "--predictions", str(tmp_path / "p.jsonl")]) == 2  # none to write: one line
    assert "--predictions" in capsys.readouterr().err and not (tmp_path / "p.jsonl").exists()
    assert main(["generate", str(cfg.run_dir), "--prompt", "def ", "--max-new-tokens", "6", "--temperature", "0"]) == 0
    from tokenizers import Tokenizer

    from largo.checkpoint.handle import Checkpoint
    from largo.checkpoint.restore import load_model
    from largo.models.generate import generate

    ckpt = Checkpoint.find(str(cfg.run_dir))
    model, _ = load_model(ckpt, CPU)
    tok = Tokenizer.from_file(str(ckpt.tokenizer))
    ids = generate(model, tok.encode("def ").ids, max_new_tokens=6, max_seq_len=32, temperature=0)
    assert len(ids) == len(tok.encode("def ").ids) + 6  # the language model's spec answers `largo generate`: the same sample
    assert capsys.readouterr().out == tok.decode(ids) + "\n"
    assert main(["generate", str(cfg.run_dir), "--beam", "0"]) == 2 and "--beam" in capsys.readouterr().err

    rows = [{"input": "a", "reference": "b", "output": "c"}, {"input": "é", "reference": "e", "output": "e"}]
    seen = []

    def results(model: nn.Module, task, *, device, precision, limit=None, log=print) -> TaskResults:
        seen.append(limit)
        return TaskResults({"chrf": 41.5}, {"copy": {"chrf": 12.0}}, rows[:limit], ["chrF2 signature: ..."])

    monkeypatch.setattr(get_spec("gpt"), "results", results)
    assert main(["eval", str(cfg.run_dir), "--json", "--limit", "2", "--predictions", str(tmp_path / "p.jsonl")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"metrics": {"chrf": 41.5}, "baselines": {"copy": {"chrf": 12.0}}} and seen == [2]
    assert "chrF2 signature" in out.err  # what people read goes to stderr under --json
    assert [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()] == rows
