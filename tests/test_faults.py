"""Fault injection: SIGKILL anywhere (mid-save at known instants, and at random), SIGTERM/SIGUSR1,
NaN steps, loss spikes, a full disk. Every kill is followed by checks that no checkpoint was lost,
and the killed-and-resumed run must end bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import largo
from largo.checkpoint import store
from largo.checkpoint.restore import restore
from largo.checkpoint.store import checkpoint_candidates, complete_checkpoints, latest_checkpoint, read_state
from largo.cli import main
from largo.config import RunConfig, build_config
from largo.distributed.env import DistEnv
from largo.errors import CheckpointError
from largo.train.faults import PREEMPTED_EXIT, StepGuard
from largo.train.loop import LoopParts, run_steps
from largo.train.optim import Schedule
from largo.train.run import train
from tests.conftest import tiny_config

SRC = Path(largo.__file__).resolve().parents[1]
STEPS, EVERY, KEEP = 60, 5, 2
quiet = dict(log=lambda _m: None)


def kill_config(tmp_path: Path, data: Path, name: str) -> RunConfig:
    """The run every kill test repeats: 60 steps, a checkpoint every 5, two kept, one thread."""
    return tiny_config(tmp_path / name, data, train={"steps": STEPS, "threads": 1}, checkpoint={"every": EVERY, "keep_last": KEEP})


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict:
    """The uninterrupted run: its weights and loss history are what every interrupted run must end with."""
    cfg = kill_config(tmp_path_factory.mktemp("ref"), tiny_data, "ref")
    train(cfg, **quiet)
    torch.set_num_threads(2)  # train() set 1 for this process
    return {"weights": weights(cfg.run_dir), "losses": losses(cfg.run_dir)}


def weights(path: Path) -> dict[str, torch.Tensor]:
    return restore(path)[0].state_dict()


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every train record; a line torn by a kill is not a record."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("kind") == "train":
            out.append((r["step"], r["loss"]))
    return out


def assert_same_as(reference: dict, run_dir: Path) -> None:
    w = weights(run_dir)
    assert w.keys() == reference["weights"].keys()
    assert all(torch.equal(w[k], reference["weights"][k]) for k in w), "weights differ from the uninterrupted run"
    assert losses(run_dir) == reference["losses"] and len(reference["losses"]) == STEPS


def write_config(cfg: RunConfig, path: Path) -> Path:
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def start(config: Path, log: Path, resume: str = "auto", **env: str) -> subprocess.Popen:
    """`largo train config --resume auto` in a fresh process (stdout/stderr to a file, never a full pipe)."""
    full = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1", **env}
    with open(log, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "largo", "train", str(config), "--resume", resume],
                                stdout=f, stderr=subprocess.STDOUT, env=full)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def last_logged_step(log: Path, offset: int) -> int:
    """The last training step the process writing `log` from byte `offset` on has logged (0 if none yet)."""
    steps = re.findall(rb"^step (\d+)/\d+ \| loss", log.read_bytes()[offset:], re.M)
    return int(steps[-1]) if steps else 0


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def newest_step(run_dir: Path) -> int:
    found = latest_checkpoint(run_dir / "checkpoints")
    return read_state(found)["step"] if found else 0


def lost_after_kill(run_dir: Path, newest_before: int) -> int:
    """Checkpoints lost: complete ones that no longer verify, plus 1 if the newest went backwards."""
    found = checkpoint_candidates(run_dir / "checkpoints")
    broken = 0
    for ckpt in found:
        try:
            read_state(ckpt)
        except CheckpointError:
            broken += 1
    return broken + int(newest_step(run_dir) < newest_before)


def listening_sockets(pid: int) -> list[str]:
    """TCP sockets in LISTEN and bound UDP sockets owned by pid (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        path = Path("/proc/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            cols = line.split()
            if cols[3] == state and cols[9] in inodes:
                found.append(f"{table} {cols[1]}")
    return found


def test_sigkill_at_every_instant_then_resume_is_bitwise_exact(tmp_path: Path, tiny_data: Path, reference: dict) -> None:
    cfg = kill_config(tmp_path, tiny_data, "killed")
    config, run_dir, root, log = write_config(cfg, tmp_path / "cfg.json"), cfg.run_dir, cfg.run_dir / "checkpoints", tmp_path / "log.txt"
    marker = tmp_path / "paused"
    rng = random.Random(int(os.environ.get("LARGO_TEST_SEED", "0")))
    kills, lost, landed = 0, 0, []

    # Killed while paused at known instants of a save: mid-file, complete but not renamed, renamed, pointer moved.
    for point, step in (("save", 10), ("rename", 15), ("pointer", 25), ("prune", 35)):
        before = newest_step(run_dir)
        proc = start(config, log, LARGO_PAUSE_IN=point, LARGO_PAUSE_STEP=str(step), LARGO_PAUSE_MARKER=str(marker))
        wait_for(marker.exists, proc, f"the pause in {point} at step {step}")
        if point == "save":
            assert listening_sockets(proc.pid) == [], "a single-process run must not listen on the network"
        sigkill(proc)
        marker.unlink()
        kills += 1
        lost += lost_after_kill(run_dir, before)
        if point == "save":  # the half-written step 10 is not a checkpoint; step 5 is the newest
            assert newest_step(run_dir) == 5 and list(root.glob(".tmp-step_0000010-*"))
        if point == "rename":  # step 15 is whole in its temporary folder: resume takes it from there
            assert latest_checkpoint(root).name.startswith(".tmp-step_0000015-") and newest_step(run_dir) == 15
        if point == "pointer":  # step 25 is in place though `latest` still names step 20: resume takes 25
            assert json.loads((root / "latest").read_text()) == "step_0000020" and newest_step(run_dir) == 25
        if point == "prune":  # 25, 30 and 35 all complete; nothing pruned before the kill
            assert [p.name for p in complete_checkpoints(root)] == ["step_0000025", "step_0000030", "step_0000035"]

    # Killed at random moments while training: after a random step, plus a random part of a step (saves included).
    for _ in range(3):
        before, offset = newest_step(run_dir), log.stat().st_size
        if before >= STEPS - 1:
            break
        target = rng.randint(before + 1, min(before + 12, STEPS - 1))
        proc = start(config, log)
        wait_for(lambda: last_logged_step(log, offset) >= target, proc, f"step {target}")
        time.sleep(rng.uniform(0.0, 0.05))
        sigkill(proc)
        kills += 1
        landed.append(f"after step {last_logged_step(log, offset)} (resumed at {before})")
        lost += lost_after_kill(run_dir, before)

    if newest_step(run_dir) < STEPS:
        proc = start(config, log)
        assert proc.wait(300) == 0, log.read_text()[-2000:]
    else:  # a random kill landed after the final checkpoint, perhaps before its prune: the run is finished, the prune pending
        store.prune(root, KEEP)
    assert_same_as(reference, run_dir)
    # keep_last in place, the newest last (the one before it may be 50: a step stranded whole in .tmp- by a kill
    # between state.json and the rename is resumed from, then pruned with the other temporary folders)
    names = [p.name for p in complete_checkpoints(root)]
    assert len(names) == KEEP and names[-1] == "step_0000060"
    assert not list(root.glob(".tmp-*")), "stale temporary folders are pruned"

    # Resumed from the older checkpoint, the run re-saves its last step: killed between the two renames, a whole copy survives.
    proc = start(config, log, resume=str(root / names[0]), LARGO_PAUSE_IN="swap", LARGO_PAUSE_MARKER=str(marker))
    wait_for(marker.exists, proc, "the pause between the renames")
    sigkill(proc)
    kills += 1
    lost += lost_after_kill(run_dir, STEPS)
    stranded = next(root.glob(".old-step_0000060-*"))
    read_state(stranded)  # whole: every hash checks
    assert all(torch.equal(a, b) for a, b in zip(weights(stranded).values(), reference["weights"].values()))
    train(cfg, resume=str(root / names[0]), **quiet)
    assert [p.name for p in complete_checkpoints(root)] == [names[0], "step_0000060"] and not list(root.glob(".old-*"))
    assert_same_as(reference, run_dir)
    print(f"RELIABILITY kills survived: {kills}, checkpoints lost: {lost}; random kills landed {', '.join(landed)}")
    assert lost == 0


def test_sigterm_checkpoints_and_exits_75_then_resumes_exactly(tmp_path: Path, tiny_data: Path, reference: dict) -> None:
    cfg = kill_config(tmp_path, tiny_data, "term")
    log = tmp_path / "log.txt"
    proc = start(write_config(cfg, tmp_path / "cfg.json"), log)
    wait_for(lambda: last_logged_step(log, 0) >= 3, proc, "step 3")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == PREEMPTED_EXIT, log.read_text()[-2000:]
    text = log.read_text()
    line = next(ln for ln in text.splitlines() if "SIGTERM received; checkpoint written, stopping" in ln)
    stopped = int(line.split(":")[0].split()[1])
    assert f"preempted (exit {PREEMPTED_EXIT}) at step {stopped}; continue with --resume auto" in text
    assert read_state(latest_checkpoint(cfg.run_dir / "checkpoints"))["step"] == stopped < STEPS
    assert losses(cfg.run_dir)[-1][0] == stopped
    train(cfg, resume="auto", **quiet)
    assert_same_as(reference, cfg.run_dir)


def test_sigusr1_in_process_stops_after_the_step_and_restores_handlers(tmp_path: Path, tiny_data: Path, reference: dict) -> None:
    cfg = kill_config(tmp_path, tiny_data, "usr1")

    def log(msg: str) -> None:
        if msg.startswith("step 3/"):  # arrives between step 3's check and step 4's
            os.kill(os.getpid(), signal.SIGUSR1)

    before = signal.getsignal(signal.SIGUSR1)
    summary = train(cfg, log=log)
    assert summary["preempted"] and summary["stopped"] and summary["step"] == 4
    assert [p.name for p in complete_checkpoints(cfg.run_dir / "checkpoints")] == ["step_0000004"]
    assert signal.getsignal(signal.SIGUSR1) is before
    train(cfg, resume="auto", **quiet)
    assert_same_as(reference, cfg.run_dir)


def test_all_ranks_agree_on_stop_and_skip(tmp_path: Path) -> None:
    worker = Path(__file__).with_name("_dist_faults_worker.py")
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    procs = [subprocess.Popen([sys.executable, str(worker), str(r), "2", str(tmp_path / "rdv"), str(tmp_path)], env=env) for r in (0, 1)]
    assert [p.wait(120) for p in procs] == [0, 0]
    verdicts = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # step 1 fine; step 2 a signal on rank 1 only -> both stop; step 3 a NaN on rank 0 only -> both skip
    assert verdicts[0] == verdicts[1] == [[True, False], [True, True], [False, False]]


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer, schedule: Schedule) -> tuple:
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), schedule.state_dict(), float(schedule.lr())


