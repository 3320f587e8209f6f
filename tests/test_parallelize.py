"""Parallelism pieces inside one process: strategy choice, activation checkpointing, FSDP's bf16 policy, error lines."""

from __future__ import annotations

import copy
import socket

import pytest
import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from largo.config import build_config
from largo.distributed.env import DistEnv
from largo.distributed.health import collective_failure
from largo.distributed.launch import torchrun_command
from largo.distributed.parallelize import apply_ac, apply_fsdp, grad_sync
from largo.errors import ConfigError
from largo.plan import estimate as est
from largo.plan.planner import choose_strategy
from largo.models import build_model
from largo.models.gpt import GPTConfig as ModelConfig

SMALL = ModelConfig(vocab_size=128, dim=32, n_layers=4, n_heads=4, max_seq_len=16)


@pytest.mark.parametrize("section, message", [
    ({"strategy": "zero3"}, "parallel.strategy = 'zero3' is not valid"),
    ({"ac_every": 0}, "parallel.ac_every (0) must be >= 1"),
    ({"timeout_s": 0}, "parallel.timeout_s (0.0) must be > 0"),
    ({"ddp_memory_fraction": 1.5}, "parallel.ddp_memory_fraction (1.5) must be in (0, 1]"),
])
def test_parallel_config_errors_name_the_key(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        build_config({"parallel": section})


def test_auto_strategy_and_its_reason() -> None:
    one, two = DistEnv(), DistEnv(rank=0, world=2)

    def run(**parallel: object):
        return build_config({"model": {"vocab_size": 128, "dim": 32, "n_layers": 4, "n_heads": 4, "max_seq_len": 16},
                             "train": {"global_batch": 4, "micro_batch": 2}, "parallel": parallel})

    assert choose_strategy(run(), positions=16, env=one) == ("none", "1 process")
    assert choose_strategy(run(strategy="fsdp"), positions=16, env=one)[1] == "1 process; parallel.strategy = 'fsdp' needs >= 2 processes"
    strategy, why = choose_strategy(run(), positions=16, env=two)  # a tiny replica: fits
    # the planner's own memory model of this run as a DDP replica decides (one memory model, not a second rule)
    need = est.memory(SMALL, seq_len=16, micro_batch=2, accum_steps=1, layout=est.LAYOUTS["fp32"], strategy="ddp", shards=2).peak
    assert strategy == "ddp" and why.startswith(f"auto: a replica's planned peak {need / 2**30:.2f} GiB")
    strategy, why = choose_strategy(run(ddp_memory_fraction=1e-9), positions=16, env=two)
    assert strategy == "fsdp" and why.endswith("shard it over 2 ranks")
    assert choose_strategy(run(strategy="fsdp"), positions=16, env=two) == ("fsdp", "parallel.strategy")
    with pytest.raises(ConfigError, match="would train 2 unrelated copies"):
        choose_strategy(run(strategy="none"), positions=16, env=two)


def _loss_and_grads(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(tokens).float().logsumexp(-1).mean()
    loss.backward()
    names = {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()}
    return loss.item(), names


@pytest.mark.parametrize("mode, wrapped", [("full", [0, 1, 2, 3]), ("every_k", [0, 2])])
def test_activation_checkpointing_recomputes_without_changing_numbers(mode: str, wrapped: list[int]) -> None:
    torch.manual_seed(0)
    plain = build_model(SMALL)
    ac = apply_ac(copy.deepcopy(plain), mode, every=2)
    assert [i for i, b in enumerate(ac.trunk.blocks) if isinstance(b, CheckpointWrapper)] == wrapped
    assert list(ac.state_dict()) == list(plain.state_dict())  # checkpoints stay interchangeable
    tokens = torch.randint(0, SMALL.vocab_size, (2, 16))
    loss_a, grads_a = _loss_and_grads(plain, tokens)
    loss_b, grads_b = _loss_and_grads(ac, tokens)
    assert loss_a == loss_b
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-6, atol=1e-7)


@pytest.fixture
def one_rank_group():
    """A 1-rank gloo process group in this process, torn down afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield DistEnv(rank=0, world=1)
    finally:
        dist.destroy_process_group()


def test_fsdp_bf16_computes_in_bf16_and_keeps_fp32_shards(one_rank_group: DistEnv) -> None:
    model = apply_fsdp(build_model(SMALL), one_rank_group, bf16=True, reshard_after_forward=True)
    seen = []
    model.trunk.blocks[1].attn.wq.register_forward_hook(lambda mod, _in, _out: seen.append(mod.weight.dtype))
    tokens = torch.randint(0, SMALL.vocab_size, (2, 16))
    with grad_sync(model, enabled=False):  # an accumulation micro-step: FSDP keeps its grads, reduces nothing
        model(tokens).float().mean().backward()
    assert all(p.grad is None for p in model.parameters())
    with grad_sync(model, enabled=True):  # the last micro-step reduces (reduce-scatters) everything accumulated
        model(tokens).float().mean().backward()
    assert seen == [torch.bfloat16, torch.bfloat16]  # gathered for compute in bf16
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the sharded master weights stay fp32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_collective_failures_read_as_one_line_and_others_pass_through() -> None:
    assert collective_failure(ValueError("bad value")) is None
    message = collective_failure(RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer\nmore"))
    assert message is not None and message.startswith("a collective failed: ") and "\n" not in message


def test_nproc_becomes_torchrun_without_relaunching_itself() -> None:
    cmd = torchrun_command(4, ["train", "c.toml", "--nproc", "4", "--max-restarts=2", "--optim.lr", "1e-3"], max_restarts=2)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "--max-restarts=2",
                       "-m", "largo", "train", "c.toml", "--optim.lr", "1e-3"]
