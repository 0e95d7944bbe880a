"""Load new weights into a live model in place: a state dict, (name, tensor) pairs, or an HF folder.

Parameters are updated with ``copy_`` so their storage (and every CUDA graph that reads it) stays
valid. A tensor that already *is* the model's parameter (same storage, as when the trainer shares
the model object) is skipped, so a colocated update costs nothing. Names are the HF model's
(``model.layers.0.self_attn.q_proj.weight``); every name and shape is checked before anything is
written.

Example::

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> load_weights(m, {"weight": torch.zeros(2, 2)})
    1
    >>> float(m.weight.detach().abs().sum())
    0.0
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

WeightsSource = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]] | str | os.PathLike | None


def load_weights(model: torch.nn.Module, weights: WeightsSource) -> int:
    """Copy ``weights`` into ``model``'s parameters and buffers. Returns the number of tensors copied."""
    if weights is None:
        return 0
    targets: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers(remove_duplicate=False)))
    if isinstance(weights, (str, os.PathLike)):
        files = _weight_files(Path(weights))
        _check(targets, ((name, shape) for f in files for name, shape in _file_shapes(f)))
        copied = 0
        for f in files:
            copied += _copy_all(targets, _file_tensors(f, device=next(model.parameters()).device))
        return copied
    items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    _check(targets, ((name, tuple(t.shape)) for name, t in items))
    return _copy_all(targets, iter(items))


def _check(targets: dict[str, torch.Tensor], shapes: Iterable[tuple[str, tuple[int, ...]]]) -> None:
    unknown, wrong = [], []
    for name, shape in shapes:
        target = targets.get(name)
        if target is None:
            unknown.append(name)
        elif tuple(target.shape) != tuple(shape):
            wrong.append(f"{name}: expected {tuple(target.shape)}, got {tuple(shape)}")
    if wrong:
        raise ValueError("weight shapes do not match the model: " + "; ".join(wrong[:5]))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], list(targets), n=1)
        raise ValueError(
            f"{len(unknown)} weight name(s) are not in the model, e.g. {unknown[0]!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + "; names must be the HF model's own (model.named_parameters())"
        )


@torch.no_grad()
def _copy_all(targets: dict[str, torch.Tensor], items: Iterator[tuple[str, torch.Tensor]]) -> int:
    copied = 0
    for name, tensor in items:
        target = targets[name]
        if tensor.data_ptr() == target.data_ptr() and tensor.dtype == target.dtype and tensor.device == target.device:
            continue  # the very same storage: nothing to do
        target.data.copy_(tensor)
        copied += 1
    return copied


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"weights path {path} is neither a folder nor a file")
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{path} holds no *.safetensors or pytorch_model*.bin weight files")
    return files


def _file_shapes(path: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, tuple(f.get_slice(name).get_shape())
    else:
        for name, t in torch.load(path, map_location="meta", weights_only=True).items():
            yield name, tuple(t.shape)


def _file_tensors(path: Path, device: Any) -> Iterator[tuple[str, torch.Tensor]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    else:
        yield from torch.load(path, map_location=device, mmap=True, weights_only=True).items()
