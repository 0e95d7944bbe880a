"""BFCL environments: BFCL's own ground truth through our parser and its checkers scores 1, wrong calls 0."""

import ast
import json

import pytest

pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (pip install 'agentrl[bfcl]')")

from agentrl.env import check_env, make  # noqa: E402
from envs.benchmarks.bfcl import MULTI_TURN, BFCLEnv, BFCLMultiTurnEnv  # noqa: E402

PYTHON_AST = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
              "live_parallel", "live_parallel_multiple")


def _first_option(options):
    """The first accepted value of a BFCL possible-answer list ('' marks an omittable argument)."""
    return _resolve(next(o for o in options if o != ""))


def _resolve(value):
    """A value of a possible answer: inside a dict each key has its own list of accepted values."""
    if isinstance(value, dict):
        return {k: _first_option(v) if isinstance(v, list) else v for k, v in value.items()
                if not (isinstance(v, list) and all(o == "" for o in v))}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def _hermes(calls):
    return "".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>\n" for c in calls)


def reference_reply(ground_truth, functions):
    """A reply that makes BFCL's ground-truth calls, in the hermes format the environment reads.

    An argument whose accepted values include '' (may be omitted) is left out unless the function
    requires it (a few ground truths accept values for parameters the function does not declare).
    None when a required argument has no accepted value (``[]`` or only '') or an argument the
    function does not declare must be given: no reply can pass those few test cases, in BFCL's
    own evaluation either.
    """
    required = {f["name"]: set(f["parameters"].get("required", [])) for f in functions}
    declared = {f["name"]: set(f["parameters"].get("properties", {})) for f in functions}
    calls = []
    for call in ground_truth:
        (name, args), = call.items()
        if any(all(o == "" for o in v) for k, v in args.items() if k in required.get(name, ())) \
                or any("" not in v for k, v in args.items() if k not in declared.get(name, ())):
            return None
        calls.append({"name": name, "arguments": {
            k: _first_option(v) for k, v in args.items()
            if any(o != "" for o in v) and ("" not in v or k in required.get(name, ()))}})
    return _hermes(calls)


@pytest.mark.parametrize("category", PYTHON_AST)
def test_every_ground_truth_answer_scores_1_and_a_wrong_function_0(category):
    env = BFCLEnv(category=category)
    unanswerable = []
    for i, entry in enumerate(env.entries):
        messages, info = env.reset(options={"index": i})
        assert info["id"] == entry["id"] and messages[-1]["role"] == "user"
        assert [s["function"]["name"] for s in env.tool_schemas()] == [f["name"] for f in entry["function"]]
        reply = reference_reply(env.truth[entry["id"]], entry["function"])
        if reply is None:
            unanswerable.append(entry["id"])
            continue
        obs, reward, terminated, truncated, info = env.step(reply)
        assert (obs, reward, terminated, truncated) == ([], 1.0, True, False), (entry["id"], info)
        env.reset(options={"index": i})
        wrong = reply.replace('"name": "', '"name": "not_', 1)
        assert env.step(wrong)[1] == 0.0, entry["id"]
    assert len(unanswerable) <= 3, unanswerable
    env.close()


def test_a_wrong_value_and_a_missing_call_score_0():
    env = BFCLEnv(category="simple_python")
    env.reset(options={"id": "simple_python_0"})  # calculate_triangle_area(base=10, height=5)
    call = {"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}
    assert env.step(_hermes([call]))[1] == 1.0
    env.reset(options={"id": "simple_python_0"})
    _, reward, _, _, info = env.step(_hermes([{**call, "arguments": {"base": 10, "height": 6}}]))
    assert reward == 0.0 and info["error_type"].startswith("value_error")
    env.reset(options={"id": "simple_python_0"})
    _, reward, _, _, info = env.step("The area is 25.")
    assert reward == 0.0 and info["tool_calls"] == 0


@pytest.mark.parametrize("category", ["irrelevance", "live_irrelevance", "live_relevance"])
def test_relevance_categories_reward_calling_only_when_a_function_fits(category):
    env = BFCLEnv(category=category)
    for i, entry in enumerate(env.entries[:50]):
        call = _hermes([{"name": entry["function"][0]["name"], "arguments": {}}])
        env.reset(options={"index": i})
        called = env.step(call)[1]
        env.reset(options={"index": i})
        declined = env.step("None of these functions can answer that.")[1]
        assert (called, declined) == ((1.0, 0.0) if category == "live_relevance" else (0.0, 1.0))


def _ground_truth_call(text, docs):
    """BFCL's ground-truth call text (``sort('a.pdf')``) as a hermes call with named arguments."""
    node = ast.parse(text, mode="eval").body
    params = list(docs[node.func.id]["parameters"]["properties"])
    args = {params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)}
    args.update({k.arg: ast.literal_eval(k.value) for k in node.keywords})
    return {"name": node.func.id, "arguments": args}


