"""Problems that would fail every episode are found before the model loads: one line each, exit 2."""

import json

from agentrl.train_cli import main


def _run(tmp_path, rows, *extra):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return main(["--model-path", "tiny-qwen2", "--env", "agentrl/Math-v0", "--prompt-data", str(data),
                 "--rollout-batch-size", "1", "--n-samples-per-prompt", "2", "--num-rollout", "1",
                 "--output-dir", str(tmp_path / "run"), *extra])


def test_rows_the_environment_cannot_read(tmp_path, capsys):
    code = _run(tmp_path, [{"q": "1+1?", "label": "2"}])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"environment agentrl/Math-v0 cannot start an episode of {tmp_path / 'p.jsonl'}:1" in err
    assert "the row has a label but no question" in err and "--input-key" in err
    assert "Loading weights" not in err and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_env_kwargs_the_environment_does_not_take(tmp_path, capsys):
    code = _run(tmp_path, [{"prompt": "1+1?", "label": "2"}], "--env-kwargs", '{"prompt_templat": "{question}"}')
    err = capsys.readouterr().err
    assert code == 2 and "environment agentrl/Math-v0 with --env-kwargs {'prompt_templat': '{question}'}" in err
    assert "TypeError" in err and "Loading weights" not in err


def test_demonstrations_the_warm_start_cannot_use(tmp_path, capsys):
    """A bad --sft-data file is named with its line before the model loads, whatever is wrong with it."""
    for content, says in [('{"messages": [{"role": "user", "content": "hi"}]}\n', ":1: no assistant message"),
                          ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
                           "not json\n", ":2: not JSON"),
                          ("\n", ": no demonstrations"),
                          (b"\xff\xfe\x00", "cannot be read")]:
        demos = tmp_path / "demos.jsonl"
        demos.write_bytes(content if isinstance(content, bytes) else content.encode())
        code = _run(tmp_path, [{"prompt": "1+1?", "label": "2"}], "--sft-data", str(demos))
        err = capsys.readouterr().err
        assert code == 2, err
        line = next(ln for ln in err.splitlines() if "--sft-data" in ln)
        assert str(demos) in line and says in line, err
        assert "Traceback" not in err and "Loading weights" not in err


def test_hooks_that_cannot_load_stop_the_run_before_the_model_loads(tmp_path, capsys):
    for flag, spec, says in [("--custom-rm-path", "os:nope", "'os' has no attribute 'nope'"),
                             ("--custom-rm-path", "tests/_failing_reward.py:rewardx", "did you mean 'reward'?"),
                             ("--custom-rm-path", "no_such_module_xyz:f", "module 'no_such_module_xyz' not found"),
                             ("--custom-generate-function-path", "tests/_failing_reward.py:reward", "`async def`")]:
        code = _run(tmp_path, [{"prompt": "1+1?", "label": "2"}], flag, spec)
        err = capsys.readouterr().err
        assert code == 2, err
        assert says in err and flag in err, err
        assert "Traceback" not in err and "Loading weights" not in err


def test_empty_paths_are_named_not_taken_for_the_current_folder(tmp_path, capsys):
    code = _run(tmp_path, [{"prompt": "1+1?", "label": "2"}], "--save", "", "--load", " ", "--sft-data", "",
                "--chat-template", "")
    err = capsys.readouterr().err
    assert code == 2, err
    for flag in ("--save", "--load", "--sft-data", "--chat-template"):
        lines = [ln for ln in err.splitlines() if ln.strip().startswith(f"- {flag}")]
        assert lines == [f"  - {flag} is an empty path; give one (or `{flag} none` to leave it out)"], err
    code = main(["--model-path", "", "--output-dir", "", "--prompt-data", str(tmp_path / "p.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "--model-path is an empty path; give one\n" in err and "--output-dir is an empty path" in err
