"""Hostile prompt data: bytes that are not UTF-8, JSON nested past the limit and numbers Python will
not convert are bad rows with their file and line, or counted skips, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentrl.data import DataConfig, DataError, load_prompts

ROOT = Path(__file__).resolve().parents[2]
GOOD = json.dumps({"prompt": "1+1?", "label": "2"}).encode()

BAD_LINES = [
    (b'{"prompt": "caf\xe9", "label": "1"}', "not UTF-8"),  # Latin-1, not UTF-8
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": "1"}', "levels deep; at most 100"),
    (b'{"prompt": "q", "label": ' + b"9" * 5000 + b"}", "digits"),
    (b'{"prompt": "q", "label": "1", "env_options": "' + b"[" * 200 + b"]" * 200 + b'"}', "'env_options'"),
]


@pytest.mark.parametrize("bad, clue", BAD_LINES, ids=["latin-1", "bom-junk", "deep", "bigint", "deep-options"])
def test_a_bad_line_is_named_by_file_and_line_or_skipped_and_counted(tmp_path, bad, clue):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b"\n".join([GOOD, bad, GOOD]) + b"\n")
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert f"{path}:2:" in str(info.value) and clue in str(info.value)
    ds = load_prompts(path, DataConfig(on_bad_row="skip"))
    assert len(ds) == 2 and len(ds.skipped) == 1 and ds.skipped[0].startswith(f"{path}:2:")


def test_a_json_file_that_is_not_utf8_or_too_deep_is_a_data_error(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_bytes(b'[{"prompt": "q", "label": "1"},\n {"prompt": "\xe9", "label": "2"}]')
    with pytest.raises(DataError, match=r"prompts\.json:2: not UTF-8"):
        load_prompts(path)
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DataError, match="nested 100000 levels deep"):
        load_prompts(path)


def test_train_py_reports_an_undecodable_row_in_one_line(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_bytes(GOOD + b"\n" + b'{"prompt": "\xff", "label": "1"}\n')
    out = subprocess.run([sys.executable, "train.py", "--prompt-data", str(data), "--env", "agentrl/Echo-v0",
                          "--output-dir", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"train.py: {data}:2: not UTF-8" in out.stderr and "--skip-bad-rows" in out.stderr