def play_ground_truth(env, index):
    """Each user turn: one reply with the turn's ground-truth calls, then a reply without calls."""
    entry = env.entries[index]
    docs = {f["name"]: f for f in entry["function"]}
    for functions in entry.get("missed_function", {}).values():
        docs.update({f["name"]: f for f in functions})
    env.reset(options={"index": index})
    truth = env.truth[entry["id"]]
    for turn, calls in enumerate(truth):
        if calls:
            obs, reward, terminated, _, info = env.step(_hermes([_ground_truth_call(c, docs) for c in calls]))
            assert not terminated and [m["role"] for m in obs] == ["tool"] * len(calls)
            assert info["tool_errors"] == 0, obs
        obs, reward, terminated, _, info = env.step("Done.")
        assert terminated == (turn == len(truth) - 1)
    return reward, info


@pytest.mark.parametrize("category", MULTI_TURN)
def test_multi_turn_ground_truth_scores_1_and_doing_nothing_0(category):
    env = BFCLMultiTurnEnv(category=category)
    for i in range(0, len(env.entries), 8):  # every eighth test case (all of them: the slow test below)
        reward, info = play_ground_truth(env, i)
        assert reward == 1.0, info
        env.reset(options={"index": i})
        for _ in env.truth[env.entries[i]["id"]]:
            _, reward, terminated, _, info = env.step("I cannot do that.")
        assert terminated and reward == 0.0 and info["error_type"] == "multi_turn:empty_turn_model_response"
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("category", MULTI_TURN)
def test_every_multi_turn_ground_truth_scores_1(category):
    env = BFCLMultiTurnEnv(category=category)
    for i in range(len(env.entries)):
        assert play_ground_truth(env, i)[0] == 1.0


def test_multi_turn_executes_on_bfcls_backend_and_refuses_code_in_names():
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    env = BFCLMultiTurnEnv(category="multi_turn_base")
    env.reset(options={"id": "multi_turn_base_0"})
    obs, *_ = env.step(_hermes([{"name": "cd", "arguments": {"folder": "document"}}]))
    assert json.loads(obs[0]["content"]) == {"current_working_directory": "document"}
    evil = [{"name": "__import__('os').getcwd", "arguments": {}},
            {"name": "ls", "arguments": {"a=__import__('os').getcwd(),b": 1}}]
    obs, *_ = env.step(_hermes(evil))
    assert [m["content"].split(":")[0] for m in obs] == ["Error during execution"] * 2
    assert "no function named" in obs[0]["content"] and "invalid argument name" in obs[1]["content"]
    assert env.calls == [[["cd(folder='document')"]]]  # refused calls are never checked nor executed
    name = env._run_name
    env.close()
    assert not [k for k in vars(multi_turn_utils) if k.startswith(name)]  # backend instances released


def test_splits_partition_a_category_and_options_pick_by_id():
    every = BFCLEnv(category="parallel")
    train, held_out = BFCLEnv(category="parallel", split="train"), BFCLEnv(category="parallel", split="eval")
    ids = [e["id"] for e in every.entries]
    assert sorted(e["id"] for e in train.entries + held_out.entries) == sorted(ids)
    assert 0.1 < len(held_out.entries) / len(ids) < 0.3
    with pytest.raises(KeyError, match="no BFCL test case"):
        held_out.reset(options={"id": train.entries[0]["id"]})
    with pytest.raises(ValueError, match="did you mean 'parallel'"):
        BFCLEnv(category="paralel")
    with pytest.raises(ValueError, match="plays the categories"):
        BFCLEnv(category="multi_turn_base")


@pytest.mark.parametrize("env_id", ["agentrl/BFCL-v0", "agentrl/BFCL-MultiTurn-v0"])
def test_check_env(env_id):
    report = check_env(lambda: make(env_id))
    assert report.ok, report.problems