def _same(a: tuple, b: tuple) -> bool:
    params = all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    state = all(torch.equal(a[1]["state"][p][k], b[1]["state"][p][k]) for p in a[1]["state"] for k in a[1]["state"][p])
    return params and state and a[1]["state"].keys() == b[1]["state"].keys() and a[2] == b[2]


@pytest.mark.parametrize("fused", [True, False])  # fused AdamW skips on the device; a plain one is skipped by the host
def test_non_finite_step_changes_nothing_but_the_data_position(fused: bool) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=fused)
    cfg = build_config({"train": {"steps": 5, "global_batch": 1, "micro_batch": 1, "log_every": 1}, "checkpoint": {"every": 0},
                        "optim": {"lr": 0.1, "warmup_steps": 3}})
    schedule = Schedule([opt], cfg.optim, 5, torch.device("cpu"))
    assert schedule.on_device == fused
    seen: dict[int, tuple] = {}

    def batches(step: int) -> list:
        seen[step] = _snapshot(model, opt, schedule)  # the state at the start of each step
        x = torch.randn(8, 4)
        if step == 2:
            x[0, 0] = float("nan")  # a real NaN loss and real NaN gradients at step 3 (1-based)
        return [(x, x.sum(1, keepdim=True))]

    parts = LoopParts(model=model, optimizers=[opt], schedule=schedule, micro_batches=batches, normaliser=lambda _b: 1.0,
                      forward_loss=lambda x, y: F.mse_loss(model(x), y), evaluate=None, save=lambda _s: None,
                      tokens_per_step=8, flops_per_step=0.0, peak_flops=1.0)
    lines: list[str] = []
    progress = run_steps(parts, cfg, DistEnv(), start_step=0, stop_at=None, metrics=None, say=lines.append)
    assert progress["skipped_steps"] == [3] and progress["step"] == 5
    assert _same(seen[3], seen[2]) and not _same(seen[2], seen[1]) and not _same(seen[4], seen[3])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(ln.startswith("step 3: non-finite loss (nan) or gradient norm (nan); update skipped (1 in a row") for ln in lines)


