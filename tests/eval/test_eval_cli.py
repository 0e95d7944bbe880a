"""agentrl eval end to end with a scripted engine: outputs, resume after a kill, settings, compare."""

import json
from collections import Counter

import pytest

from agentrl.eval.cli import EvalArgs, build_parser, main, parse_args, run
from agentrl.eval.compare import main as compare_main
from agentrl.eval.store import SettingsChanged


def echo_reply(row, sample, prompt):
    """Row r has r % 4 correct episodes of 3 (samples 0..c-1), so c = 0, 1, 2, 3 for rows 0..3."""
    target = prompt.split("Say the word '")[-1].split("'")[0]
    return target if sample < row % 4 else "no idea"


def echo_args(out, **kw):
    base = dict(model_path="scripted", task=["echo=Echo-v0"], n_samples=3, k="1,2,3", limit=4, max_turns=1, out=str(out),
                concurrency=4, temperature=1.0)
    return EvalArgs(**{**base, **kw})


def read_episodes(out):
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def test_end_to_end_outputs_and_hand_computed_metrics(tmp_path, scripted, template):
    engine = scripted(echo_reply)
    summary = run(echo_args(tmp_path), engine=engine, template=template)
    m = summary["tasks"]["echo"]
    # c = 0, 1, 2, 3 successes of n = 3 on the four prompts
    assert m["reward_mean"] == pytest.approx(6 / 12)
    assert m["pass@1"] == pytest.approx((0 + 1 / 3 + 2 / 3 + 1) / 4)
    assert m["pass@2"] == pytest.approx((0 + 2 / 3 + 1 + 1) / 4)   # 1 - C(3-c,2)/C(3,2)
    assert m["pass^2"] == pytest.approx((0 + 0 + 1 / 3 + 1) / 4)   # C(c,2)/C(3,2)
    assert m["pass@3"] == pytest.approx(3 / 4) and m["pass^3"] == pytest.approx(1 / 4)
    assert (m["status_ok"], m["status_truncated"], m["turns_mean"]) == (6, 6, 1.0)  # Echo-v0 goes on when wrong
    assert summary["overall"]["pass@3"] == pytest.approx(3 / 4)
    # every episode once, with messages, tokens, reward and status
    episodes = read_episodes(tmp_path)
    assert sorted((e["row"], e["sample_index"]) for e in episodes) == [(r, i) for r in range(4) for i in range(3)]
    e = next(e for e in episodes if e["row"] == 3)
    assert e["task"] == "echo" and e["messages"][0]["role"] == "user" and e["status"] == "ok" and e["reward"] == 1.0
    assert e["prompt_tokens"] == len(e["prompt_ids"]) > 0 and e["generated_tokens"] > 0
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["tasks"]["echo"]["pass@2"] == pytest.approx(m["pass@2"]) and saved["ks"] == [1, 2, 3]
    assert json.loads((tmp_path / "run.json").read_text())["settings"]["n_samples"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "| echo | 4x3 | 0.500 |" in report and "### best episode" in report and "### worst episode" in report
    assert (tmp_path / "chart_echo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(engine.served) == [(r, i) for r in range(4) for i in range(3)]


def test_maj_at_k_from_an_environment_that_extracts_answers(tmp_path, scripted, template):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "label": str(i + 1)}) + "\n"
                            for i in range(3)))
    votes = {0: ["1", "9", "9"],      # majority wrong although one is right
             1: ["2", "7", "2"],      # majority right
             2: ["5", "3", None]}     # "3" is right, but in the 1-1 tie the first ("5") wins
    engine = scripted(lambda row, i, _: "no answer" if votes[row][i] is None else f"\\boxed{{{votes[row][i]}}}")
    args = EvalArgs(task=[f"q=Math-v0:{data}"], n_samples=3, k="1,3", out=str(tmp_path / "out"), temperature=1.0)
    m = run(args, engine=engine, template=template)["tasks"]["q"]
    assert m["maj@1"] == pytest.approx(2 / 3)     # first answers 1 (right), 2 (right), 5 (wrong)
    assert m["maj@3"] == pytest.approx(1 / 3)
    assert m["pass@1"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 3) / 3)


