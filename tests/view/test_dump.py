"""Rollout dumps: exact round trips, what the step's batch adds, and a recorded run's files."""

import dataclasses
import gzip
import json
import math

import pytest
import torch

from agentrl.eval.store import RunStore
from agentrl.obs.dump import (DumpedEpisode, dump_files, episode_summary, iter_records, read_dump, read_header,
                              write_dump)
from agentrl.obs.dumper import RolloutDumper, batch_values
from agentrl.rollout import RolloutResult
from agentrl.train.batch import RolloutBatch
from agentrl.types import Group, Sample


def _sample(group_id=0, index=0, n=3, status="ok", reward=1.0, metadata=None, **kw):
    return Sample(prompt_ids=[1, 2], response_ids=list(range(10, 10 + n)), loss_mask=[1] * (n - 1) + [0],
                  rollout_logprobs=[-0.1 * (j + 1) for j in range(n - 1)] + [0.0], reward=reward, status=status,
                  group_id=group_id, sample_index=index, env_id="agentrl/Echo-v0",
                  messages=[{"role": "user", "content": "say \u00e9t\u00e9 \U0001f600"},
                            {"role": "assistant", "content": "ok"}],
                  metadata=metadata or {"nested": {"a": [1, 2.5, None]}}, **kw)


def test_round_trip_is_exact(tmp_path):
    g = torch.Generator().manual_seed(0)
    episodes = []
    for i in range(4):
        s = _sample(i // 2, i % 2, n=5 + i, reward=float(torch.rand(1, generator=g)), rewards={"answer": 1 / 3})
        values = torch.randn(5 + i, generator=g)  # float32, as the batch's tensors
        episodes.append(DumpedEpisode(s, {"kept": True, "advantages": values.tolist(),
                                          "trainer_logprobs": (-values.abs()).tolist(), "entropy": [math.pi] * (5 + i)}))
    path = write_dump(tmp_path / "rollout_000000.jsonl.gz", {"kind": "rollout", "step": 1}, episodes,
                      {10: "a", 11: "\n", 12: "\u00e9"})
    back = read_dump(path)
    assert [e.sample for e in back.episodes] == [e.sample for e in episodes]
    assert [e.extras for e in back.episodes] == [e.extras for e in episodes]
    for e, b in zip(episodes, back.episodes):  # bit for bit, once back in float32
        assert torch.equal(torch.tensor(b.extras["advantages"]), torch.tensor(e.extras["advantages"]))
    assert back.token_text == {10: "a", 11: "\n", 12: "\u00e9"}
    assert back.header["kind"] == "rollout" and back.header["episodes_dumped"] == 4


def test_header_is_the_first_line_and_indexes_every_episode(tmp_path):
    s = _sample(status="failed", error="RuntimeError: boom", reward=0.0)
    path = write_dump(tmp_path / "r.jsonl.gz", {"kind": "rollout", "step": 3},
                      [DumpedEpisode(s, {"kept": False}),
                       DumpedEpisode(_sample(index=1), {"kept": True, "advantages": [2.0, 4.0, 9.0]})])
    with gzip.open(path, "rt") as f:
        first = json.loads(f.readline())
    assert first == read_header(path)
    index = first["index"]
    assert [e["status"] for e in index] == ["failed", "ok"]
    assert index[0]["error"] == "RuntimeError: boom" and index[0]["kept"] is False
    assert index[1]["advantage"] == 3.0  # the mean over trained tokens (the last one has mask 0)
    assert index[1]["preview"].startswith("say")


def test_unknown_fields_of_a_newer_sample_stay_beside_it(tmp_path):
    record = {**_sample().to_dict(), "judge_notes": ["fine", "late"], "kept": True}
    path = tmp_path / "episodes.jsonl"
    path.write_text(json.dumps(record) + "\n")
    back = read_dump(path).episodes[0]
    assert back.extras == {"judge_notes": ["fine", "late"], "kept": True}
    assert back.to_record() == record


def test_an_evaluations_episodes_jsonl_reads_as_a_dump(tmp_path):
    store = RunStore(tmp_path)
    group = Group(7, [_sample(7, 0), _sample(7, 1, reward=0.0)])
    store.append_group("sums", 7, group)
    d = read_dump(store.episodes_path)
    assert [e.sample for e in d.episodes] == group.samples
    assert d.episodes[0].extras["task"] == "sums" and d.episodes[0].extras["row"] == 7
    head = read_header(store.episodes_path)
    assert [e["task"] for e in head["index"]] == ["sums", "sums"] and head["episodes_total"] == 2


def test_batch_values_are_the_rows_last_columns():
    samples = [_sample(n=2), _sample(index=1, n=4)]
    batch = RolloutBatch.from_samples(samples)  # width 4: the first row is left-padded by 2
    batch.advantages = torch.tensor([[9.0, 9.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0]])
    batch.old_logprobs = -batch.advantages
    batch.extra["entropy"] = batch.advantages / 10
    v = batch_values(batch, 0)
    assert v == {"kept": True, "advantages": [1.0, 2.0], "trainer_logprobs": [-1.0, -2.0],
                 "entropy": [pytest.approx(0.1), pytest.approx(0.2)]}
    assert batch_values(batch, 1)["advantages"] == [3.0, 4.0, 5.0, 6.0]
    assert batch_values(batch, None) == {"kept": False}


class _Tokenizer:
    def convert_ids_to_tokens(self, ids):
        return [f"t{i}" for i in ids]

    def convert_tokens_to_string(self, tokens):
        return "".join(tokens)


def test_dumper_writes_every_finished_episode_dropped_ones_too(tmp_path):
    ok = [_sample(0, 0), _sample(0, 1, reward=0.0)]
    failed = _sample(1, 1, status="failed", reward=0.0, error="ValueError: x")
    kept1 = _sample(1, 0)
    finished = [Group(0, ok), Group(1, [kept1, failed])]
    kept = [Group(0, ok), dataclasses.replace(finished[1], samples=[kept1])]  # drop_failed's copy
    result = RolloutResult(groups=kept, finished=finished, dropped={})
    batch = RolloutBatch.from_samples([s for g in kept for s in g.samples])
    batch.advantages = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    path = RolloutDumper(tmp_path, _Tokenizer()).write_rollout(4, result, batch)
    assert path == tmp_path / "rollout_data" / "rollout_000004.jsonl.gz" and dump_files(tmp_path)["rollout"] == [path]
    d = read_dump(path)
    assert [(e.sample.group_id, e.sample.sample_index) for e in d.episodes] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [e.extras["kept"] for e in d.episodes] == [True, True, True, False]
    assert d.episodes[2].extras["advantages"] == [6.0, 7.0, 8.0]
    assert "advantages" not in d.episodes[3].extras and d.episodes[3].sample.status == "failed"
    assert d.header["step"] == 5 and d.header["episodes_total"] == 4
    assert d.token_text[1] == "t1" and d.token_text[12] == "t12"
    small = RolloutDumper(tmp_path / "small", None, max_samples=2).write_rollout(0, result, batch)
    assert [e.sample.group_id for e in read_dump(small).episodes] == [0, 0]  # whole groups, in group order
    assert read_header(small)["episodes_total"] == 4 and read_dump(small).token_text == {}


def test_eval_dumps_are_episode_records_with_task_and_row(tmp_path):
    s = _sample(group_id=(1 << 40) + 3, metadata={"prompt_index": 3})
    path = RolloutDumper(tmp_path).write_eval(0, {"sums": {"samples": [s], "metrics": {}, "engine_failures": []}})
    record = next(iter_records(path))
    assert record["task"] == "sums" and record["row"] == 3
    assert record == {**s.to_dict(), "task": "sums", "row": 3}
    assert episode_summary(record)["task"] == "sums"


def test_torch_trainer_records_the_logprobs_and_entropy_of_its_step():
    from agentrl.models import load_tokenizer
    from agentrl.train.base import TrainConfig
    from agentrl.train.torch_trainer import TorchTrainer

    tok = load_tokenizer("tiny-qwen2")
    trainer = TorchTrainer("tiny-qwen2", TrainConfig(lr=1e-3, max_tokens_per_gpu=16), device="cpu", tokenizer=tok)
    samples = [Sample(prompt_ids=[5, 6, 7], response_ids=[8, 9, 10, 11][:n], loss_mask=[1, 0, 1, 1][:n],
                      rollout_logprobs=[-1.0, 0.0, -1.0, -1.0][:n], reward=float(n % 2), group_id=0, sample_index=n)
               for n in (2, 4, 3, 4)]
    batch = RolloutBatch.from_samples(samples)
    before = trainer.compute_logprobs(batch)
    batch.advantages = torch.ones_like(batch.loss_mask) * batch.loss_mask
    trainer.train_step(batch)  # micro-batches of 16 tokens: several per step
    assert batch.old_logprobs is not None and batch.extra["entropy"].shape == batch.loss_mask.shape
    assert torch.allclose(batch.old_logprobs, before, atol=1e-5)
    assert ((batch.extra["entropy"] > 0) == (batch.loss_mask > 0)).all()
    multi = RolloutBatch.from_samples(samples)
    multi.advantages, multi.old_logprobs = batch.advantages, before
    trainer.train_step(multi, num_steps=2)
    assert multi.old_logprobs is before and "entropy" not in multi.extra


def test_a_recorded_run_dumps_every_rollout_and_evaluation(recorded_run):
    files = dump_files(recorded_run)
    assert [p.name for p in files["rollout"]] == ["rollout_000000.jsonl.gz", "rollout_000001.jsonl.gz"]
    assert [p.name for p in files["eval"]] == ["eval_000000.jsonl.gz", "eval_000001.jsonl.gz", "eval_000002.jsonl.gz"]
    d = read_dump(files["rollout"][0])
    assert len(d.episodes) == 4
    failed = [e for e in d.episodes if e.sample.status == "failed"]
    assert len(failed) == 2 and all(not e.extras["kept"] for e in failed)
    for e in d.episodes:
        if e.extras["kept"]:
            n = len(e.sample.response_ids)
            assert len(e.extras["advantages"]) == len(e.extras["trainer_logprobs"]) == len(e.extras["entropy"]) == n
            diffs = [abs(t - r) for t, r, m in zip(e.extras["trainer_logprobs"], e.sample.rollout_logprobs,
                                                   e.sample.loss_mask) if m]
            assert max(diffs) < 1e-3  # the first rollout: same weights in engine and trainer
        assert set(e.sample.prompt_ids + e.sample.response_ids) <= set(d.token_text)
    metrics = [json.loads(line) for line in (recorded_run / "metrics.jsonl").read_text().splitlines()]
    assert all("perf/dump_time" in r for r in metrics if "perf/step_time" in r)


def test_the_docs_example_reads_a_dump_with_and_without_trainer_logprobs(tmp_path):
    """docs/viewer.md's "Reading dumps in Python" runs as written: on a rollout that trained and on one that
    had no signal (every advantage 0: kept episodes, no trainer logprobs)."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "viewer.md").read_text()
    code = re.search(r"### Reading dumps in Python\n+```python\n(.*?)```", doc, flags=re.S).group(1)
    assert '"runs/quickstart"' in code
    trained = DumpedEpisode(_sample(), {"kept": True, "advantages": [1.0, 1.0, 0.0], "trainer_logprobs": [-0.2, -0.1, 0.0]})
    idle = DumpedEpisode(_sample(index=1), {"kept": True, "advantages": [0.0, 0.0, 0.0]})
    for i, episodes in enumerate(([trained], [idle, DumpedEpisode(_sample(index=2, status="failed"), {"kept": False})])):
        write_dump(tmp_path / "rollout_data" / f"rollout_{i:06d}.jsonl.gz", {"kind": "rollout", "step": i + 1}, episodes, {})
        exec(compile(code.replace('"runs/quickstart"', repr(str(tmp_path))), "docs/viewer.md", "exec"), {})


def test_a_hand_edited_episodes_file_reads_what_it_can(tmp_path):
    """Lines that are not objects are skipped; fields of the wrong type count as missing in the summary."""
    path = tmp_path / "episodes.jsonl"
    path.write_text('[1, 2]\n{"task": "t", "reward": 2.0, "error": {"code": 7}, "metrics": [1], "loss_mask": "111", '
                    '"messages": [1, {"role": "user", "content": "hi"}], "advantages": ["x"], "prompt_ids": "abc"}\n'
                    '"text"\n')
    header = read_header(path)
    assert [e["reward"] for e in header["index"]] == [2.0]
    summary = header["index"][0]
    assert summary["error"] == '{"code": 7}' and summary["tool_errors"] == 0.0 and summary["generated_tokens"] == 0
    assert summary["advantage"] is None and summary["prompt_tokens"] == 0 and summary["preview"].startswith("hi")
    assert [e.extras["task"] for e in read_dump(path).episodes] == ["t"]
    assert episode_summary({"loss_mask": [1, None, 1], "advantages": [0.5, None, 0.5]})["advantage"] == 0.5
