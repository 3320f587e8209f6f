"""Real multi-process runs (torchrun, gloo, CPU) against a 1-process reference run of the same global batch.

Each torchrun start costs seconds, so the launches are few and shared through module fixtures:
  reference   1 process, in this test process              (steps 1-6, checkpoints at 3 and 6)
  ddp         `largo train --nproc 2` (relaunches torchrun), activation checkpointing on every block
  fsdp        two torchrun "nodes" of 1 process each, c10d rendezvous on 127.0.0.1, AC on every 2nd block
  1 -> 2      torchrun, FSDP, resumed from the reference's step-3 checkpoint
  kill        torchrun --max-restarts 1, DDP: rank 1 SIGKILLed (restart, resume), then again (the job ends)
  hang        torchrun, DDP: rank 1 SIGSTOPped (the collective timeout names it)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import largo
from largo.cli import main
from largo.config import load_config
from largo.checkpoint.restore import restore
from largo.observe.metrics import read_metrics
from largo.train.run import train
from tests.conftest import tiny_config

SRC = str(Path(largo.__file__).resolve().parents[1])
# micro_batch 2 of global 8: 4 micro-steps on 1 rank, 2 per rank on 2 ranks (gradient sync on the last one only)
SECTIONS = dict(train={"threads": 1, "micro_batch": 2}, eval={"max_batches": 3})
LAUNCH_TIMEOUT_S = 240  # generous: the machine is shared; a hang fails the test instead of blocking CI


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return {**env, **extra}


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", "train")]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return restore(path)[0].state_dict()


def _assert_same_run(run: Path, ref: Path, *, steps: slice = slice(None)) -> None:
    """Loss at every step within 1e-5 relative and final weights allclose."""
    got, want = _losses(run), _losses(ref)[steps]
    assert len(got) == len(want) and len(got) > 0
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=0)
    a, b = _weights(run), _weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(proc: subprocess.CompletedProcess | subprocess.Popen, out: str) -> None:
    assert proc.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict:
    """The shared config file (1 thread per process) and the 1-process reference run."""
    root = tmp_path_factory.mktemp("dist")
    cfg = tiny_config(root, tiny_data, **SECTIONS)
    config = root / "config.json"
    config.write_text(json.dumps(cfg.to_dict()))
    ref = tiny_config(root, tiny_data, run={"name": "reference"}, **SECTIONS)
    summary = train(ref, log=lambda _m: None)
    torch.set_num_threads(2)  # train() set 1 for this process; give the rest of the session its threads back
    return {"root": root, "config": config, "runs": root / "runs", "reference": ref.run_dir, "val_loss": summary["val_loss"]}


def _largo(setup: dict, name: str, *args: str) -> list[str]:
    return ["-m", "largo", "train", str(setup["config"]), "--run.name", name, *args]


@pytest.fixture(scope="module")
def fsdp_two_nodes(setup: dict) -> Path:
    """FSDP over two torchrun 'nodes' (1 process each) meeting through c10d rendezvous on 127.0.0.1."""
    port, run_id = _free_port(), uuid.uuid4().hex[:8]
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}",
         *_largo(setup, "fsdp", "--parallel.strategy", "fsdp", "--parallel.ac", "every_k", "--parallel.ac_every", "2")],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    for node in nodes:
        out, _ = node.communicate(timeout=LAUNCH_TIMEOUT_S)
        _check(node, out)
    return setup["runs"] / "fsdp"


def test_ddp_on_two_processes_matches_one(setup: dict) -> None:
    proc = subprocess.run([sys.executable, *_largo(setup, "ddp", "--nproc", "2", "--parallel.strategy", "ddp", "--parallel.ac", "full")],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    _check(proc, proc.stdout + proc.stderr)
    assert "parallel: ddp" in proc.stdout and "2 micro-steps" in proc.stdout and "world 2" in proc.stdout
    assert proc.stdout.count("step 6/6") == 1  # only rank 0 prints progress
    _assert_same_run(setup["runs"] / "ddp", setup["reference"])
    final = read_metrics(setup["runs"] / "ddp" / "metrics.jsonl", "summary")[0]
    assert final["val_loss"] == pytest.approx(setup["val_loss"], rel=1e-5)  # eval sharded over ranks, sums all-reduced


def test_ddp_with_the_speedrun_recipe_matches_one(tmp_path: Path, tiny_data: Path) -> None:
    """text_speedrun's recipe (Muon, WSD, embeddings at their own rate, zero-initialised untied head) on 2 DDP processes
    takes the steps of 1 process: Muon orthogonalises the all-reduced gradient, the same matrix on every rank."""
    recipe = load_config("text_speedrun").optim
    optim = {k: getattr(recipe, k) for k in ("name", "lr", "warmup_steps", "schedule", "decay_fraction", "min_lr_ratio", "embed_lr_mult")}
    sections = dict(SECTIONS, optim=optim, model={"tie_embeddings": False, "zero_init_head": True})
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_config(tmp_path, tiny_data, **sections).to_dict()))
    ref = tiny_config(tmp_path, tiny_data, run={"name": "reference"}, **sections)
    train(ref, log=lambda _m: None)
    torch.set_num_threads(2)
    proc = subprocess.run([sys.executable, *_largo({"config": config}, "ddp", "--nproc", "2", "--parallel.strategy", "ddp")],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    _check(proc, proc.stdout + proc.stderr)
    assert "parallel: ddp" in proc.stdout and "world 2" in proc.stdout
    _assert_same_run(tmp_path / "runs" / "ddp", ref.run_dir)


def test_fsdp_on_two_nodes_matches_one_and_halves_the_state(setup: dict, fsdp_two_nodes: Path) -> None:
    _assert_same_run(fsdp_two_nodes, setup["reference"])
    final = read_metrics(fsdp_two_nodes / "metrics.jsonl", "summary")[0]
    assert final["val_loss"] == pytest.approx(setup["val_loss"], rel=1e-5)
    sharded = read_metrics(fsdp_two_nodes / "metrics.jsonl", "memory")[0]
    whole = read_metrics(setup["reference"] / "metrics.jsonl", "memory")[0]
    for key in ("rank_param_bytes", "rank_optim_bytes"):
        assert len(sharded[key]) == 2
        for rank_bytes in sharded[key]:
            assert rank_bytes == pytest.approx(whole[key][0] / 2, rel=0.02), key
    dcp = fsdp_two_nodes / "checkpoints" / "step_0000003" / "dcp"
    assert (dcp / "index.json").is_file() and not (dcp / ".metadata").exists()  # largo's JSON index, never DCP's pickle


def test_export_gathers_a_sharded_checkpoint_into_one_safetensors(setup: dict, fsdp_two_nodes: Path) -> None:
    out = setup["root"] / "fsdp_export"
    assert main(["export", str(fsdp_two_nodes), "--format", "safetensors", str(out)]) == 0
    exported, reference = load_file(str(out / "model.safetensors")), _weights(setup["reference"])
    assert exported.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(exported[k], reference[k], rtol=1e-4, atol=1e-6)


def test_sharded_checkpoint_resumes_on_one_process(setup: dict, fsdp_two_nodes: Path, tiny_data: Path) -> None:
    run = setup["runs"] / "two_to_one"
    shutil.copytree(fsdp_two_nodes, run)
    cfg = tiny_config(setup["root"], tiny_data, run={"name": "two_to_one"}, **SECTIONS)
    train(cfg, resume=str(run / "checkpoints" / "step_0000003"), log=lambda _m: None)
    torch.set_num_threads(2)
    _assert_same_run(run, setup["reference"])  # steps 1-3 from the 2-rank run, 4-6 resumed on 1 rank


def test_one_process_checkpoint_resumes_sharded_on_two(setup: dict) -> None:
    run = setup["runs"] / "one_to_two"
    shutil.copytree(setup["reference"], run)
    proc = subprocess.run([sys.executable, *_largo(setup, "one_to_two", "--nproc", "2", "--parallel.strategy", "fsdp",
                                                   "--resume", str(run / "checkpoints" / "step_0000003"))],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    _check(proc, proc.stdout + proc.stderr)
    assert "resumed from" in proc.stdout
    _assert_same_run(run, setup["reference"])
    assert (run / "checkpoints" / "step_0000006" / "dcp").is_dir()  # written sharded from here on


def test_trainer_on_two_processes_matches_one(setup: dict) -> None:
    """largo.Trainer under torchrun: each rank trains on its own batches; the same global batch gives the 1-process run."""
    worker = str(Path(__file__).with_name("_trainer_worker.py"))
    one, two = setup["root"] / "trainer_one", setup["root"] / "trainer_two"
    proc = subprocess.run([sys.executable, worker, str(one)], env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    _check(proc, proc.stdout + proc.stderr)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", worker, str(two)],
                          env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    _check(proc, proc.stdout + proc.stderr)
    got, want = _losses(two), _losses(one)
    assert len(got) == len(want) == 24
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=0)
    a, b = (load_file(str(run / "checkpoints" / "step_0000024" / "model.safetensors")) for run in (two, one))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    e2, e1 = (json.loads(Path(f"{run}.eval.json").read_text()) for run in (two, one))
    assert e2["samples"] == e1["samples"] == 64 and e2["accuracy"] == e1["accuracy"]
    assert e2["loss"] == pytest.approx(e1["loss"], rel=1e-5)  # sharded over the ranks, sums all-reduced


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among processes started with LARGO_TEST_JOB=marker."""
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"LARGO_TEST_JOB={marker}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def _wait_for(condition, job: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not condition() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert condition(), log.read_text()[-3000:]


