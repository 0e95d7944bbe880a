"""The torch trainer: any Hugging Face causal LM, float32 on CPU and bf16 on GPU.

It implements :class:`~agentrl.train.base.Trainer` with AdamW, gradient clipping, warm-up and
decay, micro-batches by token budget accumulated into optimiser steps, optional gradient
checkpointing, LoRA (peft), a frozen reference model (or the LoRA base) for the KL loss, and a
value model for ``gae``. The loss of each micro-batch is :func:`agentrl.algo.rl_objective` (the
Megatron backend calls the same function).

With ``data_parallel=True`` (under ``torchrun``, after
:func:`agentrl.train.distributed.init_distributed`) the models are sharded with FSDP2 over all
ranks and each rank trains on its share of the batch; see :mod:`agentrl.train.distributed`.

Example::

    trainer = TorchTrainer("smollm2-135m-instruct", TrainConfig(lr=1e-5))
    batch = RolloutBatch.from_samples(samples)
    batch.old_logprobs = trainer.compute_logprobs(batch)
    batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
    metrics = trainer.train_step(batch)
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from agentrl import algo
from agentrl.train.base import TrainConfig
from agentrl.train.batch import RolloutBatch, left_padded_inputs, micro_batches, optimizer_steps
from agentrl.train.distributed import (DataParallel, full_state_dicts, full_tensor, full_weights, keyed_by_name,
                                      load_full_state_dicts)
from agentrl.utils.attention import no_cudnn_attention
from agentrl.utils.extras import require

log = logging.getLogger(__name__)


class TorchTrainer:
    def __init__(
        self,
        model: str | nn.Module,
        config: TrainConfig | None = None,
        *,
        tokenizer: Any = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        total_steps: int | None = None,
        data_parallel: bool = False,
    ):
        from agentrl.models import load_model, load_tokenizer

        self.config = config = config or TrainConfig()
        self.objective = algo.ObjectiveConfig.from_train_config(config)  # validates the loss settings
        self.dp = DataParallel() if data_parallel else None  # FSDP2 over all ranks (see agentrl.train.distributed)
        self.device = torch.device(device or (self.dp.device if self.dp else
                                              "cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        # sharded models load on the CPU in float32 (master weights) and compute in self.dtype
        load_dtype, load_device = (torch.float32, torch.device("cpu")) if self.dp else (self.dtype, self.device)
        torch.manual_seed(config.seed)
        hf_model: Any  # a transformers causal LM, used duck-typed (peft and FSDP wrap it below)
        if isinstance(model, nn.Module):
            hf_model = model.to(self.device)
            self.model_path = getattr(model.config, "_name_or_path", "")
        else:
            self.model_path = model
            hf_model = load_model(model, dtype=load_dtype, device=str(load_device), with_tokenizer=False)
        self.model: Any = hf_model
        self.tokenizer = tokenizer or load_tokenizer(self.model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.ref_model: nn.Module | None = None
        if config.use_kl_loss and config.lora_rank == 0:
            self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval()
            if config.ref_on_cpu:
                self.ref_model.to("cpu", torch.float32)
        if config.lora_rank > 0:
            self.model = _apply_lora(self.model, config)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.model.config.use_cache = False
        self.model.train()
        if self.dp is not None:
            self.model = self.dp.shard(self.model, self.dtype)
            if self.ref_model is not None and not config.ref_on_cpu:
                self.ref_model = self.dp.shard(self.ref_model, self.dtype)
        self.critic: ValueModel | None = None
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                           eps=config.adam_eps, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(config, total_steps))
        if config.use_critic:
            self.critic = ValueModel.from_policy(self.model_path, load_dtype, load_device)
            if self.dp is not None:
                self.critic = self.dp.shard(self.critic, self.dtype)
            self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=config.critic_lr,
                                                      betas=(config.adam_beta1, config.adam_beta2))
        self.steps = 0

    # -- forward passes ----------------------------------------------------------------
    def _response_logits(self, model: nn.Module, samples: list, width: int, device: torch.device) -> Tensor:
        """``[b, width, V]`` float32 logits predicting the last ``width`` tokens of each row."""
        ids, attn, pos = left_padded_inputs(samples, self.pad_id, device)
        with no_cudnn_attention(device):  # micro-batch shapes rarely repeat: no cuDNN graph per shape
            out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=width + 1, use_cache=False)
        logits = out.logits[:, :-1, :].float()
        t = self.config.rollout_temperature
        return logits / t if t > 0 and t != 1.0 else logits  # no copy of [b, width, V] when t is 1

    @torch.no_grad()
    def _logprobs(self, model: nn.Module, batch: RolloutBatch, device: torch.device) -> Tensor:
        out = torch.zeros_like(batch.loss_mask)
        for idx, live in self._micro_batches(batch):
            sub = batch.select(idx)
            logits = self._response_logits(model, sub.samples, sub.width, device)
            if not live:  # a padding pass (data parallel): only keeps the ranks' collectives in step
                continue
            labels = left_padded_inputs(sub.samples, self.pad_id, device)[0][:, -sub.width:]
            lp = algo.logprobs_from_logits(logits, labels).cpu() * sub.loss_mask
            out[torch.as_tensor(idx), batch.width - sub.width:] = lp
        return out if self.dp is None else self.dp.sum(out)  # each rank filled its own rows

    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self._logprobs(self.model, batch, self.device)
        finally:
            self.model.train(was_training)

    def compute_ref_logprobs(self, batch: RolloutBatch) -> Tensor:
        if self.config.lora_rank > 0:
            with self.model.disable_adapter():
                return self.compute_logprobs(batch)
        if self.ref_model is None:
            raise RuntimeError("no reference model: construct the trainer with TrainConfig(use_kl_loss=True)")
        device = torch.device("cpu") if self.config.ref_on_cpu else self.device
        return self._logprobs(self.ref_model, batch, device)

    @torch.no_grad()
    def compute_values(self, batch: RolloutBatch) -> Tensor:
        if self.critic is None:
            raise RuntimeError("no value model: set TrainConfig(use_critic=True) for the gae estimator")
        out = torch.zeros_like(batch.loss_mask)
        for idx, live in self._micro_batches(batch):
            sub = batch.select(idx)
            values = self.critic(*left_padded_inputs(sub.samples, self.pad_id, self.device), width=sub.width)
            if live:
                out[torch.as_tensor(idx), batch.width - sub.width:] = values.float().cpu() * sub.loss_mask
        return out if self.dp is None else self.dp.sum(out)

    def _micro_batches(self, batch: RolloutBatch) -> list[tuple[list[int], bool]]:
        """Micro-batches this process runs, ``(row indices, live)``; under data parallelism
        only this rank's rows, padded with dead passes to the same count on every rank."""
        if self.dp is not None:
            return self.dp.micro_batches(batch.samples, self.config.max_tokens_per_gpu)
        return [(idx, True) for idx in micro_batches(batch.samples, self.config.max_tokens_per_gpu)]

    def needs_old_logprobs(self, num_steps: int) -> bool:
        """Whether the loop must compute old logprobs before ``train_step(batch, num_steps)``:
        only for several optimiser steps, or for advantages/TIS that read them before training."""
        return num_steps > 1 or self.config.use_tis

    # -- training -------------------------------------------------------------------------
    def train_step(self, batch: RolloutBatch, num_steps: int = 1) -> dict[str, float]:
        """``num_steps`` optimiser steps, each over ``len(batch) / num_steps`` samples.

        With ``batch.old_logprobs`` unset and one step, the policy before the update is the
        policy of this forward pass: its detached logprobs serve as the old ones (ratio 1),
        which saves the separate no-grad pass (see ``needs_old_logprobs``). A one-step call in one
        process then sets ``batch.old_logprobs`` to them and ``batch.extra["entropy"]`` to the
        pass's entropy per token, for rollout dumps (``--save-debug-rollout-data``).
        """
        if batch.advantages is None:
            raise ValueError("train_step needs batch.advantages set")
        if batch.old_logprobs is None and num_steps > 1:
            raise ValueError("several optimiser steps per batch need batch.old_logprobs (compute_logprobs) set")
        if self.config.use_kl_loss and batch.ref_logprobs is None:
            raise ValueError("use_kl_loss is on but batch.ref_logprobs is not set")
        # one step over every row in order: the step's rows and columns are the batch's
        seen = (torch.zeros_like(batch.loss_mask), torch.zeros_like(batch.loss_mask)) \
            if num_steps == 1 and self.dp is None else None
        steps = [self._optimizer_step(batch.select(idx), seen) for idx in optimizer_steps(len(batch), num_steps)]
        if seen is not None:
            if batch.old_logprobs is None:
                batch.old_logprobs = seen[0]
            batch.extra["entropy"] = seen[1]
        return algo.mean_over_steps(steps)

    def _optimizer_step(self, batch: RolloutBatch, seen: tuple[Tensor, Tensor] | None = None) -> dict[str, float]:
        """One optimiser step; ``seen`` (two ``[N, R]`` tensors), when given, gets the logprobs and
        entropy of the forward pass."""
        cfg = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        plan = self._micro_batches(batch)
        denom = algo.aggregation_denominator(batch.loss_mask, cfg.loss_aggregation)
        n_tokens = float(batch.loss_mask.sum())
        if self.dp is not None:  # counted over this rank's rows, summed over ranks
            denom, n_tokens = self.dp.global_counts(batch, plan, cfg.loss_aggregation)
        parts: list[dict[str, float]] = []
        for idx, live in plan:
            mb = batch.select(idx)
            dev = lambda t: None if t is None else t.to(self.device)  # noqa: E731
            logits = self._response_logits(self.model, mb.samples, mb.width, self.device)
            if not live:  # a padding pass (data parallel): zero gradient, collectives in step
                with no_cudnn_attention(self.device):
                    (logits.sum() * 0.0).backward()
                continue
            labels = left_padded_inputs(mb.samples, self.pad_id, self.device)[0][:, -mb.width:]
            logprobs, entropy = algo.logprobs_and_entropy(logits, labels)  # one chunked pass for both
            assert mb.advantages is not None  # checked in train_step
            loss, m = algo.rl_objective(
                logprobs, mb.advantages.to(self.device), mb.loss_mask.to(self.device), config=self.objective,
                old_logprobs=dev(mb.old_logprobs), rollout_logprobs=dev(mb.rollout_logprobs),
                ref_logprobs=dev(mb.ref_logprobs), entropy=entropy, denominator=denom, num_tokens=n_tokens)
            with no_cudnn_attention(self.device):  # (recomputed forward passes, with checkpointing)
                loss.backward()
            if seen is not None:
                rows, cols = torch.as_tensor(idx), slice(batch.width - mb.width, None)
                seen[0][rows, cols] = logprobs.detach().float().cpu() * mb.loss_mask
                seen[1][rows, cols] = entropy.detach().float().cpu() * mb.loss_mask
            parts.append({k: float(v) for k, v in m.items()})
        metrics = algo.merge_metric_parts(parts)
        if self.dp is not None:
            metrics = self.dp.reduce_metrics(metrics)
        params = [p for p in self.model.parameters() if p.requires_grad]
        clip = cfg.clip_grad if cfg.clip_grad > 0 else float("inf")
        metrics["grad_norm"] = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, clip)))
        self.optimizer.step()
        self.scheduler.step()
        metrics["lr"] = float(self.scheduler.get_last_lr()[0])
        if self.critic is not None:
            metrics.update(self._critic_step(batch, denom))
        self.steps += 1
        return {f"train/{k}": v for k, v in metrics.items()}

    def _critic_step(self, batch: RolloutBatch, denom: Tensor) -> dict[str, float]:
        assert self.critic is not None
        if batch.values is None or batch.returns is None:
            raise ValueError("the critic's step needs batch.values and batch.returns (gae)")
        self.critic_optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for idx, live in self._micro_batches(batch):
            mb = batch.select(idx)
            values = self.critic(*left_padded_inputs(mb.samples, self.pad_id, self.device), width=mb.width).float()
            if not live:
                with no_cudnn_attention(self.device):
                    (values.sum() * 0.0).backward()
                continue
            assert mb.values is not None and mb.returns is not None  # checked above, kept by select()
            loss, m = algo.value_objective(values, mb.values.to(self.device), mb.returns.to(self.device),
                                           mb.loss_mask.to(self.device), config=self.objective, denominator=denom)
            with no_cudnn_attention(self.device):  # (recomputed forward passes, with checkpointing)
                loss.backward()
            total += float(m["value_loss"])
        if self.dp is not None:
            total = float(self.dp.sum(torch.tensor(total, dtype=torch.float64)))
        torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.config.clip_grad or float("inf"))
        self.critic_optimizer.step()
        return {"value_loss": total}

    # -- weights and checkpoints -----------------------------------------------------------
    def weights(self) -> Iterator[tuple[str, Tensor]]:
        """Hugging Face-named tensors of the policy (LoRA merged in, without copying the base).

        Data parallel: full tensors on every rank, gathered one at a time; every rank must
        iterate to the end (the gathers are collective)."""
        if self.dp is not None:
            yield from full_weights(self.model, lora=self.config.lora_rank > 0, dtype=self.dtype)
            return
        if self.config.lora_rank > 0:
            with _merged(self.model):
                for name, t in self.model.get_base_model().state_dict().items():
                    if "lora_" not in name:
                        yield name.replace(".base_layer", ""), t
            return
        yield from self.model.state_dict().items()

    def export_hf(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.dp is not None:  # every rank gathers, rank 0 writes
            self.dp.export_hf(self.model, self.weights(), self.tokenizer, path, lora=self.config.lora_rank > 0)
            return
        if self.config.lora_rank > 0:
            merged = copy.deepcopy(self.model).merge_and_unload()
            merged.save_pretrained(path, safe_serialization=True)
        else:
            self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)

    def save(self, path: str | os.PathLike) -> None:
        """HF export under ``path/model`` plus the full training state in ``path/trainer.pt``."""
        path = Path(path)
        self.export_hf(path / "model")
        model_state, optimizer_state = self._state_dicts(self.model, self.optimizer, bool(self.config.lora_rank))
        state = {
            "model": model_state,
            "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "steps": self.steps,
            "rng": rng_state(),
        }
        if self.critic is not None:
            state["critic"], state["critic_optimizer"] = self._state_dicts(self.critic, self.critic_optimizer, True)
        if self.dp is None or self.dp.is_main:
            torch.save(state, path / "trainer.pt")
        if self.dp is not None:
            self.dp.barrier()

    def load(self, path: str | os.PathLike) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        if state["model"] is not None:
            self._load_state(self.model, None, state["model"])
        else:
            weights: dict[str, Tensor] = {}
            for f in sorted((path / "model").glob("*.safetensors")):
                weights.update(load_file(f))
            missing, unexpected = self._load_state(self.model, None, weights, strict=False)
            missing = [k for k in missing if not _is_tied(self.model, k)]
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                                   f"unexpected {unexpected[:5]}")
        self._load_state(self.model, self.optimizer, None, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = state["steps"]
        if self.critic is not None and "critic" in state:
            self._load_state(self.critic, self.critic_optimizer, state["critic"], state["critic_optimizer"])
        set_rng_state(state["rng"])

    def _state_dicts(self, model: nn.Module, optimizer: torch.optim.Optimizer, with_model: bool):
        """``(model state or None, optimiser state)``; data parallel: full, on rank 0, and the
        optimiser state keyed by parameter name."""
        if self.dp is not None:
            return full_state_dicts(model, optimizer, with_model=with_model)
        return (dict(model.state_dict()) if with_model else None), optimizer.state_dict()

    def _load_state(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict | None,
                    optimizer_state: dict | None = None, strict: bool = True):
        """Load either kind of ``_state_dicts`` output into a plain or a sharded model."""
        if self.dp is not None or keyed_by_name(optimizer_state):
            return load_full_state_dicts(model, optimizer, model_state=model_state, optimizer_state=optimizer_state,
                                         strict=strict)
        keys = None if model_state is None else model.load_state_dict(model_state, strict=strict)
        if optimizer is not None and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        return keys


class ValueModel(nn.Module):
    """A critic: the policy's backbone with a scalar head, ``V(s_t)`` read at the position
    that predicts token ``t`` (so values line up with the response columns)."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, model_path: str, dtype: torch.dtype, device: torch.device) -> "ValueModel":
        from transformers import AutoModel

        from agentrl.models import resolve_model_path

        backbone = AutoModel.from_pretrained(resolve_model_path(model_path), dtype=dtype)
        return cls(backbone, backbone.config.hidden_size).to(device=device, dtype=dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *, width: int) -> Tensor:
        with no_cudnn_attention(input_ids.device):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False).last_hidden_state
        return self.head(hidden[:, -(width + 1):-1]).squeeze(-1)  # [b, width]


def _apply_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    peft = require("peft", extra="lora", what="--lora-rank")
    LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, target_modules="all-linear",
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


@contextlib.contextmanager
def _merged(model: Any):  # a peft model
    model.merge_adapter()
    try:
        yield
    finally:
        model.unmerge_adapter()


def _is_tied(model: nn.Module, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


def _lr_lambda(config: TrainConfig, total_steps: int | None):
    warmup = config.lr_warmup_steps
    decay_steps = config.lr_decay_steps or total_steps
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    if config.lr_decay_style not in ("constant", "cosine", "linear"):
        raise ValueError(f"lr_decay_style must be constant, cosine or linear; got {config.lr_decay_style!r}")

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_decay_style == "constant" or not decay_steps:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, decay_steps - warmup))
        if config.lr_decay_style == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
