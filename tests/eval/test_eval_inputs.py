"""Half-written evaluation folders and hand-written task specs: one line naming the file, exit 2, no traceback;
what can be kept is kept."""

import json

import pytest

from agentrl.eval.cli import EvalArgs, build_parser, main
from agentrl.eval.compare import main as compare_main
from agentrl.eval.store import RunStore, SettingsChanged, episode_record
from agentrl.eval.tasks import TaskError, load_task_file, parse_task_arg
from agentrl.types import Group, Sample

SUMMARY = {"n_samples": 1, "ks": [1], "tasks": {"t": {"reward_mean": 0.5, "pass@1": 0.5}},
           "overall": {"reward_mean": 0.5, "pass@1": 0.5}}


def _group(row, n):
    return Group(group_id=row, samples=[Sample(prompt_ids=[1], reward=1.0, sample_index=i, group_id=row,
                                               messages=[{"role": "user", "content": "é" * 40}]) for i in range(n)])


@pytest.mark.parametrize("content, says", [
    (b'{"n_samples": 1, "tasks": {', "cannot be read"),
    (b"\xff\xfe{}", "cannot be read"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'{"tasks": [], "overall": {}}', "expected 'tasks' and 'overall' objects"),
    (b'{"tasks": {"t": {"pass@1": "high"}}, "overall": {}}', "'t' pass@1 is 'high', not a number"),
    (b'{"tasks": {"t": 3}, "overall": {}}', "the metrics of 't' are not an object"),
])
def test_compare_names_a_summary_it_cannot_use(tmp_path, capsys, content, says):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "summary.json").write_text(json.dumps(SUMMARY))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_bytes(content)
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.md")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / "b" / "summary.json") in err and says in err, err
    assert not (tmp_path / "c.md").exists()


def test_compare_into_a_folder_is_one_line(tmp_path, capsys):
    for name in "ab":
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(SUMMARY))
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: cannot write it" in capsys.readouterr().err


def test_resume_drops_a_line_cut_inside_a_character_and_keeps_the_rest(tmp_path):
    """episodes.jsonl is written with ensure_ascii=False: a kill can cut a multi-byte character in two."""
    store = RunStore(tmp_path)
    store.prepare({"n_samples": 2})
    store.append_group("t", 0, _group(0, 2))
    cut = (json.dumps(episode_record("t", 1, _group(1, 2).samples[0]), ensure_ascii=False) + "\n").encode()
    with open(store.episodes_path, "ab") as f:
        f.write(cut[:cut.index("é".encode()) + 1])  # the first byte of 'é' only
    done = store.load_done(n_samples=2)
    assert list(done) == ["t"] and sorted(done["t"]) == [0]
    assert len(store.episodes_path.read_text(encoding="utf-8").splitlines()) == 2
    assert sum(1 for _ in store.iter_episodes()) == 2


def test_a_garbled_line_in_the_middle_is_skipped_by_every_reader(tmp_path):
    store = RunStore(tmp_path)
    store.prepare({"n_samples": 1})
    store.append_group("t", 0, _group(0, 1))
    with open(store.episodes_path, "ab") as f:
        f.write(b'{"task": "\xff"}\n[1]\n')
    store.append_group("t", 1, _group(1, 1))
    assert sum(1 for _ in store.iter_episodes()) == 2
    assert sorted(store.load_done(n_samples=1)["t"]) == [0, 1]


@pytest.mark.parametrize("content", [b'{"settings": {"n_sam', b"\xff", b"[]", b'{"settings": 3}'])
def test_an_unreadable_run_json_is_refused_not_a_traceback(tmp_path, content):
    store = RunStore(tmp_path)
    store.prepare({"n_samples": 1})
    store.append_group("t", 0, _group(0, 1))
    store.run_path.write_bytes(content)
    with pytest.raises(SettingsChanged, match="run.json cannot be read"):
        store.prepare({"n_samples": 1})
    store.prepare({"n_samples": 1}, overwrite=True)  # the way out it names
    assert store.load_done(n_samples=1) == {}


@pytest.mark.parametrize("content, says", [
    (b"tasks:\n  - {name: a, env: Echo-v0}\n  - {name: b, env: Echo-v0, name: c}\n", "key 'name' given twice"),
    (b"tasks: [{name: a, env: \xff}]\n", ":1: not UTF-8"),
    (b"tasks: [{name: a, env: Echo-v0, 1: x}]\n", "unknown key '1'"),
    (b"tasks: [{name: a, env: [Echo-v0]\n", "not valid YAML"),
])
def test_a_task_file_it_cannot_use_is_a_task_error(tmp_path, content, says):
    path = tmp_path / "tasks.yaml"
    path.write_bytes(content)
    with pytest.raises(TaskError, match=says.replace("[", r"\[")):
        load_task_file(path)
    with pytest.raises(TaskError, match="is a folder"):
        load_task_file(tmp_path)


@pytest.mark.parametrize("spec", ["t=Echo-v0,x=[1", "t=Echo-v0,x=: :", "t=Echo-v0,x=!!python/object:os.system"])
def test_a_task_argument_that_is_not_yaml_is_a_task_error(spec):
    with pytest.raises(TaskError, match=r"is not a YAML value"):
        parse_task_arg(spec)


@pytest.mark.parametrize("kw, says", [
    ({"max_turns": 0}, "--max-turns must be >= 1; got 0"),
    ({"episode_timeout": -1.0}, "--episode-timeout must be >= 0; got -1.0"),
    ({"examples": -1}, "--examples must be >= 0; got -1"),
    ({"engine_max_batch_size": 0}, "--engine-max-batch-size must be >= 1; got 0"),
    ({"chat_template": "/no/such/template.jinja"}, "--chat-template /no/such/template.jinja: no such file"),
    ({"seed": -1}, "--seed must be in [0, 2**32); got -1"),  # every reset of a row without a seed would fail
])
def test_eval_settings_that_cannot_work_are_argument_problems(tmp_path, kw, says):
    args = EvalArgs(model_path="tiny-qwen2", task=["echo=Echo-v0"], out=str(tmp_path / "e"), **kw)
    assert says in args.validate()


def test_eval_command_line_says_it_in_one_line(tmp_path, capsys):
    assert main(["--model-path", "tiny-qwen2", "--task", "echo=Echo-v0,x=[1", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a YAML value" in err and "Traceback" not in err
    assert main(["--model-path", "tiny-qwen2", "--task", "echo=Echo-v0", "--episode-timeout=-5",
                 "--output-dir", str(tmp_path)]) == 2
    assert "--episode-timeout must be >= 0; got -5.0" in capsys.readouterr().err


def test_a_malformed_row_of_a_task_names_its_line_and_no_flag_eval_lacks(tmp_path, capsys):
    """The training loader's hint (--skip-bad-rows) is training's flag: eval names the row and stops there."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1+1?", "label": "2"}\n{"prompt": "2+2?", "label": "4", "seed": "x"}\n')
    config = tmp_path / "run.yaml"
    config.write_text(f"model-path: tiny-qwen2\nenv: agentrl/Math-v0\nprompt-data: {data}\n"
                      f"eval-prompt-data: [held, {data}]\n")
    for argv in (["--model-path", "tiny-qwen2", "--task", f"t=Math-v0:{data}"], ["--config", str(config)]):
        assert main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert f"{data}:2: 'seed' must be an integer >= 0" in err, err
        assert "--skip-bad-rows" not in err and len(err.strip().splitlines()) == 1, err
    flags = {o for a in build_parser()._actions for o in a.option_strings}
    assert "--skip-bad-rows" not in flags  # else the hint should stay
