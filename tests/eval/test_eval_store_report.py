"""The run folder (settings, episodes, repair after a kill) and the report pieces."""

import json

import pytest

from agentrl.eval import report
from agentrl.eval.store import RunStore, SettingsChanged, diff_settings, episode_record
from agentrl.types import Group, Sample


def _group(row, n, reward=1.0):
    return Group(group_id=row, samples=[Sample(prompt_ids=[1, 2], reward=reward, sample_index=i, group_id=row,
                                               messages=[{"role": "user", "content": f"q{row}"}])
                                        for i in range(n)])


def test_load_done_keeps_complete_groups_and_repairs_the_file(tmp_path):
    store = RunStore(tmp_path)
    store.prepare({"n_samples": 2})
    for row in (0, 1, 2):
        store.append_group("t", row, _group(row, 2))
    store.append_group("u", 0, _group(0, 2))
    with open(store.episodes_path, "a") as f:  # row 3: one sample written, the second cut mid-line
        f.write(json.dumps(episode_record("t", 3, _group(3, 2).samples[0])) + "\n")
        f.write(json.dumps(episode_record("t", 3, _group(3, 2).samples[1]))[:40])
    done = store.load_done(n_samples=2)
    assert sorted(done["t"]) == [0, 1, 2] and sorted(done["u"]) == [0]
    assert [s.sample_index for s in done["t"][1]] == [0, 1] and done["t"][1][0].messages[0]["content"] == "q1"
    lines = store.episodes_path.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["row"] != 3 for line in lines)
    store.append_group("t", 3, _group(3, 2))  # appending goes on from clean lines
    assert sorted(store.load_done(n_samples=2)["t"]) == [0, 1, 2, 3]
    assert sum(1 for _ in store.iter_episodes()) == 10


def test_duplicate_samples_are_kept_once(tmp_path):
    store = RunStore(tmp_path)
    store.prepare({})
    store.append_group("t", 0, _group(0, 2))
    store.append_group("t", 0, _group(0, 2))
    assert len(store.load_done(2)["t"][0]) == 2
    assert len(store.episodes_path.read_text().splitlines()) == 2


def test_prepare_refuses_other_settings_and_orphan_episodes(tmp_path):
    store = RunStore(tmp_path / "a")
    store.prepare({"n": 1, "tasks": [{"name": "x", "limit": 3}]})
    store.prepare({"n": 1, "tasks": [{"name": "x", "limit": 3}]})  # same settings: fine
    store.append_group("x", 0, _group(0, 1))
    with pytest.raises(SettingsChanged, match=r"tasks\[0\].limit: 3 -> 4"):
        store.prepare({"n": 1, "tasks": [{"name": "x", "limit": 4}]})
    store.prepare({"n": 2}, overwrite=True)
    assert store.settings() == {"n": 2}
    orphan = RunStore(tmp_path / "b")
    orphan.dir.mkdir()
    orphan.episodes_path.write_text('{"task": "x"}\n')
    with pytest.raises(SettingsChanged, match="settings are unknown"):
        orphan.prepare({"n": 1})


def test_an_attempt_that_stored_no_episode_never_blocks_the_retry(tmp_path):
    """An evaluation that failed before its first group (a wrong --model-path, say) left only run.json:
    the corrected command replaces it instead of being refused."""
    store = RunStore(tmp_path / "a")
    store.prepare({"model_path": "runs/qs/checkpoints/rollout_00040/model"})
    store.prepare({"model_path": "runs/qs/checkpoints/rollout_00020/model"})
    assert store.settings() == {"model_path": "runs/qs/checkpoints/rollout_00020/model"}
    store.episodes_path.write_text("")  # an empty episodes file is no episode either
    store.prepare({"model_path": "other"})
    assert store.settings() == {"model_path": "other"}


def test_diff_settings():
    assert diff_settings({"a": 1, "b": {"c": [1, 2]}}, {"a": 1, "b": {"c": [1, 3]}, "d": None}) == \
        ["b.c[1]: 2 -> 3", "d: (unset) -> null"]


def _summary():
    tasks = {"a": {"reward_mean": 0.5, "pass@1": 0.5, "pass^1": 0.5, "pass@2": 0.75, "pass^2": 0.25,
                   "prompts": 2.0, "episodes": 4.0, "status_ok": 3.0, "status_truncated": 1.0,
                   "status_failed": 0.0, "status_aborted": 0.0, "turns_mean": 1.5, "generated_tokens_mean": 20.0,
                   "tool_calls_mean": 0.5, "tool_errors_mean": 0.25},
             "b": {"reward_mean": 1.0, "pass@1": 1.0, "pass^1": 1.0, "pass@2": 1.0, "pass^2": 1.0, "maj@2": 1.0,
                   "prompts": 1.0, "episodes": 2.0, "status_ok": 2.0, "status_failed": 0.0, "turns_mean": 1.0,
                   "generated_tokens_mean": 10.0}}
    return report.summarize(tasks, ks=(1, 2), n_samples=2)


def test_overall_is_the_mean_over_tasks_with_counts_summed():
    s = _summary()
    assert s["overall"]["pass@2"] == pytest.approx(0.875) and s["overall"]["reward_mean"] == 0.75
    assert s["overall"]["maj@2"] == 1.0                      # over the tasks that have it
    assert s["overall"]["prompts"] == 3 and s["overall"]["status_ok"] == 5


def test_table_rows_and_columns():
    lines = report.format_table(_summary()).splitlines()
    assert lines[0].split() == ["task", "n", "avg@2", "pass@1", "pass@2", "pass^2", "maj@2", "ok/trunc/fail",
                                "turns", "tokens", "tools", "tool", "err"]
    assert lines[2].split() == ["a", "2x2", "0.500", "0.500", "0.750", "0.250", "-", "3/1/0", "1.5", "20", "0.50",
                                "0.25"]
    assert lines[4].split()[0] == "overall"
    md = report.format_table(_summary(), markdown=True).splitlines()
    assert md[1].startswith("|---|---:") and md[3].startswith("| b | 1x2 | 1.000 |")


def test_pick_examples_best_worst_and_not_ok():
    samples = [Sample(reward=0.5), Sample(reward=1.0), Sample(reward=0.0), Sample(reward=0.5, status="truncated")]
    picks = report.pick_examples(samples, 3)
    assert [(label, s.reward) for label, s in picks] == [("best", 1.0), ("worst", 0.0), ("not ok", 0.5)]
    assert [label for label, _ in report.pick_examples(samples[:1], 3)] == ["first"]
    text = report.transcript(Sample(reward=1.0, messages=[{"role": "user", "content": "x" * 5000}]))
    assert "[... 3500 characters ...]" in text and text.startswith("reward 1 · status ok")


def test_write_report_with_charts(tmp_path):
    samples = {"a": [Sample(reward=1.0, messages=[{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "```code```"}])]}
    path = report.write_report(tmp_path, _summary(), samples, command="agentrl eval ...")
    text = path.read_text()
    assert "![all tasks](chart_overview.png)" in text and "![a](chart_a.png)" in text and "## b" in text
    assert "````text\n```code```\n````" in text  # fences never clash with the content
    for name in ("chart_overview.png", "chart_a.png", "chart_b.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_pick_examples_without_spread_are_not_called_best_and_worst():
    samples = [Sample(reward=0.0), Sample(reward=0.0), Sample(reward=0.0)]
    assert [label for label, _ in report.pick_examples(samples, 3)] == ["first", "last", "median"]