def test_too_many_bad_steps_stop_with_one_line_and_keep_the_good_checkpoint(
    tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 8, "threads": 1}, checkpoint={"every": 2, "keep_last": 2},
                      faults={"max_bad_steps": 3})
    monkeypatch.setenv("LARGO_INJECT_NAN_AT_STEP", "3,5,6,7")  # one stray bad step, then three in a row
    assert main(["train", str(write_config(cfg, tmp_path / "cfg.json"))]) == 3
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "largo: error: step 7: 3 consecutive steps with a non-finite loss or gradient norm (faults.max_bad_steps = 3); "
        "no checkpoint was written after the last good step; lower optim.lr, raise optim.warmup_steps or check the data, then --resume auto"
    ]
    assert "step 3: non-finite loss (nan) or gradient norm (nan); update skipped (1 in a row, faults.max_bad_steps = 3)" in out
    root = cfg.run_dir / "checkpoints"
    assert [p.name for p in complete_checkpoints(root)] == ["step_0000002", "step_0000004"]  # step 6 was skipped: no save
    assert all(torch.isfinite(v).all() for v in weights(root / "step_0000004").values())  # step 3's NaN grads never applied
    faults = [json.loads(ln) for ln in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if '"fault"' in ln]
    assert [f["step"] for f in faults] == [3, 5, 6, 7]


