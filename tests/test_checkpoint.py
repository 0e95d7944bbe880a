"""Checkpoints survive what interrupts them: a run killed while saving keeps the checkpoints it had, a
lost or damaged ``latest`` falls back to the newest complete checkpoint, and a damaged one is refused with
one line naming the file, before the model loads (``--load``) or when its state is read (resume)."""

import json
import logging
from pathlib import Path

import pytest

from agentrl.checkpoint import CheckpointError, find_checkpoint, read_state, save_checkpoint
from agentrl.config import parse_args, validate
from agentrl.loop import train
from agentrl.train_cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--num-rollout", "1",
       "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4",
       "--eval-interval", "0", "--engine-max-batch-size", "4"]


class _Trainer:
    """Writes what a trainer writes (model/ and trainer.pt); ``fail`` raises halfway, as a killed save would."""

    def __init__(self, tag: str = "a", fail: bool = False):
        self.tag, self.fail = tag, fail

    def save(self, path):
        (Path(path) / "model").mkdir(parents=True)
        (Path(path) / "model" / "config.json").write_text(self.tag)
        if self.fail:
            raise OSError("No space left on device")
        (Path(path) / "trainer.pt").write_text(self.tag)


def _state(n: int) -> dict:
    return {"next_rollout": n, "sampler": {}}


def test_latest_names_the_newest_and_is_replaced_whole(tmp_path):
    for n in (1, 2):
        save_checkpoint(tmp_path, n, _Trainer(), _state(n))
    assert (tmp_path / "latest").read_text() == "rollout_00002"
    assert find_checkpoint(tmp_path) == tmp_path / "rollout_00002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "rollout_00001", "rollout_00002"]  # no temporaries


def test_a_save_that_fails_halfway_keeps_the_earlier_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 2, _Trainer("old"), _state(2))
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 3, _Trainer(fail=True), _state(3))
    with pytest.raises(OSError):  # saving the same rollout again: the old copy stays until the new one is whole
        save_checkpoint(tmp_path, 2, _Trainer("new", fail=True), _state(2))
    ckpt = find_checkpoint(tmp_path)
    assert ckpt == tmp_path / "rollout_00002" and (ckpt / "model" / "config.json").read_text() == "old"
    save_checkpoint(tmp_path, 2, _Trainer("new"), _state(2))
    assert (find_checkpoint(tmp_path) / "trainer.pt").read_text() == "new"
    assert not list(tmp_path.glob(".old_*"))


@pytest.mark.parametrize("latest", [None, "", "rollout_00042", "../elsewhere", "\xff"])
def test_a_lost_or_broken_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, caplog, latest):
    for n in (9, 10, 100000):
        save_checkpoint(tmp_path, n, _Trainer(), _state(n))
    (tmp_path / "rollout_200000").mkdir()  # incomplete: no state.json
    (tmp_path / "rollout_300000.bak").mkdir()
    (tmp_path / "rollout_300000.bak" / "state.json").write_text(json.dumps(_state(1)))
    if latest is None:
        (tmp_path / "latest").unlink()
    else:
        (tmp_path / "latest").write_text(latest)
    with caplog.at_level(logging.WARNING, logger="agentrl.checkpoint"):
        assert find_checkpoint(tmp_path) == tmp_path / "rollout_100000"  # by number, not by name
    assert "using the newest complete checkpoint, rollout_100000" in caplog.text
    assert not [p for p in validate(parse_args(["--load", str(tmp_path)])) if "--load" in p]


def test_a_folder_without_a_complete_checkpoint_is_refused(tmp_path):
    (tmp_path / "rollout_00001").mkdir()
    (tmp_path / "latest").write_text("rollout_00001")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        find_checkpoint(tmp_path)


@pytest.mark.parametrize("content, says", [
    ('{"next_rollout": 2, "sampl', "not valid JSON (line 1"),
    ("", "not valid JSON"),
    ("[1, 2]", "not a checkpoint's state"),
    ('{"next_rollout": "2"}', "integer 'next_rollout'"),
    (b"\xff\xfe{", "cannot be read"),
])
def test_a_damaged_state_is_one_line_at_start_up(tmp_path, content, says):
    save_checkpoint(tmp_path, 2, _Trainer(), _state(2))
    state = tmp_path / "rollout_00002" / "state.json"
    state.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError, match=r"state\.json"):
        read_state(find_checkpoint(tmp_path))
    problems = validate(parse_args(["--load", str(tmp_path)]))
    assert any(p.startswith("--load: ") and str(state) in p and says in p for p in problems), problems


def test_a_checkpoint_without_its_model_is_refused(tmp_path):
    save_checkpoint(tmp_path, 2, _Trainer(), _state(2))
    (tmp_path / "rollout_00002" / "model" / "config.json").unlink()
    (tmp_path / "rollout_00002" / "model").rmdir()
    problems = validate(parse_args(["--load", str(tmp_path)]))
    assert any("has no model/ folder" in p for p in problems), problems


def test_a_damaged_training_state_stops_the_resume_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    train(parse_args([*TOY, "--output-dir", str(out), "--save", str(out / "ckpt")]))
    trainer_pt = out / "ckpt" / "rollout_00001" / "trainer.pt"
    trainer_pt.write_bytes(trainer_pt.read_bytes()[:1000])  # a copy cut short
    metrics = (out / "metrics.jsonl").read_text()
    code = main([*TOY, "--num-rollout", "2", "--output-dir", str(out), "--save", str(out / "ckpt"),
                 "--load", str(out / "ckpt")])
    err = capsys.readouterr().err
    assert code == 2, err
    line = next(ln for ln in err.splitlines() if "the training state cannot be loaded" in ln)
    assert str(out / "ckpt" / "rollout_00001") in line and "Traceback" not in err
    assert (out / "metrics.jsonl").read_text() == metrics  # the run's record is untouched
    assert (out / "ckpt" / "latest").read_text() == "rollout_00001"