def test_kill_and_rerun_finishes_without_repeating_episodes(tmp_path, scripted, template, killed):
    args = echo_args(tmp_path, limit=8, concurrency=3)
    first = scripted(echo_reply, kill_after=13)
    with pytest.raises(killed):
        run(args, engine=first, template=template)
    saved = read_episodes(tmp_path)
    done_groups = {e["row"] for e in saved}
    assert 0 < len(done_groups) < 8 and len(saved) == 3 * len(done_groups)
    # a kill during a write leaves half a line (and part of a group) at the end of the file
    unfinished = next(r for r in range(8) if r not in done_groups)
    line = json.dumps({"task": "echo", "row": unfinished, **{k: v for k, v in saved[0].items()
                                                            if k not in ("task", "row")}})
    with open(tmp_path / "episodes.jsonl", "a") as f:
        f.write(line + "\n" + line[: len(line) // 2])
    second = scripted(echo_reply)
    summary = run(args, engine=second, template=template)
    # the second run served exactly the episodes the first did not save: nothing twice
    assert not {r for r, _ in second.served} & done_groups
    assert sorted(second.served) == [(r, i) for r in range(8) if r not in done_groups for i in range(3)]
    episodes = read_episodes(tmp_path)
    counts = Counter((e["task"], e["row"], e["sample_index"]) for e in episodes)
    assert set(counts.values()) == {1} and len(counts) == 24
    # and the numbers equal an uninterrupted run
    clean = run(echo_args(tmp_path / "clean", limit=8), engine=scripted(echo_reply), template=template)
    assert summary["tasks"] == clean["tasks"]


def test_finished_run_rerun_needs_no_engine(tmp_path, scripted, template, monkeypatch):
    run(echo_args(tmp_path), engine=scripted(echo_reply), template=template)

    def no_engine(*a, **k):
        raise AssertionError("an engine was built although every episode was done")

    monkeypatch.setattr("agentrl.eval.cli.build_engine_and_template", no_engine)
    again = run(echo_args(tmp_path, k="1,3"))  # k changes metrics, not episodes
    assert again["tasks"]["echo"]["pass@3"] == pytest.approx(3 / 4) and "pass@2" not in again["tasks"]["echo"]


def test_changed_settings_are_refused_unless_overwrite(tmp_path, scripted, template, capsys):
    run(echo_args(tmp_path), engine=scripted(echo_reply), template=template)
    with pytest.raises(SettingsChanged, match=r"n_samples: 3 -> 2(.|\n)*--overwrite"):
        run(echo_args(tmp_path, n_samples=2, k="1,2"), engine=scripted(echo_reply), template=template)
    with pytest.raises(SettingsChanged, match=r"sampling.temperature: 1.0 -> 0.5"):
        run(echo_args(tmp_path, temperature=0.5), engine=scripted(echo_reply), template=template)
    summary = run(echo_args(tmp_path, n_samples=2, k="1,2", overwrite=True), engine=scripted(echo_reply),
                  template=template)
    assert summary["tasks"]["echo"]["episodes"] == 8 and len(read_episodes(tmp_path)) == 8
    # through main: a clear message and exit status 2
    code = main(["--model-path", "scripted", "--task", "echo=Echo-v0", "--eval-max-prompts", "4", "--output-dir", str(tmp_path)])
    assert code == 2 and "other settings" in capsys.readouterr().err


def test_argument_problems_are_reported_together(capsys):
    assert main(["--task", "echo=Echo-v0", "--k", "1,4", "--n-samples-per-eval-prompt", "2", "--eval-temperature",
                 "hot"]) == 2
    err = capsys.readouterr().err
    assert "--eval-temperature: expected a number, got 'hot'" in err  # values, then settings: one message each
    assert main(["--task", "echo=Echo-v0", "--k", "1,4", "--n-samples-per-eval-prompt", "2"]) == 2
    err = capsys.readouterr().err
    assert "--model-path" in err and "--k 4 is more than --n-samples-per-eval-prompt 2" in err
    assert parse_args(["--model-path", "m", "--task", "a=Echo-v0", "b=Echo-v0", "--task", "c=Echo-v0"]).task == \
        ["a=Echo-v0", "b=Echo-v0", "c=Echo-v0"]
    assert "--n-samples-per-eval-prompt" in build_parser().format_help()


def test_an_output_folder_that_cannot_be_made_is_an_argument_problem(tmp_path, capsys):
    """A file, or a folder under a file, as --output-dir: one line and exit 2 before the model loads."""
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "run"):
        assert main(["--model-path", "tiny-qwen2", "--task", "echo=Echo-v0", "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--output-dir {out}: cannot create it" in err and "Traceback" not in err and "Loading" not in err
    assert main(["--model-path", "tiny-qwen2", "--task", "echo=Echo-v0,limit=abc", "--output-dir", str(tmp_path / "e")]) == 2
    assert "task 'echo': limit must be an integer >= 1; got 'abc'" in capsys.readouterr().err


def test_an_output_folder_that_holds_a_training_run_is_refused(tmp_path, capsys):
    """Its summary.json is the training run's: an evaluation there (even with --overwrite) would replace it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "summary.json").write_text('{"rollouts": 1}')
    for extra in ([], ["--overwrite"]):
        assert main(["--model-path", "tiny-qwen2", "--task", "echo=Echo-v0", "--output-dir", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert f"--output-dir {run} holds a training run (metrics.jsonl)" in err and "Loading" not in err
    assert (run / "summary.json").read_text() == '{"rollouts": 1}' and sorted(p.name for p in run.iterdir()) == [
        "metrics.jsonl", "summary.json"]
    assert main(["--model-path", "tiny-qwen2", "--task", "echo=Echo-v0", "--output-dir", ""]) == 2
    assert "--output-dir is an empty path" in capsys.readouterr().err


def test_compare_two_runs(tmp_path, scripted, template, capsys):
    run(echo_args(tmp_path / "a"), engine=scripted(echo_reply), template=template)
    def better(row, i, prompt):  # one more success on rows 0..2, row 3 -> 0
        return echo_reply(row + 1, i, prompt)

    run(echo_args(tmp_path / "b", temperature=0.7), engine=scripted(better), template=template)
    out = tmp_path / "cmp.md"
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sampling.temperature: 1.0 -> 0.7" in text
    row = next(line.split() for line in text.splitlines() if line.split()[:2] == ["echo", "avg@3"])
    assert row[2:] == ["0.500", "0.500", "+0.000"]  # c = 1,2,3,0 vs 0,1,2,3: same mean
    row = next(line.split() for line in text.splitlines() if line.split()[:2] == ["echo", "pass^3"])
    assert row[2:] == ["0.250", "0.250", "+0.000"]
    md = out.read_text()
    assert md.startswith("# Evaluation comparison") and "| echo | pass@2 | 0.667 | 0.667 | +0.000 |" in md
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "missing not found" in capsys.readouterr().err
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "episodes.jsonl").write_text("")
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "partial")]) == 2
    err = capsys.readouterr().err
    assert "summary.json not found" in err and "rerun its `agentrl eval`" in err


def test_compare_shows_differences(tmp_path, scripted, template, capsys):
    run(echo_args(tmp_path / "a"), engine=scripted(lambda r, i, p: "no"), template=template)
    run(echo_args(tmp_path / "b"), engine=scripted(lambda r, i, p: echo_reply(3, i, p)), template=template)
    assert compare_main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c.md")]) == 0
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in capsys.readouterr().out.splitlines()
            if line.startswith("echo")}
    assert rows[("echo", "pass@1")] == ["0.000", "1.000", "+1.000"]
    assert rows[("echo", "status_ok")] == ["0", "12", "+12"]


def test_per_task_budgets_and_one_pool_across_tasks(tmp_path, scripted, template):
    engine = scripted(lambda row, i, prompt: "no idea")
    args = echo_args(tmp_path, task=["short=Echo-v0,max_turns=2,max_response_len=3", "long=Echo-v0"], max_turns=None,
                     concurrency=6)
    summary = run(args, engine=engine, template=template)
    assert summary["tasks"]["short"]["turns_mean"] == 2.0 and summary["tasks"]["long"]["turns_mean"] == 3.0
    assert {sp.max_new_tokens for _, sp in engine.requests[:3]} <= {3, 1024}
    assert any(sp.max_new_tokens == 3 for _, sp in engine.requests) and any(
        sp.max_new_tokens == 1024 for _, sp in engine.requests)
    # request ids g{group}-s{sample}-t{turn} are unique across tasks and apart from training's groups
    from agentrl.eval.runner import EVAL_GROUP_BASE, GROUP_ID_STRIDE

    groups = {(e["task"], e["row"]): e["group_id"] for e in read_episodes(tmp_path)}
    assert groups[("short", 2)] == EVAL_GROUP_BASE + 2 and groups[("long", 2)] == EVAL_GROUP_BASE + GROUP_ID_STRIDE + 2


def test_prompts_the_engine_failed_are_not_scored_and_a_rerun_evaluates_them(tmp_path, scripted, template):
    from agentrl.engine.base import EngineError

    def dies_on_rows_1_and_2(row, sample, prompt):
        if row in (1, 2) and sample == 1:
            raise EngineError("POST /generate failed after 9 attempts")
        return echo_reply(row, sample, prompt)

    summary = run(echo_args(tmp_path), engine=scripted(dies_on_rows_1_and_2), template=template)
    assert summary["engine_failures"] == {"echo": 2} and "failed after 9 attempts" in summary["engine_error"]
    assert summary["tasks"]["echo"]["prompts"] == 2  # rows 0 and 3 only: no engine failure counted as a 0
    assert sorted({e["row"] for e in read_episodes(tmp_path)}) == [0, 3]  # nothing stored for rows 1 and 2
    assert "**Incomplete:** the engine failed some prompts (echo: 2)" in (tmp_path / "report.md").read_text()
    again = scripted(echo_reply)
    summary = run(echo_args(tmp_path), engine=again, template=template)
    assert sorted(again.served) == [(r, i) for r in (1, 2) for i in range(3)]  # only what failed, once more
    assert not summary["engine_failures"]
    assert summary["tasks"] == run(echo_args(tmp_path / "clean"), engine=scripted(echo_reply),
                                   template=template)["tasks"]


def test_an_engine_url_that_does_not_answer_is_refused_before_any_episode(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(["--sglang-url", f"http://127.0.0.1:{port}", "--tokenizer-path", "tiny-qwen2", "--task", "echo=Echo-v0",
                 "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"no server answers /health_generate at http://127.0.0.1:{port}" in err
    assert not (tmp_path / "out" / "episodes.jsonl").exists() or not (tmp_path / "out" / "episodes.jsonl").read_text()


def test_the_command_exits_1_and_says_so_when_the_engine_failed_prompts(tmp_path, scripted, template, monkeypatch,
                                                                       capsys):
    from agentrl.engine.base import EngineError

    def dies_on_row_0(row, sample, prompt):
        if row == 0:
            raise EngineError("the engine is closed")
        return echo_reply(row, sample, prompt)

    async def built(*args, **kwargs):
        return scripted(dies_on_row_0), template

    monkeypatch.setattr("agentrl.eval.cli.build_engine_and_template", built)
    code = main(["--model-path", "scripted", "--task", "echo=Echo-v0", "--eval-max-prompts", "2", "--max-turns", "1",
                 "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "the engine failed some prompts (echo: 1)" in err and "the engine is closed" in err
    assert "Rerun the same command" in err