def test_loss_spikes_are_logged_with_their_step() -> None:
    lines: list[str] = []
    guard = StepGuard(max_bad_steps=3, spike_factor=3.0, env=DistEnv(), say=lines.append)
    for step, loss in enumerate([4.0, 3.0] + [2.0] * 10 + [9.0, 2.1, 2.0], 1):
        guard.non_finite(step, torch.tensor(loss), torch.tensor(1.0), iter(()))
        assert not guard.settle()
    # running average: 4, 3.9, then ten 2.0s -> 2 + 1.9 * 0.9**10 = 2.6625; 9.0 is 3.4x that; 2.1 is not a spike
    assert lines == ["step 13: loss spike 9.0000, 3.4x the recent average 2.6625 (faults.spike_factor = 3.0)"]


def _full_disk_on(step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Patch the tensor writer: at `step`'s optimizer file write half of it, then fail as a full disk does."""
    from largo.checkpoint import checkpointer

    real = checkpointer.save_tensors

    def writer(path: Path, tensors: dict) -> None:
        if path.name == "optim.safetensors" and path.parent.name.startswith(f".tmp-step_{step:07d}"):
            path.write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, tensors)

    monkeypatch.setattr(checkpointer, "save_tensors", writer)


def test_full_disk_mid_save_one_line_previous_intact(tmp_path: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 6, "threads": 1}, checkpoint={"every": 2, "keep_last": 1})
    _full_disk_on(4, monkeypatch)
    assert main(["train", str(write_config(cfg, tmp_path / "cfg.json"))]) == 2
    root = cfg.run_dir / "checkpoints"
    assert capsys.readouterr().err.splitlines() == [
        f"largo: error: cannot write checkpoint {root}/step_0000004 (No space left on device); partial files removed, step_0000002 is intact"
    ]
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002"]  # no partial folder left
    read_state(root / "step_0000002")


