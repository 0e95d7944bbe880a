"""The supervised warm start: demonstrations trained by the run's own trainer, before the first rollout.

Small models that never stumble on a reward give GRPO nothing to learn from (every group's rewards are
equal). A warm start on demonstrations (DeepSeek-R1's "cold start", arXiv 2501.12948 section 2.3.1; the
SFT stages of verl, NeMo-RL, prime-rl) teaches the format first. Here it is a stage of the same run, on the
same tokens and the same trainer:

* the demonstrations are :class:`~agentrl.types.Sample` records tokenized as the episode loop tokenizes
  (:mod:`agentrl.data.demos`): loss mask 1 on the assistant's tokens only;
* each optimiser step is the trainer's ``train_step`` on a batch of them with **advantage 1** on every
  assistant token and no old log-probabilities, so the ratio is 1 and the clipped policy loss
  ``-min(r A, clip(r) A)`` has the gradient ``-grad log p``: the negative log-likelihood's, token-mean
  aggregated as the run aggregates (``--loss-aggregation``). The torch and the Megatron trainers run it
  unchanged (KL to the reference and the entropy bonus included, when the run has them), and the
  logits are divided by the sampling temperature as in RL, so the warm start fits the distribution the
  engine samples from;
* it uses the run's optimiser and learning-rate schedule: its steps are the run's first optimiser
  steps. A checkpoint saved after it (``--save``, as ``rollout_00000``) is an ordinary checkpoint:
  ``--load`` it and RL resumes exactly as the uninterrupted run goes on.

Not supported: ``--advantage-estimator gae`` (the critic would need value targets for the
demonstrations).

Example::

    metrics = train_sft(trainer, demo_samples(template, load_demos("demos.jsonl")), SftConfig(epochs=2))
    metrics["sft/nll_first"], metrics["sft/nll_last"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from agentrl.utils.flags import blank_path

log = logging.getLogger(__name__)


@dataclass
class SftConfig:
    """Supervised warm start: demonstrations trained before the first rollout (docs/training.md)."""

    FLAGS: ClassVar[dict[str, str]] = {"--sft-data": "data", "--sft-epochs": "epochs",
                                       "--sft-batch-size": "batch_size", "--sft-max-demos": "max_demos"}

    data: str | None = None
    """Demonstrations for a supervised warm start before the first rollout: a JSONL file of {"messages": [...]}
    a line, or 'oracle' (the environment's scripted oracle plays the training prompts)."""
    epochs: int = 1
    """Passes over the demonstrations in the warm start."""
    batch_size: int = 8
    """Demonstrations per optimiser step of the warm start."""
    max_demos: int | None = None
    """Use at most this many demonstrations (with --sft-data oracle: play this many training prompts)."""

    def problems(self) -> list[str]:
        out = [f"{flag} must be >= 1; got {value}" for flag, value in (
            ("--sft-epochs", self.epochs), ("--sft-batch-size", self.batch_size),
            ("--sft-max-demos", 1 if self.max_demos is None else self.max_demos)) if value is None or value < 1]
        if blank := blank_path("--sft-data", self.data):
            out.append(blank)
        elif self.data is not None and self.data != "oracle":
            from pathlib import Path

            if not Path(self.data).expanduser().is_file():
                out.append(f"--sft-data {self.data}: no such file (a JSONL file of demonstrations, or 'oracle')")
            else:  # a bad line is found before the model loads
                from agentrl.data.demos import DemoError, load_demos

                try:
                    load_demos(self.data)
                except DemoError as e:
                    out.append(f"--sft-data: {e}")
                except (OSError, UnicodeDecodeError) as e:
                    out.append(f"--sft-data {self.data}: cannot be read ({e})")
        return out


def sft_batch(samples: Sequence[Any]) -> Any:
    """A :class:`~agentrl.train.batch.RolloutBatch` of demonstrations whose policy-gradient step is a
    log-likelihood step: advantage 1 on the assistant tokens, no rollout log-probabilities (no engine
    sampled them)."""
    from agentrl.train.batch import RolloutBatch

    batch = RolloutBatch.from_samples(samples)
    batch.advantages = batch.loss_mask.clone()  # [N, R]
    batch.rollout_logprobs = None
    return batch


def train_sft(trainer: Any, samples: Sequence[Any], config: SftConfig, *, seed: int = 0,
              use_kl_loss: bool = False, use_tis: bool = False) -> dict[str, float]:
    """``config.epochs`` passes over ``samples`` in shuffled batches of ``config.batch_size``, one optimiser
    step each (``use_kl_loss``: with the reference model's log-probabilities; ``use_tis``: with the
    policy's own as the rollout's, so the importance weights are 1).

    Returns ``sft/`` metrics: ``nll_first`` / ``nll_last`` (mean negative log-likelihood per assistant
    token of the first and the last step, before each step's update, at the sampling temperature;
    trainers that do not report the pass's log-probabilities leave them out), ``steps``, ``demos``,
    ``tokens`` (assistant tokens per epoch), ``time``."""
    import numpy as np

    from agentrl.obs.progress import progress

    if not samples:
        raise ValueError("train_sft needs at least one demonstration")
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    nll: list[float] = []
    steps = 0
    per_epoch = -(-len(samples) // config.batch_size)
    bar = progress(config.epochs * per_epoch, "warm start", unit="step", leave=False)
    for epoch in range(config.epochs):
        order = rng.permutation(len(samples))
        for at in range(0, len(order), config.batch_size):
            batch = sft_batch([samples[int(i)] for i in order[at:at + config.batch_size]])
            if use_kl_loss:
                batch.ref_logprobs = trainer.compute_ref_logprobs(batch)
            if use_tis:
                batch.old_logprobs = batch.rollout_logprobs = trainer.compute_logprobs(batch)
            trainer.train_step(batch, num_steps=1)
            steps += 1
            if batch.old_logprobs is not None:  # the step's own forward pass (the torch trainer fills it)
                nll.append(float(-(batch.old_logprobs * batch.loss_mask).sum() / batch.loss_mask.sum().clamp(min=1)))
                bar.set_postfix(nll=f"{nll[-1]:.3f}", refresh=False)
            bar.update()
        if nll:
            log.info("warm start: epoch %d of %d, nll %.3f", epoch + 1, config.epochs, nll[-1])
    bar.close()
    metrics = {"sft/steps": float(steps), "sft/demos": float(len(samples)),
               "sft/tokens": float(sum(s.num_generated_tokens for s in samples)),
               "sft/time": time.perf_counter() - start}
    if nll:
        metrics |= {"sft/nll_first": nll[0], "sft/nll_last": nll[-1]}
    return metrics
