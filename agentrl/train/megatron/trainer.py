"""The Megatron-core trainer: :class:`~agentrl.train.base.Trainer` on a megatron-core ``GPTModel``.

Same batches (:class:`~agentrl.train.batch.RolloutBatch`), same objective
(:func:`agentrl.algo.rl_objective`), same ``train/`` metrics as the torch backend; the model is built from the HF config
(``model.py``), loaded and exported through ``convert.py``, and run under megatron-core's
``parallel_state`` with tensor, pipeline and data parallelism:

* every rank is handed the same full batch; each data-parallel rank trains on its share of the
  samples (balanced by tokens), in micro-batches of at most ``max_tokens_per_gpu`` tokens,
  packed (``thd``) or padded;
* micro-batches run through megatron-core's pipeline schedule (``get_forward_backward_func``),
  so pipeline parallelism uses the same code as a single stage;
* losses are divided by the global denominator of the step and gradients are summed over
  data-parallel ranks, so any split gives the full-batch loss of the torch backend;
* log-probs and entropies are computed vocabulary-parallel (``logprobs.py``).

Collective calls: every rank must call the same methods in the same order (``weights()``
included: consume the iterator on all ranks).

Example::

    trainer = MegatronTrainer("tiny-qwen2", TrainConfig(lr=1e-5), MegatronTrainerConfig())
    batch = RolloutBatch.from_samples(samples)
    batch.old_logprobs = trainer.compute_logprobs(batch)
    batch.advantages = algo.get_advantage_estimator("grpo")(batch.rewards, batch.group_ids, batch.loss_mask)
    metrics = trainer.train_step(batch)
    engine.update_weights(trainer.weights())
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agentrl import algo
from agentrl.train.base import TrainConfig
from agentrl.train.megatron.config import MegatronTrainerConfig
from agentrl.train.batch import RolloutBatch, micro_batches, optimizer_steps
from agentrl.train.megatron._compat import require_megatron

require_megatron()

from agentrl.train.megatron.batching import (  # noqa: E402
    ModelInputs,
    build_inputs,
    gather_response,
    pack_micro_batches,
    split_data_parallel,
)
from agentrl.train.megatron.convert import export_hf_weights, load_hf_weights, save_hf_checkpoint  # noqa: E402
from agentrl.train.megatron.critic import build_critic, load_critic_backbone  # noqa: E402
from agentrl.train.megatron.logprobs import vocab_parallel_logprobs  # noqa: E402
from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model  # noqa: E402
from agentrl.train.megatron.optim import (  # noqa: E402
    MegatronOptimizer,
    TorchOptimizer,
    lr_factor,
    resolve_optimizer,
)
from agentrl.train.megatron.parallel import init_parallel  # noqa: E402
from agentrl.train.megatron.schedule import (  # noqa: E402
    all_reduce_data_parallel,
    broadcast_from_last_stage,
    combine_metrics,
    run_schedule,
)
from agentrl.train.megatron.shape import ModelShape  # noqa: E402

log = logging.getLogger(__name__)

class MegatronTrainer:
    """Implements the ``Trainer`` protocol with megatron-core (see the module docstring)."""

    def __init__(self, model: str, config: TrainConfig | None = None,
                 megatron: MegatronTrainerConfig | None = None, *, tokenizer: Any = None,
                 device: str | None = None, total_steps: int | None = None) -> None:
        from transformers import AutoConfig

        from agentrl.models import resolve_model_path

        self.config = config = config or TrainConfig()
        self.mconfig = mcfg = megatron or MegatronTrainerConfig()
        self.objective = algo.ObjectiveConfig.from_train_config(config)  # validates the loss settings
        if config.lora_rank > 0:
            raise ValueError("the Megatron backend does not support LoRA; use --trainer torch for lora_rank > 0")
        _check_device(device)
        self.model_path = _local_folder(resolve_model_path(model))
        self.hf_config = AutoConfig.from_pretrained(self.model_path)
        self.shape = ModelShape.from_hf(self.hf_config)
        self.layout = init_parallel(mcfg.tensor_parallel, mcfg.pipeline_parallel, seed=config.seed + 1234)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
        dtype = mcfg.dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
        recompute = mcfg.recompute or ("full" if config.gradient_checkpointing else "none")
        self.model_options = MegatronModelConfig(
            dtype=dtype, attention=mcfg.attention, recompute=recompute,
            sequence_parallel=mcfg.sequence_parallel, vocab_multiple=mcfg.vocab_multiple, fusions=mcfg.fusions)
        self._tokenizer = tokenizer
        self.total_steps = total_steps
        self.steps = 0
        torch.manual_seed(config.seed)

        policy = self._build(build_gpt_model)
        load_hf_weights(policy, self.shape, self.model_path)
        kind = resolve_optimizer(mcfg.optimizer, self.layout.data_parallel * self.layout.pipeline_parallel)
        opt_cls = MegatronOptimizer if kind == "megatron" else TorchOptimizer
        self.optimizer = opt_cls(policy, config, lr=config.lr * self._lr_factor(0),
                                 distributed=mcfg.distributed_optimizer)
        self.model = self.optimizer.model  # DDP-wrapped (megatron) or the GPTModel itself (torch)
        self.policy = policy

        self.ref_model = None
        if config.use_kl_loss:
            self.ref_model = self._build(build_gpt_model).requires_grad_(False).eval()
            load_hf_weights(self.ref_model, self.shape, self.model_path)
            if config.ref_on_cpu and torch.cuda.is_available():
                self.ref_model.to("cpu")
        self.critic = self.critic_optimizer = None
        if config.use_critic:
            critic = self._build(build_critic)
            load_critic_backbone(critic, self.shape, self.model_path)
            self.critic_optimizer = opt_cls(critic, config, lr=config.critic_lr,
                                            distributed=mcfg.distributed_optimizer)
            self.critic = self.critic_optimizer.model
        log.info("Megatron trainer: %s, TP=%d PP=%d DP=%d, %s, attention=%s, optimizer=%s",
                 self.shape.family, self.layout.tensor_parallel, self.layout.pipeline_parallel,
                 self.layout.data_parallel, dtype, mcfg.attention, kind)

    def _build(self, builder):
        # calculate_per_token_loss: the schedule leaves our (already normalised) losses alone
        # and megatron-core's DDP sums gradients over data-parallel ranks.
        return builder(self.shape, self.model_options, calculate_per_token_loss=True)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from agentrl.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_path)
        return self._tokenizer

    # -- forward passes ------------------------------------------------------------------
    def compute_logprobs(self, batch: RolloutBatch) -> Tensor:
        """``[N, R]`` response log-probs under the current policy (float32, CPU, 0 where masked)."""
        return self._per_token(self.model, batch, self._logprob_of)

    def compute_ref_logprobs(self, batch: RolloutBatch) -> Tensor:
        if self.ref_model is None:
            raise RuntimeError("no reference model: construct the trainer with TrainConfig(use_kl_loss=True)")
        offload = self.config.ref_on_cpu and torch.cuda.is_available()
        if offload:
            self.ref_model.to(self.device)
        try:
            return self._per_token(self.ref_model, batch, self._logprob_of)
        finally:
            if offload:
                self.ref_model.to("cpu")

    def compute_values(self, batch: RolloutBatch) -> Tensor:
        if self.critic is None:
            raise RuntimeError("no value model: set TrainConfig(use_critic=True) for the gae estimator")
        return self._per_token(self.critic, batch, _value_of)

    def _logprob_of(self, inputs: ModelInputs, logits: Tensor) -> Tensor:
        lp, _ = vocab_parallel_logprobs(logits, inputs.targets, vocab_size=self.shape.vocab_size,
                                        temperature=self._temperature)
        return gather_response(lp, inputs)

    @property
    def _temperature(self) -> float:
        t = self.config.rollout_temperature
        return t if t > 0 else 1.0

    @torch.no_grad()
    def _per_token(self, model, batch: RolloutBatch, value_of: Callable[[ModelInputs, Tensor], Tensor]) -> Tensor:
        """Run ``model`` over this rank's share of ``batch``; ``[N, R]`` on every rank (CPU)."""
        out = torch.zeros(batch.loss_mask.shape, dtype=torch.float32, device=self.device)
        rows: list[tuple[Tensor, int, Tensor]] = []

        def loss_of(mb: RolloutBatch, idx: list[int], inputs: ModelInputs, output: Tensor):
            values = value_of(inputs, output) * mb.loss_mask.to(self.device)
            rows.append((torch.as_tensor(idx, device=self.device), mb.width, values.float()))
            return output.new_zeros(()), {}

        was_training = model.training
        model.eval()
        try:
            self._schedule(model, batch, loss_of, forward_only=True)
        finally:
            model.train(was_training)
        for idx, width, values in rows:
            out[idx, batch.width - width:] = values
        all_reduce_data_parallel(out, self.layout)
        broadcast_from_last_stage(out, self.layout)
        return out.cpu()

    def _schedule(self, model, batch: RolloutBatch, loss_of, *, forward_only: bool) -> list[dict[str, float]]:
        """This rank's micro-batches through megatron-core's pipeline schedule.

        ``loss_of(mb, idx, inputs, output) -> (loss, metrics)`` runs on the last stage.
        """
        groups = self._micro_batches(batch)
        if not groups:
            return []
        pad = self.layout.tensor_parallel if self.model_options.sequence_parallel else 1
        items = []
        for idx in groups:
            mb = batch.select(idx)
            inputs = build_inputs(mb.samples, mb.width, pack=self.mconfig.pack_sequences, pad_multiple=pad)
            items.append((mb, idx, inputs.to(self.device)))

        return run_schedule(model, items, loss_of, forward_only=forward_only)

    def _micro_batches(self, batch: RolloutBatch) -> list[list[int]]:
        """Indices (into ``batch``) of this data-parallel rank's micro-batches."""
        share = split_data_parallel(batch.samples, self.layout.data_parallel)[self.layout.dp_rank]
        if not share:
            return []
        samples = [batch.samples[i] for i in share]
        budget = self.config.max_tokens_per_gpu
        split = pack_micro_batches if self.mconfig.pack_sequences else micro_batches
        return [[share[j] for j in group] for group in split(samples, budget)]

    # -- training --------------------------------------------------------------------------
    def needs_old_logprobs(self, num_steps: int) -> bool:
        """Whether the loop must compute old logprobs before ``train_step(batch, num_steps)``:
        only for several optimiser steps, or for TIS, which reads them before training."""
        return num_steps > 1 or self.config.use_tis

    def train_step(self, batch: RolloutBatch, num_steps: int = 1) -> dict[str, float]:
        """``num_steps`` optimiser steps, each over ``len(batch) / num_steps`` samples.

        With ``batch.old_logprobs`` unset and one step, this forward pass's detached log-probs are
        the old ones (ratio 1), as in the torch backend.
        """
        if batch.advantages is None:
            raise ValueError("train_step needs batch.advantages set")
        if batch.old_logprobs is None and num_steps > 1:
            raise ValueError("several optimiser steps per batch need batch.old_logprobs (compute_logprobs) set")
        if self.config.use_kl_loss and batch.ref_logprobs is None:
            raise ValueError("use_kl_loss is on but batch.ref_logprobs is not set")
        if self.critic is not None and (batch.values is None or batch.returns is None):
            raise ValueError("use_critic is on but batch.values / batch.returns are not set")
        steps = [self._optimizer_step(batch.select(idx)) for idx in optimizer_steps(len(batch), num_steps)]
        return algo.mean_over_steps(steps)

    def _optimizer_step(self, batch: RolloutBatch) -> dict[str, float]:
        cfg = self.config
        denom = algo.aggregation_denominator(batch.loss_mask, cfg.loss_aggregation).to(self.device)
        n_tokens = float(batch.loss_mask.sum())

        def loss_of(mb: RolloutBatch, idx: list[int], inputs: ModelInputs, logits: Tensor):
            dev = lambda t: None if t is None else t.to(self.device)  # noqa: E731
            lp, ent = vocab_parallel_logprobs(
                logits, inputs.targets, vocab_size=self.shape.vocab_size, temperature=self._temperature,
                with_entropy=True, entropy_grad=bool(cfg.entropy_coef))
            assert mb.advantages is not None and ent is not None  # checked in train_step; with_entropy=True
            loss, m = algo.rl_objective(
                gather_response(lp, inputs), mb.advantages.to(self.device), mb.loss_mask.to(self.device),
                config=self.objective,
                old_logprobs=dev(mb.old_logprobs), rollout_logprobs=dev(mb.rollout_logprobs),
                ref_logprobs=dev(mb.ref_logprobs), entropy=gather_response(ent, inputs), denominator=denom,
                num_tokens=n_tokens)
            return loss, {k: float(v) for k, v in m.items()}  # parts: combine_metrics adds them up

        self.model.train()
        self.optimizer.zero_grad()
        self.optimizer.set_lr(cfg.lr * self._lr_factor(self.steps))
        per_mb = self._schedule(self.model, batch, loss_of, forward_only=False)
        metrics = combine_metrics(per_mb, self.layout)
        metrics["grad_norm"] = self.optimizer.step()
        metrics["lr"] = cfg.lr * self._lr_factor(self.steps + 1)
        if self.critic is not None:
            metrics.update(self._critic_step(batch, denom))
        self.steps += 1
        return {f"train/{k}": v for k, v in metrics.items()}

    def _critic_step(self, batch: RolloutBatch, denom: Tensor) -> dict[str, float]:
        assert self.critic is not None and self.critic_optimizer is not None  # called only with a critic
        if batch.values is None or batch.returns is None:
            raise ValueError("the critic's step needs batch.values and batch.returns (gae)")

        def loss_of(mb: RolloutBatch, idx: list[int], inputs: ModelInputs, output: Tensor):
            assert mb.values is not None and mb.returns is not None  # checked above, kept by select()
            loss, m = algo.value_objective(_value_of(inputs, output), mb.values.to(self.device),
                                           mb.returns.to(self.device), mb.loss_mask.to(self.device),
                                           config=self.objective, denominator=denom)
            return loss, {k: float(v) for k, v in m.items()}

        self.critic.train()
        self.critic_optimizer.zero_grad()
        per_mb = self._schedule(self.critic, batch, loss_of, forward_only=False)
        metrics = combine_metrics(per_mb, self.layout)
        self.critic_optimizer.step()
        return {"value_loss": metrics.get("value_loss", 0.0)}

    def _lr_factor(self, step: int) -> float:
        return lr_factor(self.config, step, self.total_steps)

    # -- weights and checkpoints ---------------------------------------------------------------
    def weights(self) -> Iterator[tuple[str, Tensor]]:
        """Hugging Face-named full tensors of the policy (TP gathered, PP broadcast). Collective."""
        yield from export_hf_weights(self.policy, self.shape, gather_pipeline=True)

    def export_hf(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face model folder (weights, config, tokenizer). Collective; rank 0 writes."""
        save_hf_checkpoint(self.policy, self.shape, path, hf_config=self.hf_config)
        if torch.distributed.get_rank() == 0:
            self.tokenizer.save_pretrained(path)

    def save(self, path: str | os.PathLike) -> None:
        """HF export under ``path/model``, optimizer / critic state per model-parallel rank, and the optimizer's
        moments in the HF layout (``reshard.py``: a resume on another layout reads those). Collective."""
        from agentrl.train.megatron.reshard import save_hf_optimizer_state, write_layout
        from agentrl.train.torch_trainer import rng_state

        path = Path(path)
        self.export_hf(path / "model")
        path.mkdir(parents=True, exist_ok=True)
        main = torch.distributed.get_rank() == 0
        save_hf_optimizer_state(self.policy, self.shape, self.optimizer, path, is_main=main)
        if main:
            write_layout(path, self.layout, self.optimizer)
        tag = self._rank_tag()
        self.optimizer.save(path, tag, write=self.layout.dp_rank == 0)
        if self.layout.dp_rank == 0:
            state: dict[str, Any] = {"steps": self.steps, "rng": rng_state()}
            if self.critic is not None:
                state["critic"] = {k: v for k, v in self._critic_module().state_dict().items()
                                   if not k.endswith("_extra_state")}
            torch.save(state, path / f"trainer_{tag}.pt")
        if self.critic_optimizer is not None:
            self.critic_optimizer.save(path, f"critic_{tag}", write=self.layout.dp_rank == 0)
        torch.distributed.barrier()

    def load(self, path: str | os.PathLike) -> None:
        """Resume from :meth:`save`: on the same layout from each rank's shard, on another one (TP, PP or DP
        changed) from the HF-layout weights and moments. Collective."""
        from agentrl.train.megatron.reshard import describe, load_hf_optimizer_state, read_layout
        from agentrl.train.torch_trainer import set_rng_state

        path = Path(path)
        tag = self._rank_tag()
        saved, here = read_layout(path), describe(self.layout, self.optimizer)
        same = saved is None or saved == here
        load_hf_weights(self.policy, self.shape, path / "model")
        self.optimizer.reload_from_model()
        if same:
            self.optimizer.load(path, tag)
        else:
            assert saved is not None  # not same
            _check_reshard(saved, here, path, critic=self.critic is not None)
            log.info("resuming a checkpoint of layout %s on layout %s", saved, here)
            load_hf_optimizer_state(self.policy, self.shape, self.optimizer, path)
            tag = "tp0_pp0"  # steps and RNG state: the same on every rank
        state = torch.load(path / f"trainer_{tag}.pt", map_location="cpu", weights_only=False)
        self.steps = state["steps"]
        if self.critic is not None and self.critic_optimizer is not None and "critic" in state:
            self._critic_module().load_state_dict(state["critic"], strict=False)
            self.critic_optimizer.reload_from_model()
            self.critic_optimizer.load(path, f"critic_{tag}")
        set_rng_state(state["rng"])

    def _rank_tag(self) -> str:
        return f"tp{self.layout.tp_rank}_pp{self.layout.pp_rank}"

    def _critic_module(self):
        from agentrl.train.megatron.convert import unwrap

        return unwrap(self.critic)


def broadcast_batch(batch: RolloutBatch | None, src: int = 0) -> RolloutBatch:
    """``src``'s batch on every rank (a collective; other ranks may pass None).

    ``MegatronTrainer`` expects the same full batch on every rank: a loop that generates rollouts
    on one rank hands them to the others with this before ``compute_logprobs`` / ``train_step``.
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        if batch is None:
            raise ValueError("broadcast_batch: no batch on the only rank")
        return batch
    box = [batch if torch.distributed.get_rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    if box[0] is None:
        raise ValueError(f"broadcast_batch: rank {src} had no batch")
    return box[0]


# -- helpers ---------------------------------------------------------------------------------------
def _check_reshard(saved: dict[str, Any], here: dict[str, Any], path: Path, *, critic: bool) -> None:
    """A checkpoint of another layout resumes only from per-parameter optimiser state (reshard.py)."""
    from agentrl.train.megatron.reshard import STATE_DIR

    def layout(d: dict[str, Any]) -> str:
        return (f"TP {d['tensor_parallel']} x PP {d['pipeline_parallel']} x DP {d['data_parallel']}, "
                f"{d['optimizer']} optimizer{' (distributed)' if d['distributed_optimizer'] else ''}")

    if not (path / STATE_DIR / "meta.json").is_file():
        raise ValueError(f"{path} was saved at {layout(saved)}, whose optimiser state resumes only on that layout "
                         f"(this run: {layout(here)}); resume there, or save with --no-use-distributed-optimizer")
    if critic:
        raise ValueError(f"{path}: a critic's optimiser state resumes only on the layout it was saved on "
                         f"({layout(saved)})")


def _value_of(inputs: ModelInputs, output: Tensor) -> Tensor:
    return gather_response(output[..., 0].float(), inputs)  # [rows, L, 1] -> [b, R]


def _local_folder(path: str) -> str:
    """A hub id becomes its downloaded snapshot (config, tokenizer, safetensors)."""
    if Path(path).is_dir():
        return path
    from huggingface_hub import snapshot_download

    return snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])


def _check_device(device: str | None) -> None:
    """megatron-core assumes CUDA; fail clearly on a CPU-only machine. Under torchrun each rank
    takes the GPU of its ``LOCAL_RANK``; in one process ``device`` (``cuda:k``) picks the GPU."""
    if torch.cuda.is_available():
        if device is not None and torch.device(device).type != "cuda":
            raise ValueError(f"the Megatron backend runs on CUDA; got device {device!r} (use --trainer torch on CPU)")
        if device is not None and torch.device(device).index is not None and "LOCAL_RANK" not in os.environ:
            torch.cuda.set_device(torch.device(device))
        return
    try:
        torch.cuda.current_device()
    except (AssertionError, RuntimeError) as err:
        raise RuntimeError(
            "the Megatron backend needs a CUDA GPU (megatron-core assumes one); on a CPU use the torch "
            "backend (--trainer torch)") from err
