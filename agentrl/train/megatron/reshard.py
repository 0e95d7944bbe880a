"""Optimiser state in the Hugging Face layout, so a checkpoint resumes on another TP / PP / DP layout.

Each rank saves its own optimiser shard (``optimizer_*.pt``), which resumes only on the layout it was
saved on. Beside it, :func:`save_hf_optimizer_state` writes every Adam moment (``exp_avg``,
``exp_avg_sq``) as HF-named full tensors, made by the same conversion as the weights: each
parameter's moment is put in the parameter's place and the model is exported (tensor-parallel
gather, pipeline stages broadcast), then the parameters are put back. :func:`load_hf_optimizer_state`
does the reverse through the weight loader, so each rank of the new layout takes exactly its shard
of every moment. One full moment at a time is held on rank 0.

Covered: optimisers that keep state per parameter (torch's AdamW fallback, megatron-core's optimiser
without ``--use-distributed-optimizer``). The distributed optimiser keeps slices of flat buffers per
data-parallel rank; its checkpoints resume on their own layout only, and a different one is refused
with a message saying so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from agentrl.train.megatron.convert import export_hf_weights, load_hf_weights

STATE_DIR = "optimizer_hf"


@contextmanager
def _params_hold(states: dict[torch.nn.Parameter, dict[str, Any]], kind: str) -> Iterator[None]:
    """Every parameter's ``.data`` is its ``kind`` moment inside the block (reads and writes go to the moment)."""
    saved = {p: p.data for p in states}
    try:
        for p, st in states.items():
            p.data = st[kind]
        yield
    finally:
        for p, data in saved.items():
            p.data = data


def save_hf_optimizer_state(policy: torch.nn.Module, shape: Any, optimizer: Any, folder: Path, *,
                            is_main: bool) -> bool:
    """Write the moments under ``folder/optimizer_hf`` (rank ``is_main``); False when the optimiser keeps no
    per-parameter state (the distributed optimiser) or has not stepped yet. Collective."""
    states = optimizer.param_states()
    if states is None:
        return False
    states = {p: st for p, st in states.items() if "exp_avg" in st}
    if not states:
        return False
    from safetensors.torch import save_file

    kinds = [k for k in ("exp_avg", "exp_avg_sq") if k in next(iter(states.values()))]
    out = folder / STATE_DIR
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        with _params_hold(states, kind):
            tensors = {name: t.detach().to("cpu").contiguous() for name, t in
                       export_hf_weights(policy, shape, gather_pipeline=True)}
        if is_main:
            save_file(tensors, str(out / f"{kind}.safetensors"))
    step = next(iter(states.values())).get("step", 0)
    if is_main:
        (out / "meta.json").write_text(json.dumps({"kinds": kinds, "step": float(step)}))
    return True


def load_hf_optimizer_state(policy: torch.nn.Module, shape: Any, optimizer: Any, folder: Path) -> None:
    """Fill this rank's optimiser state from ``folder/optimizer_hf`` (any layout saved it). Collective."""
    from safetensors.torch import load_file

    meta = json.loads((folder / STATE_DIR / "meta.json").read_text())
    states = optimizer.param_states()
    if states is None:
        raise ValueError("the distributed optimiser cannot take optimiser state saved on another layout")
    for p, st in states.items():  # a fresh optimiser has no state yet: make it in the main copy's shape
        main = st.get("exp_avg", p.data)
        for kind in meta["kinds"]:
            st.setdefault(kind, torch.zeros(main.shape, dtype=torch.float32, device=p.device))
        st["step"] = torch.tensor(meta["step"], dtype=torch.float32)
    for kind in meta["kinds"]:
        moments = load_file(str(folder / STATE_DIR / f"{kind}.safetensors"))
        with _params_hold(states, kind):
            load_hf_weights(policy, shape, moments)


def read_layout(folder: Path) -> dict[str, Any] | None:
    path = folder / "layout.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_layout(folder: Path, layout: Any, optimizer: Any) -> None:
    (folder / "layout.json").write_text(json.dumps(describe(layout, optimizer)))


def describe(layout: Any, optimizer: Any) -> dict[str, Any]:
    return {"tensor_parallel": layout.tensor_parallel, "pipeline_parallel": layout.pipeline_parallel,
            "data_parallel": layout.data_parallel, "optimizer": optimizer.kind,
            "distributed_optimizer": optimizer.param_states() is None}
