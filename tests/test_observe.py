"""Trackers and reports: TensorBoard's own reader finds every record once across a resume, the optional trackers
work offline (when installed), and `largo report` overlays runs in images and a report whose references all exist."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from largo.cli import main
from largo.config import load_config
from largo.errors import ConfigError, MissingDependencyError
from largo.observe.metrics import read_metrics
from largo.observe import trackers
from largo.observe.trackers import Tracker, _Stepped, scalars
from largo.train.run import train
from tests.conftest import tiny_config

quiet = dict(log=lambda _m: None)

pytestmark = pytest.mark.usefixtures("one_thread")


def interrupted_and_resumed(cfg) -> None:
    """Train to step 5, lose the checkpoint at 5 (as a kill between logging and saving would), resume from 3 to the end:
    steps 4 and 5 are logged twice, by the first attempt and by the resumed one."""
    assert train(cfg, stop_at=5, **quiet)["stopped"]
    shutil.rmtree(cfg.run_dir / "checkpoints" / "step_0000005")
    (cfg.run_dir / "checkpoints" / "latest").unlink(missing_ok=True)
    train(cfg, resume="auto", **quiet)


def test_tensorboard_reader_sees_each_step_once_across_a_resume(tmp_path: Path, tiny_data: Path) -> None:
    pytest.importorskip("tensorboard", reason="the tensorboard tracker needs: pip install 'largo-train[explain]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 8}, eval={"every": 4}, checkpoint={"every": 3},
                      observe={"trackers": ["tensorboard"]})
    interrupted_and_resumed(cfg)
    events = EventAccumulator(str(cfg.run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/perplexity", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/mfu",
            "val/loss", "val/perplexity", "val/accuracy", "memory/params_MiB", "memory/optimizer_MiB", "memory/peak_MiB"} <= tags
    logged = read_metrics(cfg.run_dir / "metrics.jsonl", "train")
    seen = events.Scalars("train/loss")
    assert [e.step for e in seen] == [r["step"] for r in logged] == list(range(1, 9))  # the first attempt's 4 and 5 purged
    np.testing.assert_allclose([e.value for e in seen], [r["loss"] for r in logged], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in events.Scalars("train/lr")], [r["lr"] for r in logged], rtol=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [4, 8]
    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["model.dim"].number_value == 64 and hparams["optim.lr"].number_value == pytest.approx(3e-3)


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_optional_trackers_work_offline(name: str, tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip(name, reason=f"optional tracker, not installed; install it with: pip install {name}")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 8}, checkpoint={"every": 3}, observe={"trackers": [name]})
    interrupted_and_resumed(cfg)
    if name == "mlflow":
        import json

        from mlflow.tracking import MlflowClient

        run_id = json.loads((cfg.run_dir / "trackers.json").read_text())["mlflow"]
        history = MlflowClient((cfg.run_dir / "mlruns").resolve().as_uri()).get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 9))  # one run, each step once
    elif name == "wandb":
        assert len(list((cfg.run_dir / "wandb").glob("offline-run-*"))) == 2  # one offline record per attempt, one run id
    else:
        assert any((tmp_path / "trackio").rglob("*"))


def test_trackers_without_purge_skip_what_the_first_attempt_sent() -> None:
    class Collect(_Stepped):
        def __init__(self, skip_through: int):
            super().__init__(skip_through)
            self.sent: list[int] = []

        def log(self, values: dict[str, float], step: int) -> None:
            self.sent.append(step)

    sink = Collect(skip_through=5)
    for step in range(4, 9):  # resumed from 3; the first attempt had logged up to 5
        sink.write({"kind": "train", "step": step, "loss": 1.0})
    sink.write({"kind": "summary", "step": 9, "val_loss": 1.0})  # no scalars: nothing to send
    assert sink.sent == [6, 7, 8]
    assert scalars({"kind": "memory", "step": 1, "rank_peak_bytes": [2**20, 3 * 2**20]}) == {"memory/peak_MiB": 3.0}
    assert scalars({"kind": "train", "step": 1, "loss": float("nan")}) == {}  # a skipped step's NaN is not a point


def test_tracker_names_are_checked_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert load_config("text_tiny", {"observe.trackers": "tensorboard,wandb"}).observe.trackers == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="'tensorbord' is not a tracker; choose among 'tensorboard'"):
        load_config("text_tiny", {"observe.trackers": "tensorbord"})
    assert main(["train", "text_tiny", "--tracker", "mlfow", "--run.out_dir", str(tmp_path)]) == 2
    assert "observe.trackers: 'mlfow' is not a tracker" in capsys.readouterr().err


def test_a_tracker_is_one_registry_entry(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracker registered from outside src/ is selectable, opened with the run, fed every record, closed and cleared."""
    seen: list = []

    class ListSink:
        def __init__(self, o: trackers.Opening):
            (o.run_dir / "list.out").write_text(o.project)

        def write(self, record: dict) -> None:
            seen.append(record)

        def close(self) -> None:
            seen.append("closed")

    monkeypatch.setitem(trackers._TRACKERS, "list", Tracker("list", module="json", outputs=("list.out",), open=ListSink))
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 2}, checkpoint={"every": 0}, observe={"trackers": ["list"]})
    train(cfg, **quiet)
    assert [r["step"] for r in seen if r != "closed" and r["kind"] == "train"] == [1, 2] and seen[-1] == "closed"
    assert "list.out" in trackers.tracker_outputs() and (cfg.run_dir / "list.out").read_text() == "largo"
    train(cfg, overwrite=True, **quiet)  # a run over it opens the tracker again
    assert seen.count("closed") == 2


def test_a_missing_tracker_package_is_the_one_missing_dependency_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(trackers._TRACKERS, "absent", Tracker("absent", module="largo_no_such_pkg", outputs=(), open=None))
    with pytest.raises(MissingDependencyError) as info:
        trackers.open_trackers(["absent"], tmp_path, config={}, project="p", resume_step=None, last_step=-1)
    assert str(info.value) == "observe.trackers 'absent' needs largo_no_such_pkg: pip install largo_no_such_pkg"


def _png(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
        assert pixels.std() > 5 and len(np.unique(pixels)) > 20  # drawn, not blank
        return img.size


def test_report_overlays_runs_and_references_only_existing_files(tmp_path: Path, tiny_data: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    a = tiny_config(tmp_path, tiny_data, run={"name": "a"}, eval={"every": 3})
    b = tiny_config(tmp_path, tiny_data, run={"name": "b"}, eval={"every": 3}, optim={"lr": 1e-3})
    train(a, **quiet)
    train(b, **quiet)
    assert main(["explain", str(a.run_dir), "def f(x):"]) == 0
    out = tmp_path / "compared"
    assert main(["report", str(a.run_dir), str(b.run_dir), "--out", str(out), "--samples", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and "eval @ step 3" in printed  # the per-run lines stay
    assert _png(out / "compare_loss.png") == _png(out / "compare_training.png") == (1350, 405)
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for ref in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / ref).exists(), ref
    embedded = re.findall(r'src="data:image/png;base64,', page)
    linked = [m for m in re.findall(r'(?:href|src)="([^"]+)"', page) if not m.startswith("data:")]
    assert len(embedded) == 2 and linked == ["../runs/a/explain/index.html"] and all((out / ref).exists() for ref in linked)
    assert re.search(r"<td>optim.lr</td><td>0.003</td><td>0.001</td>", page)  # the one configured difference
    assert "run.out_dir" not in md.split("## Config differences")[1].split("##")[0]  # same in both
    assert "### Samples" in md and "### Plan vs measured" in md and "completeness error at most" in md
