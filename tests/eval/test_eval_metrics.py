"""pass@k, pass^k and maj@k against values computed by hand."""

import math

import pytest

from agentrl.eval import EvalConfig, maj_at_k, pass_at_k, pass_hat_k, task_metrics
from agentrl.eval.metrics import group_metrics, normalize_answer
from agentrl.types import Sample


# pass@k = 1 - C(n-c, k) / C(n, k)      pass^k = C(c, k) / C(n, k)
@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 2 / 5),                 # pass@1 is the success rate
    (5, 2, 2, 1 - 3 / 10),            # C(3,2)=3, C(5,2)=10
    (5, 2, 3, 1 - 1 / 10),            # C(3,3)=1, C(5,3)=10
    (5, 2, 4, 1.0),                   # n - c = 3 < k: every 4-subset holds a success
    (5, 2, 5, 1.0),                   # k = n: any success at all
    (5, 0, 1, 0.0), (5, 0, 5, 0.0),   # zero successes
    (5, 5, 3, 1.0),
    (10, 3, 4, 1 - 35 / 210),         # C(7,4)=35, C(10,4)=210
])
def test_pass_at_k_hand_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 2 / 5),
    (5, 2, 2, 1 / 10),                # C(2,2)=1, C(5,2)=10
    (5, 2, 3, 0.0),                   # fewer successes than k
    (5, 5, 5, 1.0),                   # k = n, all succeed
    (5, 4, 5, 0.0),                   # k = n, one failure
    (5, 0, 2, 0.0),                   # zero successes
    (10, 7, 3, 35 / 120),             # C(7,3)=35, C(10,3)=120
])
def test_pass_hat_k_hand_values(n, c, k, expected):
    assert pass_hat_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_not_best_of_n():
    # best-of-n with 1 success in 4 would say 1.0 for k=2; the unbiased estimator says 1/2
    assert pass_at_k(4, 1, 2) == 0.5


