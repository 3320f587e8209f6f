"""Contender: Hugging Face Trainer with LlamaForCausalLM and the settings of HF's causal-LM example (run_clm.py).

run_clm.py leaves TrainingArguments at their defaults: AdamW (betas 0.9/0.999, eps 1e-8), no weight decay, no
warm-up, linear decay to 0 over max_steps, 8 sequences per device, blocks of consecutive tokens; the learning
rate is the one swept. The model is the peers' shape (common.PEER_MODEL: text_tiny's before it took text_speedrun's recipe) as a Llama (width 256, 4 layers, 4 heads, 2 kv heads,
SwiGLU 704, tied embeddings, context 256). max_steps is what fits the budget at the step time of a few timed
steps of the same model before the Trainer starts; a callback keeps the race clock and stops at the budget.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from largo.models.gpt import GPTConfig
from largo.optional import require

from benchmarks.race.common import SEED, Clock, Corpus, model_shape, parse_args, the_held_out, write_result
from benchmarks.race.heldout import score

BATCH = 8  # TrainingArguments' per_device_train_batch_size default


class Blocks(Dataset):
    """run_clm's group_texts: the train split cut into consecutive blocks of seq_len tokens, labels = inputs."""

    def __init__(self, corpus: Corpus):
        self.corpus = corpus

    def __len__(self) -> int:
        return self.corpus.batches.num_windows

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, _ = self.corpus.batches.windows([i])
        return {"input_ids": x[0], "labels": x[0]}


def llama(m: GPTConfig, vocab: int) -> torch.nn.Module:
    """The model's shape as LlamaForCausalLM."""
    transformers = require("transformers", "the HF Trainer contender")
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=m.dim, intermediate_size=m.hidden, num_hidden_layers=m.n_layers,
                                   num_attention_heads=m.n_heads, num_key_value_heads=m.kv_heads, max_position_embeddings=m.max_seq_len,
                                   rms_norm_eps=m.norm_eps, rope_theta=m.rope_theta, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg)


def step_time(model: torch.nn.Module, data: Blocks, lr: float, bf16: bool) -> float:
    """Median seconds of a forward, backward and AdamW step of a copy of the model (the first one warms up), under the
    Trainer's autocast: an fp32 probe of a bf16 run made max_steps too small and the schedule reach 0 half-way."""
    probe = copy.deepcopy(model)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr)
    batch = torch.stack([data[i]["input_ids"] for i in range(BATCH)])
    times = []
    for _ in range(4):
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = probe(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    a = parse_args(__doc__.splitlines()[0])
    transformers = require("transformers", "the HF Trainer contender")
    t0 = time.perf_counter()
    transformers.set_seed(SEED)
    held = the_held_out(a.held_bytes)
    shape = model_shape(a)
    seq_len = shape.max_seq_len
    corpus = Corpus(Path(a.data), seq_len)
    model, data = llama(shape, corpus.vocab_size), Blocks(corpus)
    max_steps = max(2, int(a.budget_s / step_time(model, data, a.lr, a.precision == "bf16")) + 1)

    def evaluate() -> float:
        model.eval()
        bpb = score(lambda x: model(input_ids=x).logits, held, corpus.encode, corpus.eot, seq_len)
        model.train()
        return bpb

    clock = Clock(a.budget_s, a.points, evaluate)

    class RaceClock(transformers.TrainerCallback):
        """Times each optimizer step for the race and ends training when the budget is spent."""

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
            clock.start()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003, ANN201
            control.should_training_stop = clock.stop()

    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(output_dir=out, max_steps=max_steps, learning_rate=a.lr, per_device_train_batch_size=BATCH,
                                              save_strategy="no", report_to=[], logging_steps=max(1, max_steps // 10), seed=SEED,
                                              use_cpu=True, bf16=a.precision == "bf16", dataloader_num_workers=0)
        trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[RaceClock()])
        setup_s = time.perf_counter() - t0
        trainer.train()
    if not clock.points or clock.points[-1][0] != round(clock.train_s, 3):
        clock.points.append([round(clock.train_s, 3), evaluate()])
    write_result(a, "hf_trainer_llama", clock, params=sum(p.numel() for p in model.parameters()), setup_s=setup_s,
                 max_steps=max_steps)


if __name__ == "__main__":
    main()