def _long_job(setup: dict, name: str, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A 2-rank DDP job that trains until stopped, once it has logged a step: (job, its marker)."""
    marker = uuid.uuid4().hex
    job = subprocess.Popen([sys.executable, *_largo(setup, name, "--nproc", "2", "--parallel.strategy", "ddp",
                                                    "--train.steps", "100000", *args)],
                           env=_env(LARGO_TEST_JOB=marker), stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    _wait_for(lambda: read_metrics(setup["runs"] / name / "metrics.jsonl", "train"), job, log)  # training is under way
    return job, marker


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")


@needs_proc
def test_killed_rank_restarts_from_checkpoint_then_ends_the_job_naming_it(setup: dict) -> None:
    timeout_s, log = 20, setup["root"] / "killed.log"
    job, marker = _long_job(setup, "killed", log, "--max-restarts", "1", "--checkpoint.every", "2",
                            "--parallel.timeout_s", str(timeout_s))
    _wait_for(lambda: (setup["runs"] / "killed" / "checkpoints" / "latest").is_file(), job, log)
    first = _rank_pid(marker, 1)
    os.kill(first, signal.SIGKILL)  # torchrun restarts both ranks, which resume from the newest checkpoint
    _wait_for(lambda: "resumed from" in log.read_text() and _rank_pid(marker, 1) not in (None, first), job, log)
    os.kill(_rank_pid(marker, 1), signal.SIGKILL)  # no restarts left: the job must end
    job.wait(timeout=timeout_s + 120)  # the rendezvous timeout ends it; the margin only bounds a hang on a busy machine
    assert job.returncode != 0
    out = log.read_text()
    root_cause = out[out.rindex("Root Cause"):]  # torchrun's summary
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", root_cause) and "SIGKILL" in root_cause, out[-3000:]


@needs_proc
def test_hung_rank_times_out_naming_it(setup: dict) -> None:
    timeout_s, log = 4, setup["root"] / "hung.log"
    job, marker = _long_job(setup, "hung", log, "--checkpoint.every", "0", "--parallel.timeout_s", str(timeout_s))
    pid = _rank_pid(marker, 1)
    os.kill(pid, signal.SIGSTOP)  # frozen: alive to the OS, silent to its peers
    stopped_at, line = time.monotonic(), None
    try:
        while line is None and job.poll() is None and time.monotonic() - stopped_at < timeout_s + 120:  # a hang fails here
            time.sleep(0.2)
            line = next((x for x in log.read_text().splitlines() if x.startswith("largo: error (rank 0)")), None)
        assert line is not None and "rank 1 stopped responding" in line, log.read_text()[-3000:]
    finally:
        os.kill(pid, signal.SIGCONT)  # let torchrun's SIGTERM end it at once
        job.wait(timeout=60)
    assert job.returncode != 0