def test_full_tmpfs_mid_save(tmp_path: Path, tiny_data: Path) -> None:
    """A real full filesystem: a 2.5 MB tmpfs holds one 1.6 MB checkpoint but not a second beside it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        cfg = tiny_config(mnt, tiny_data, train={"steps": 6, "threads": 1}, checkpoint={"every": 2, "keep_last": 1})
        with pytest.raises(CheckpointError) as info:
            train(cfg, **quiet)
        root = cfg.run_dir / "checkpoints"
        assert str(info.value).startswith(f"cannot write checkpoint {root}/step_0000004 (") and "No space left on device" in str(info.value)
        assert str(info.value).endswith("partial files removed, step_0000002 is intact")
        assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002"]
        assert restore(cfg.run_dir)[2].name == "step_0000002"  # loadable, and what --resume auto takes
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)


def test_resume_auto_passes_over_a_damaged_checkpoint(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 6, "threads": 1}, checkpoint={"every": 2, "keep_last": 3})
    train(cfg, stop_at=4, **quiet)
    damaged = cfg.run_dir / "checkpoints" / "step_0000004" / "optim.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-8])  # e.g. a disk error long after the save
    lines: list[str] = []
    train(cfg, resume="auto", log=lines.append)
    assert f"warning: {damaged}: sha256 does not match state.json; the file is truncated or corrupt; trying an older checkpoint" in lines
    assert any(ln.startswith(f"resumed from {cfg.run_dir}/checkpoints/step_0000002 at step 2") for ln in lines)


def test_resume_from_an_earlier_checkpoint_then_auto_follows_the_new_branch(tmp_path: Path, tiny_data: Path) -> None:
    """Rolling back (--resume <older folder>): the continuation's checkpoints win over the abandoned later ones."""
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 8, "threads": 1}, checkpoint={"every": 2, "keep_last": 2})
    train(cfg, stop_at=6, **quiet)  # checkpoints 4 and 6
    root = cfg.run_dir / "checkpoints"
    train(cfg, resume=str(root / "step_0000004"), stop_at=5, **quiet)  # writes step 5 after the abandoned step 6
    assert latest_checkpoint(root).name == "step_0000005"
    assert [p.name for p in complete_checkpoints(root)] == ["step_0000006", "step_0000005"]  # step 4 pruned: 2 kept
    assert train(cfg, resume="auto", **quiet)["step"] == 8
    assert [p.name for p in complete_checkpoints(root)] == ["step_0000006", "step_0000008"]


def test_a_run_directory_holds_one_run_at_a_time(tmp_path: Path, tiny_data: Path, reference: dict) -> None:
    """While a run holds its folder (paused mid-save), a second run with --overwrite or --resume auto exits 2 naming
    its PID and touches nothing; once the holder is SIGKILLed the kernel has dropped the lock and a new run resumes."""
    cfg = kill_config(tmp_path, tiny_data, "locked")
    config, log, marker = write_config(cfg, tmp_path / "cfg.json"), tmp_path / "log.txt", tmp_path / "paused"
    holder = start(config, log, LARGO_PAUSE_IN="save", LARGO_PAUSE_STEP="10", LARGO_PAUSE_MARKER=str(marker))
    wait_for(marker.exists, holder, "the holder's pause in the save of step 10")
    before = {p: p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()}
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for flag in (["--overwrite"], ["--resume", "auto"]):
        second = subprocess.run([sys.executable, "-m", "largo", "train", str(config), *flag], capture_output=True, text=True, env=env)
        assert second.returncode == 2, second.stderr
        assert second.stderr.splitlines() == [f"largo: error: {cfg.run_dir} is in use by another largo run (pid {holder.pid}); "
                                              f"wait for it to end, or set another run.name"]
    assert {p: p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()} == before, "the refused runs changed files"
    sigkill(holder)
    proc = start(config, log)  # no stale lock: the kernel released it with the holder
    assert proc.wait(300) == 0, log.read_text()[-2000:]
    assert_same_as(reference, cfg.run_dir)
