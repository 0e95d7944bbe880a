"""What ``--save-debug-rollout-data`` writes: a training rollout or an evaluation as a dump file.

:class:`RolloutDumper` turns a rollout (every finished episode, kept or dropped) and the batch the
step trained on (advantages, trainer logprobs, entropy) into the records of :mod:`agentrl.obs.dump`.
The batch's tensors are right-aligned ``[N, R]`` (:class:`~agentrl.train.batch.RolloutBatch`), so the
values of an episode with ``n`` response tokens are its row's last ``n`` columns.

Example (the loop, abridged)::

    dumps = RolloutDumper(out, template.tokenizer, max_samples=None)
    ...trainer.train_step(batch)...
    dumps.write_rollout(rollout_id, result, batch)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from agentrl.obs.dump import DUMP_DIR, DumpedEpisode, write_dump
from agentrl.types import Group, Sample

log = logging.getLogger(__name__)

_BATCH_FIELDS = {"advantages": "advantages", "trainer_logprobs": "old_logprobs", "ref_logprobs": "ref_logprobs",
                 "values": "values", "returns": "returns"}
"""Dump field -> RolloutBatch attribute."""


class RolloutDumper:
    """Writes ``rollout_data/rollout_{id}.jsonl.gz`` and ``rollout_data/eval_{step}.jsonl.gz`` in a run folder.

    Args:
        run_dir: the run's ``--output-dir``.
        tokenizer: decodes the token ids of each file once (cached across files), so a dump is read
            without the tokenizer; None leaves the texts out.
        max_samples: at most this many episodes per rollout (``--dump-max-samples-per-rollout``): the
            first ones in group order, so whole groups are kept when it is a multiple of the group size.
    """

    def __init__(self, run_dir: str | Path, tokenizer: Any = None, max_samples: int | None = None) -> None:
        self.dir = Path(run_dir) / DUMP_DIR
        self.tokenizer = tokenizer
        self.max_samples = max_samples
        self._text: dict[int, str] = {}

    def write_rollout(self, rollout_id: int, result: Any, batch: Any = None) -> Path:
        """Every episode of ``result`` (a :class:`~agentrl.rollout.RolloutResult`; its ``finished``
        groups, dropped ones included), with the values of ``batch`` for those it trained on."""
        groups: list[Group] = list(getattr(result, "finished", None) or result.groups)
        samples = sorted((s for g in groups for s in g.samples), key=lambda s: (s.group_id, s.sample_index))
        dumped = samples[:self.max_samples] if self.max_samples is not None else samples
        rows = {id(s): i for i, s in enumerate(batch.samples)} if batch is not None else {}
        episodes = [DumpedEpisode(s, batch_values(batch, rows.get(id(s)))) for s in dumped]
        header = {"kind": "rollout", "rollout_id": rollout_id, "step": rollout_id + 1,
                  "episodes_total": len(samples), "dropped": dict(getattr(result, "dropped", {}) or {})}
        return write_dump(self.dir / f"rollout_{rollout_id:06d}.jsonl.gz", header, episodes, self.token_text(dumped))

    def write_eval(self, step: int, results: dict[str, dict[str, Any]]) -> Path:
        """The episodes of an evaluation (:func:`agentrl.eval.evaluate`'s results) at metrics step ``step``,
        as the records of an evaluation's ``episodes.jsonl`` (with ``task`` and ``row``)."""
        from agentrl.eval.runner import GROUP_ID_STRIDE

        episodes, samples = [], []
        for task, r in results.items():
            for s in r["samples"]:
                row = int(s.metadata.get("prompt_index", s.group_id % GROUP_ID_STRIDE))
                episodes.append(DumpedEpisode(s, {"task": task, "row": row}))
                samples.append(s)
        header = {"kind": "eval", "step": step, "tasks": sorted(results)}
        return write_dump(self.dir / f"eval_{step:06d}.jsonl.gz", header, episodes, self.token_text(samples))

    def token_text(self, samples: Iterable[Sample]) -> dict[int, str]:
        """The text of every token id of ``samples``, each decoded alone."""
        if self.tokenizer is None:
            return {}
        ids = {t for s in samples for part in (s.prompt_ids, s.response_ids) for t in part}
        missing = sorted(ids - self._text.keys())
        if missing:
            try:
                self._text.update(zip(missing, decode_each(self.tokenizer, missing)))
            except Exception as e:  # a dump without texts is still a dump (the viewer shows the ids)
                log.warning("rollout dump: cannot decode token texts (%s); the dump holds ids only", e)
                self.tokenizer = None
                return {}
        return {t: self._text[t] for t in ids}


def batch_values(batch: Any, row: int | None) -> dict[str, Any]:
    """``{"kept": ..., "advantages": [...], "trainer_logprobs": [...], "entropy": [...], ...}`` of one row
    of a :class:`~agentrl.train.batch.RolloutBatch` (``{"kept": False}`` when the step did not train on it)."""
    if batch is None or row is None:
        return {"kept": False}
    n = len(batch.samples[row].response_ids)
    out: dict[str, Any] = {"kept": True}
    tensors = {name: getattr(batch, attr, None) for name, attr in _BATCH_FIELDS.items()}
    tensors["entropy"] = (getattr(batch, "extra", None) or {}).get("entropy")
    for name, t in tensors.items():
        if t is not None:
            out[name] = t[row, t.shape[1] - n:].tolist() if n else []
    return out


def decode_each(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token's text on its own (a byte-level piece of a longer character shows as U+FFFD)."""
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    convert = getattr(tokenizer, "convert_tokens_to_string", None)
    if convert is None:
        return [tokenizer.decode([i]) for i in ids]
    return [convert([t]) if t is not None else "" for t in tokens]
