"""Prompt and demonstration files as editors and tools write them: a byte-order mark is read, a file that is
not what its name says is a DataError naming it, and an empty conversation is a bad row."""

import json

import pytest

from agentrl.data import DataConfig, DataError, load_prompts
from agentrl.data.demos import load_demos

ROW = {"prompt": "1+1?", "label": "2"}
BOM = b"\xef\xbb\xbf"


def test_a_byte_order_mark_opens_jsonl_json_and_demos(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(BOM + (json.dumps(ROW) + "\n").encode() * 2)
    ds = load_prompts(tmp_path / "p.jsonl")
    assert [r.prompt for r in ds.rows] == ["1+1?", "1+1?"] and ds.skipped == []
    (tmp_path / "p.json").write_bytes(BOM + json.dumps([ROW]).encode())
    assert load_prompts(tmp_path / "p.json").rows[0].label == "2"
    demo = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    (tmp_path / "d.jsonl").write_bytes(BOM + json.dumps(demo).encode() + b"\n")
    assert load_demos(tmp_path / "d.jsonl")[0].messages == demo["messages"]


def test_a_bom_after_the_first_line_is_still_a_bad_row(tmp_path):
    (tmp_path / "p.jsonl").write_bytes((json.dumps(ROW) + "\n").encode() + BOM + json.dumps(ROW).encode() + b"\n")
    with pytest.raises(DataError, match=r"p\.jsonl:2: invalid JSON"):
        load_prompts(tmp_path / "p.jsonl")


@pytest.mark.parametrize("content", [b"not parquet at all", b"", b"PAR1\x00\x00PAR1"])
def test_a_file_that_is_not_parquet_is_named(tmp_path, content):
    pytest.importorskip("pyarrow")
    path = tmp_path / "p.parquet"
    path.write_bytes(content)
    for skip in ("error", "skip"):
        with pytest.raises(DataError, match=rf"{path}: not a readable parquet file \("):
            load_prompts(path, DataConfig(on_bad_row=skip))


def test_a_broken_parquet_file_in_a_folder_is_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([ROW]), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"cut")
    with pytest.raises(DataError, match="b.parquet: not a readable parquet file"):
        load_prompts(tmp_path)


def test_an_empty_conversation_is_a_bad_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": []}) + "\n" + json.dumps(ROW) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl:1: 'prompt' is an empty list of chat messages"):
        load_prompts(path)
    ds = load_prompts(path, DataConfig(on_bad_row="skip"))
    assert [r.prompt for r in ds.rows] == ["1+1?"] and len(ds.skipped) == 1


def test_a_limit_below_one_is_a_setting_problem():
    assert DataConfig(limit=0).problems() == ["--prompt-data-limit must be >= 1; got 0"]
    assert DataConfig(limit=1).problems() == [] and DataConfig().problems() == []


@pytest.mark.parametrize("extra, says", [({"tools": "search"}, "tools must be a list of tool schemas"),
                                         ({"tools": [1]}, "tools must be a list of tool schemas"),
                                         ({"metadata": [1]}, "metadata must be an object")])
def test_demonstration_fields_of_the_wrong_type_name_their_line(tmp_path, extra, says):
    from agentrl.data.demos import DemoError

    demo = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(demo) + "\n" + json.dumps({**demo, **extra}) + "\n")
    with pytest.raises(DemoError, match=rf"d\.jsonl:2: {says}"):
        load_demos(path)


def test_a_checkpoint_level_beyond_the_levels_is_refused_on_resume():
    from agentrl.data import PromptRow, PromptSampler
    from agentrl.data.curriculum import CurriculumConfig, CurriculumSampler

    rows = [PromptRow(index=i, prompt=None) for i in range(4)]
    three = CurriculumSampler(PromptSampler(rows), CurriculumConfig("size", [2, 3, 4], promote_at=0.5))
    three.update_level(1.0), three.update_level(1.0)
    state = three.state_dict()
    two = CurriculumSampler(PromptSampler(rows), CurriculumConfig("size", [2, 3], promote_at=0.5))
    with pytest.raises(ValueError, match="cannot resume at curriculum level 2: --curriculum-levels has 2"):
        two.load_state_dict(state)
    assert two.level == 0 and two.next_batch(1)[0].options == {"size": 2}