def test_pass_at_k_matches_brute_force_over_subsets():
    from itertools import combinations

    outcomes = [True, False, False, True, False, False]
    n, c = len(outcomes), sum(outcomes)
    for k in range(1, n + 1):
        subsets = list(combinations(outcomes, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
        assert pass_hat_k(n, c, k) == pytest.approx(sum(all(s) for s in subsets) / len(subsets))


@pytest.mark.parametrize("n,c,k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_bad_arguments_raise(n, c, k):
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match="need 0 <= c <= n"):
        pass_hat_k(n, c, k)


def test_maj_at_k_majority_and_ties():
    # majority "7" is wrong although a correct "5" is present
    assert maj_at_k(["5", "7", "7"], [True, False, False], 3) == 0.0
    # tie 1-1 in the first 2: the answer seen first wins
    assert maj_at_k(["5", "7"], [True, False], 2) == 1.0
    assert maj_at_k(["7", "5"], [False, True], 2) == 0.0
    # only the first k count: the third vote would break the tie for "7"
    assert maj_at_k(["5", "7", "7"], [True, False, False], 2) == 1.0
    # episodes without an answer cast no vote
    assert maj_at_k([None, None, "5"], [False, False, True], 3) == 1.0
    assert maj_at_k([None, None, "5"], [False, False, True], 2) is None
    # votes are counted after normalisation: "$1,000" and "1000.0" are one answer
    assert maj_at_k(["3", "$1,000", "1000.0"], [False, True, True], 3) == 1.0


def test_normalize_answer():
    assert normalize_answer(" 42. ") == "42"
    assert normalize_answer("\\$18") == "18"
    assert normalize_answer("0.50") == "0.5"
    assert normalize_answer("-3") == "-3"
    assert normalize_answer("\\frac{1}{2}") == "\\frac{1}{2}"


def test_group_metrics_k_equal_n_zero_successes_and_no_answer():
    m = group_metrics([0.0, 0.0, 0.0], ks=(1, 3, 8), threshold=1.0, answers=[None, None, None])
    assert m == {"avg": 0.0, "success": 0.0, "pass@1": 0.0, "pass^1": 0.0, "maj@1": 0.0,
                 "pass@3": 0.0, "pass^3": 0.0, "maj@3": 0.0}  # k=8 > n skipped; no answer scores 0
    m = group_metrics([1.0, 0.5, 1.0], ks=(3,), threshold=1.0)
    assert m["avg"] == pytest.approx(2.5 / 3) and m["pass@3"] == 1.0 and m["pass^3"] == 0.0
    assert "maj@3" not in m  # no answers: the env extracts none


def _sample(reward, answer=None, status="ok", index=0, **kw):
    info = {} if answer is False else {"extracted": answer}
    return Sample(reward=reward, status=status, sample_index=index, metadata={"env_info": info}, **kw)


def test_task_metrics_averages_over_prompts():
    # prompt A: 1 of 4 correct, majority answer wrong; prompt B: 3 of 4, majority right;
    # prompt C: 0 of 4, no answers at all (counts 0 for maj, not skipped)
    a = [_sample(1.0, "5"), _sample(0.0, "7"), _sample(0.0, "7"), _sample(0.0, "8")]
    b = [_sample(1.0, "2"), _sample(1.0, "2"), _sample(0.0, "3"), _sample(1.0, "2")]
    c = [_sample(0.0, None, status="truncated") for _ in range(4)]
    m = task_metrics([a, b, c], EvalConfig(n_samples=4, ks=(1, 2, 4)))
    assert m["reward_mean"] == pytest.approx(4 / 12)
    assert m["pass@1"] == pytest.approx((1 / 4 + 3 / 4 + 0) / 3)
    # pass@2: A 1 - C(3,2)/C(4,2) = 1/2; B 1 - C(1,2)/6 = 1; C 0
    assert m["pass@2"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # pass^2: A 0; B C(3,2)/6 = 1/2; C 0
    assert m["pass^2"] == pytest.approx(0.5 / 3)
    assert m["pass@4"] == pytest.approx(2 / 3) and m["pass^4"] == 0.0
    # maj@1: A first answer "5" right, B "2" right, C none -> 2/3
    assert m["maj@1"] == pytest.approx(2 / 3)
    # maj@2: A tie 5/7 -> "5" (first) right; B "2" right; C 0
    assert m["maj@2"] == pytest.approx(2 / 3)
    # maj@4: A "7" wins (wrong); B "2" right; C 0
    assert m["maj@4"] == pytest.approx(1 / 3)
    assert (m["status_ok"], m["status_truncated"], m["status_failed"]) == (8.0, 4.0, 0.0)
    assert (m["prompts"], m["episodes"]) == (3.0, 12.0)


def test_task_metrics_without_answers_has_no_maj_and_counts_tokens_and_tools():
    s1 = Sample(prompt_ids=[1, 2, 3], response_ids=[4, 5, 6, 7], loss_mask=[1, 1, 0, 1],
                rollout_logprobs=[-0.1, -0.1, 0.0, -0.1], reward=1.0, num_turns=2,
                metrics={"tool_calls": 2.0, "tool_errors": 1.0})
    s2 = Sample(prompt_ids=[1], reward=0.0, status="failed", num_turns=0)
    m = task_metrics([[s1, s2]], EvalConfig(n_samples=2, ks=(1, 2)))
    assert not any(k.startswith("maj@") for k in m)
    assert m["turns_mean"] == 1.0 and m["generated_tokens_mean"] == 1.5 and m["response_tokens_mean"] == 2.0
    assert m["prompt_tokens_mean"] == 2.0
    assert m["tool_calls_mean"] == 1.0 and m["tool_errors_mean"] == 0.5
    assert m["status_failed"] == 1.0 and m["pass@2"] == 1.0 and m["pass^2"] == 0.0
    assert all(math.isfinite(v) for v in m.values())
