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
