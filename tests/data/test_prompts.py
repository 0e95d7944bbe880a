import json
import re

import pytest

from agentrl.data import DataConfig, DataError, PromptSampler, load_prompts


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_text_and_chat_prompts_with_keys(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [
        {"question": "1+1?", "answer": "2", "meta": {"src": "a"}},
        {"question": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}],
         "answer": "4", "env": "agentrl/Math-v0", "env_options": {"difficulty": 3}},
    ])
    ds = load_prompts(p, DataConfig(input_key="question", label_key="answer", metadata_key="meta"))
    assert [r.label for r in ds.rows] == ["2", "4"]
    assert ds.rows[0].metadata == {"src": "a"} and ds.rows[0].env_id is None
    assert ds.rows[1].env_id == "agentrl/Math-v0" and ds.rows[1].options == {"difficulty": 3}
    assert isinstance(ds.rows[1].prompt, list)
    opts = ds.rows[1].reset_options()
    assert opts["prompt"] == ds.rows[1].prompt and opts["label"] == "4" and opts["difficulty"] == 3
    assert ds.rows[0].source.endswith("d.jsonl:1")


def test_malformed_row_fails_with_file_and_line(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "label": 1}, "", "{not json", {"prompt": "x", "label": 2}])
    with pytest.raises(DataError, match=r"d\.jsonl:3: invalid JSON"):
        load_prompts(p)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ({"prompt": "", "label": 1}, "non-empty string"),
        ({"prompt": [{"role": "wizard", "content": "x"}], "label": 1}, "prompt[0]: message role"),
        ({"prompt": "q", "label": 1, "metadata": [1]}, "'metadata' must be an object"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_rows_are_named_or_skipped_and_counted(tmp_path, bad, needle):
    p = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "good", "label": 0}, bad, {"prompt": "good2", "label": 0}])
    with pytest.raises(DataError, match="d.jsonl:2") as info:
        load_prompts(p)
    assert needle in str(info.value)
    ds = load_prompts(p, DataConfig(on_bad_row="skip"))
    assert [r.prompt for r in ds.rows] == ["good", "good2"] and len(ds.skipped) == 1 and needle in ds.skipped[0]
    assert [r.index for r in ds.rows] == [0, 1]


def test_prompt_and_label_are_optional_for_environments_that_make_their_own_task(tmp_path):
    p = _write_jsonl(tmp_path / "d.jsonl", [{"seed": 3}, {"prompt": "q"}, {}])
    ds = load_prompts(p)
    assert [(r.prompt, r.label) for r in ds.rows] == [(None, None), ("q", None), (None, None)]
    assert ds.rows[0].reset_options() == {"seed": 3, "metadata": {}}  # no prompt/label keys to mislead a reset
    assert ds.rows[1].reset_options() == {"prompt": "q", "metadata": {}}


def test_parquet_and_json_and_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "label": str(i), "metadata": json.dumps({"i": i})} for i in range(3)]
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    ds = load_prompts(folder / "part-0.parquet")
    assert [r.label for r in ds.rows] == ["0", "1", "2"] and ds.rows[2].metadata == {"i": 2}
    assert len(load_prompts(folder)) == 3
    (tmp_path / "d.json").write_text(json.dumps(rows))
    assert len(load_prompts(tmp_path / "d.json", DataConfig(limit=2))) == 2


def test_missing_source_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown data format '.csv'"):
        load_prompts(tmp_path / "x.csv")


def test_sampler_is_seeded_and_resumes_exactly():
    items = list(range(7))
    a = PromptSampler(items, seed=3)
    seen = a.next_batch(5) + a.next_batch(5)  # crosses an epoch boundary
    assert sorted(seen[:7]) == items  # the first epoch is a permutation
    state = a.state_dict()
    after = a.next_batch(9)
    b = PromptSampler(items, seed=3)
    b.load_state_dict(state)
    assert b.next_batch(9) == after
    assert PromptSampler(items, seed=3).next_batch(10) == seen
    assert PromptSampler(items, seed=4).next_batch(7) != seen[:7]
    assert PromptSampler(items, shuffle=False).next_batch(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="had 7 rows"):
        PromptSampler(list(range(6))).load_state_dict(state)


@pytest.mark.parametrize("row, key, got", [
    ({"seed": "x"}, "'seed'", "'x'"),
    ({"seed": 1.5}, "'seed'", "1.5"),
    ({"seed": True}, "'seed'", "True"),
    ({"seed": -3}, "'seed'", "-3"),
    ({"seed": None}, "'seed'", "None"),
    ({"prompt": "q", "env_options": {"seed": [1]}}, "'env_options.seed'", "[1]"),
])
def test_a_row_whose_reset_seed_gymnasium_cannot_take_is_a_bad_row(tmp_path, row, key, got):
    """Caught where the rows are read (file:line, or skipped with --skip-bad-rows), not as a traceback in the
    middle of the run when its group is first sampled."""
    p = _write_jsonl(tmp_path / "d.jsonl", [{"seed": 1}, row])
    with pytest.raises(DataError, match=rf"d\.jsonl:2: {re.escape(key)} must be an integer >= 0 .*got {re.escape(got)}"):
        load_prompts(p)
    assert len(load_prompts(p, DataConfig(on_bad_row="skip"))) == 1


def test_an_integral_float_seed_is_that_integer(tmp_path):
    """Parquet stores an int column with gaps as floats: 3.0 seeds as 3, in the row and in its env options."""
    p = _write_jsonl(tmp_path / "d.jsonl", [{"seed": 3.0}, {"prompt": "q", "env_options": {"seed": 7.0}}])
    seeds = [r.reset_options()["seed"] for r in load_prompts(p).rows]
    assert seeds == [3, 7] and all(type(s) is int for s in seeds)
