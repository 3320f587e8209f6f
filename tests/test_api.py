"""largo.Trainer: a user's own module and data through the one loop."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

import largo
from largo.errors import DataError
from largo.observe.metrics import read_metrics

quiet = dict(log=lambda _m: None)


def _data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long()


def test_digits_example_reaches_95_percent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "digits_api.py"), run_name="__main__")
    last = capsys.readouterr().out.strip().splitlines()[-1]
    accuracy = eval(last, {})["accuracy"]  # the example prints the evaluate() dict
    assert accuracy >= 0.95


def test_dict_batches_and_accumulation(tmp_path: Path) -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 2)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.lin(features)

    x, y = _data()
    batches = [{"features": x[i : i + 8], "labels": y[i : i + 8]} for i in range(0, 64, 8)]
    trainer = largo.Trainer(Net(), epochs=20, grad_accum=2, lr=0.05, run_dir=tmp_path / "r", **quiet)
    summary = trainer.fit(batches, batches)
    assert summary["steps"] == 80 if "steps" in summary else summary["step"] == 80
    assert trainer.evaluate(batches)["accuracy"] > 0.9


def test_resume_matches_uninterrupted(tmp_path: Path) -> None:
    x, y = _data()

    def run(run_dir: Path, steps: int, resume: str | None) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
        trainer = largo.Trainer(model, optimizer=lambda p: optim.Adam(p, lr=1e-2), steps=steps, run_dir=run_dir,
                                resume=resume, overwrite=resume is None, checkpoint_every=5, log_every=1, **quiet)
        trainer.fit(loader)
        return model.state_dict()

    whole = run(tmp_path / "whole", 12, None)
    run(tmp_path / "part", 7, None)  # same seed, stops after 7 (checkpoints at 5 and 7)
    resumed = run(tmp_path / "part", 12, str(tmp_path / "part" / "checkpoints" / "step_0000005"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    losses = lambda d: [r["loss"] for r in read_metrics(d / "metrics.jsonl", "train")]  # noqa: E731
    assert losses(tmp_path / "whole") == losses(tmp_path / "part")


def test_numpy_and_pandas_inputs(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    x, y = _data()
    frame = pd.DataFrame(x.numpy(), columns=[f"f{i}" for i in range(8)])
    trainer = largo.Trainer(nn.Linear(8, 2), epochs=30, lr=0.05, batch_size=16, run_dir=tmp_path / "r", **quiet)
    trainer.fit((frame, pd.Series(y.numpy())))
    assert trainer.evaluate((x.numpy().astype(np.float64), y.numpy()))["accuracy"] > 0.9


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ((np.zeros((10, 8)), np.zeros(9, dtype=int)), "inputs have 10 rows but targets have 9; they must match"),
        ((np.array([["a"] * 8] * 4), np.zeros(4, dtype=int)), "inputs has dtype <U1; expected numbers"),
        (42, "training data must be iterable"),
    ],
)
def test_bad_data_is_one_line(tmp_path: Path, data: object, message: str) -> None:
    trainer = largo.Trainer(nn.Linear(8, 2), run_dir=tmp_path / "r", **quiet)
    with pytest.raises(DataError, match=message):
        trainer.fit(data)


def test_evaluate_on_no_data_is_an_error(tmp_path: Path) -> None:
    trainer = largo.Trainer(nn.Linear(8, 2), run_dir=tmp_path / "r", **quiet)
    with pytest.raises(DataError, match="the evaluation data holds no examples"):
        trainer.evaluate([])
