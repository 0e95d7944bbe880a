"""A run that is interrupted (Ctrl-C, SIGTERM, a second signal, a full disk) says what happened in one line and
an exit code, keeps its checkpoints and whole metrics rows, still writes its plots and summary, and ``--load``
continues it exactly, without logging a rollout twice."""

import errno
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from agentrl import loop
from agentrl.config import parse_args
from agentrl.obs import metrics as metrics_module
from agentrl.obs.metrics import MetricsLogger
from agentrl.train_cli import main

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--config", "recipes/quickstart/config.yaml", "--model-path", "tiny-qwen2", "--rollout-batch-size", "2",
       "--n-samples-per-prompt", "2", "--rollout-max-response-len", "4", "--eval-interval", "0",
       "--engine-max-batch-size", "4", "--custom-rm-path", "tests/_resume_reward.py:reward", "--rollout-concurrency", "1"]
TIMING = ("time", "perf/", "rollout/time", "rollout/tokens_per_s", "engine/")


def _args(out: Path, rollouts: int, *extra: str) -> list[str]:
    return [*TOY, "--num-rollout", str(rollouts), "--output-dir", str(out), "--save", str(out / "ckpt"), *extra]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # every line whole


def _comparable(out: Path) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(TIMING)} for r in _rows(out)}


@pytest.fixture
def no_sigterm_kill():
    """Were SIGTERM not handled, it would kill the test session: make it raise here instead."""
    def unhandled(signum, frame):
        raise AssertionError("SIGTERM reached the default handler")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, previous)


def _signal_after(out: Path, rows: int, signum: int) -> threading.Thread:
    def send():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= rows:
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_saves_and_says_so(tmp_path, monkeypatch, capsys, no_sigterm_kill, signum):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    sender = _signal_after(out, 1, signum)
    code = main(_args(out, 200))
    sender.join()
    err = capsys.readouterr().err
    done = len(_rows(out))
    assert 1 <= done < 200
    assert code == 128 + signum
    ckpt = out / "ckpt" / f"rollout_{done:05d}"
    assert (out / "ckpt" / "latest").read_text() == ckpt.name
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert f"stopped by {name} after rollout {done} of 200; --load {ckpt} goes on from there" in err
    assert "Traceback" not in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollouts"] == done and summary["stopped"] == {
        "signal": signal.Signals(signum).name, "after_rollout": done, "num_rollout": 200, "checkpoint": str(ckpt)}
    assert (out / "training.png").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers before the run are back


def test_a_second_signal_during_the_save_stops_at_once_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch,
                                                                                         capsys, no_sigterm_kill):
    from agentrl.train.torch_trainer import TorchTrainer

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    real_save, saves = TorchTrainer.save, []

    def save_then_press_twice(self, path):
        real_save(self, path)
        saves.append(path)
        if len(saves) == 2:  # the save of rollout 2, written but not yet in place
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(TorchTrainer, "save", save_then_press_twice)
    code = main(_args(out, 5, "--save-interval", "1"))
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGTERM
    assert f"stopped at once by SIGTERM; --load {out / 'ckpt' / 'rollout_00001'} goes on from there" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["latest", "rollout_00001"]  # no half-written copy
    assert [r["step"] for r in _rows(out)] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollouts"] == 2 and summary["stopped"]["signal"] == "SIGTERM"
    assert (out / "training.png").is_file()


@pytest.mark.parametrize("presses", [1, 2])
def test_a_signal_while_loading_stops_after_that_step_and_a_second_at_once(tmp_path, monkeypatch, capsys,
                                                                             no_sigterm_kill, presses):
    """The first signal lets the loading step finish (a KeyboardInterrupt inside an import leaves half-imported
    modules behind) and stops the run before its first rollout; a second stops it where it is."""
    from agentrl import components

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    real_build = components.build_components
    loaded = []

    def build_then_press(cfg):
        c = real_build(cfg)
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # a model still loading
        loaded.append("the loading step finished")
        return c

    monkeypatch.setattr(loop, "build_components", build_then_press)
    assert main(_args(out, 2)) == 130
    err = capsys.readouterr().err
    assert "stopped at once by Ctrl-C (SIGINT); no checkpoint to go on from" in err
    assert "Traceback" not in err and loaded == (["the loading step finished"] if presses == 1 else [])
    assert not (out / "metrics.jsonl").exists()


def test_a_full_disk_mid_run_is_one_line_and_resume_continues_exactly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert main(_args(straight, 4)) == 0
    real_log = MetricsLogger.log

    def full_at_step_4(self, metrics, step):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_log(self, metrics, step)

    monkeypatch.setattr(MetricsLogger, "log", full_at_step_4)
    assert main(_args(cut, 4, "--save-interval", "2")) == 1
    err = capsys.readouterr().err
    assert (f"cannot write the run's files: {cut / 'metrics.jsonl'}: No space left on device; "
            f"--load {cut / 'ckpt' / 'rollout_00002'} goes on from there") in err
    assert "Traceback" not in err
    assert [r["step"] for r in _rows(cut)] == [1, 2, 3]  # what was logged stays
    assert json.loads((cut / "summary.json").read_text())["stopped"]["error"].startswith("OSError")

    monkeypatch.setattr(MetricsLogger, "log", real_log)
    assert main(_args(cut, 4, "--save-interval", "2", "--load", str(cut / "ckpt"))) == 0
    # rollout 3 was logged after the checkpoint: the resumed run logs it again, once
    assert [r["step"] for r in _rows(cut)] == [1, 2, 3, 4]
    assert _comparable(cut) == _comparable(straight)
    assert json.loads((cut / "summary.json").read_text())["rollouts"] == 4


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    from agentrl.train.torch_trainer import TorchTrainer

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    real_save = TorchTrainer.save

    def full_on_the_second(self, path):
        if Path(path).name.endswith("00002"):
            (Path(path) / "trainer.pt").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # torch.save's
        real_save(self, path)

    monkeypatch.setattr(TorchTrainer, "save", full_on_the_second)
    assert main(_args(out, 3, "--save-interval", "1")) == 1
    err = capsys.readouterr().err
    assert f"{out / 'ckpt' / 'rollout_00002'}: the checkpoint cannot be written (RuntimeError: [enforce fail" in err
    assert "MiB free there); the earlier checkpoints are kept" in err and "Traceback" not in err
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["latest", "rollout_00001"]


def test_a_failed_metrics_write_takes_its_partial_line_back(tmp_path, monkeypatch):
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log({"rollout/reward_mean": 0.5}, step=1)
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 8:
            return real_write(fd, bytes(data[:8]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics_module.os, "write", half_then_full)
    with pytest.raises(OSError) as e:
        log.log({"rollout/reward_mean": 0.25}, step=2)
    monkeypatch.setattr(metrics_module.os, "write", real_write)
    assert e.value.filename == str(tmp_path / "metrics.jsonl")
    log.log({"rollout/reward_mean": 0.75}, step=2)
    log.close()
    assert [(r["step"], r["rollout/reward_mean"]) for r in _rows(tmp_path)] == [(1, 0.5), (2, 0.75)]


def test_resuming_drops_later_rows_and_lines_cut_off(tmp_path, caplog):
    rows = [{"step": s, "rollout/reward_mean": s / 10} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "rollout/rew')
    log = MetricsLogger(tmp_path, tensorboard=False, resume_at=2)
    assert [r["step"] for r in log.history] == [1, 2]
    assert "dropped 1 line(s) that are not whole rows" in caplog.text
    log.log({"rollout/reward_mean": 0.9}, step=3)
    log.close()
    assert [r["step"] for r in _rows(tmp_path)] == [1, 2, 3]


def test_values_that_are_not_finite_still_give_plots_and_a_summary(tmp_path, capsys):
    from agentrl.obs.plots import plot_run

    rows = ['{"step": 0, "eval/t/success": 0.5, "eval/t/reward_mean": NaN}',
            '{"step": 1, "rollout/reward_mean": NaN, "train/kl_loss": Infinity, "perf/step_time": 1.0}',
            '{"step": 2, "rollout/reward_mean": 0.5, "train/kl_loss": 0.1, "perf/step_time": -Infinity, '
            '"eval/t/success": NaN, "eval/t/reward_mean": 1.0}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    log = MetricsLogger(tmp_path, tensorboard=False, resume_at=2)
    log.log({"rollout/reward_mean": float("nan"), "train/kl_loss": float("inf"), "perf/step_time": 2.0}, step=3)
    log.close()
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text() and "Infinity" not in (tmp_path / "metrics.jsonl").read_text()
    assert {p.name for p in plot_run(log, tmp_path)} == {"training.png", "timing.png", "eval.png"}
    summary = loop.run_summary(log.history)
    json.loads(json.dumps(summary), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert summary["reward_first"] == 0.5 and summary["eval/t/success"] == {"before": 0.5, "after": None}
    loop.print_summary(summary, [])
    printed = capsys.readouterr().out
    assert "held-out t/success: 0.500 before -> n/a after" in printed
    assert "held-out t/reward_mean" not in printed  # nothing finite before training


def test_finishing_a_run_that_failed_on_a_full_disk_reports_the_runs_error(tmp_path, monkeypatch, caplog):
    """The plots and summary of a run stopped by a full disk fail too: one warning, not a second error."""
    cfg = parse_args(_args(tmp_path, 1))
    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log({"rollout/reward_mean": 0.5, "perf/step_time": 1.0}, step=1)

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "training.png"))

    monkeypatch.setattr(loop, "plot_run", full)
    loop.finish_anyway(None, cfg, log, OSError(errno.ENOSPC, "No space left on device"))
    assert "could not be written (OSError: [Errno 28] No space left on device" in caplog.text
    assert log._fd is None  # closed


def test_the_first_signal_says_whether_a_checkpoint_follows_and_the_second_stops(caplog):
    from types import SimpleNamespace

    from agentrl.async_loop import Interrupted, RolloutStream
    from agentrl.config import RunConfig

    c = SimpleNamespace(engine=SimpleNamespace(weight_version=0), sampler=None, trainer=None)
    for save, says in ((None, "SIGTERM: finishing this rollout, stopping (no --save: no checkpoint)"),
                       ("ckpt", "SIGTERM: finishing this rollout, saving a checkpoint and stopping")):
        cfg = RunConfig()
        cfg.checkpoint.save = save
        stream = RolloutStream(c, cfg, 0)
        stream._on_signal(signal.SIGTERM, None)
        assert stream.stopping == "SIGTERM" and says in caplog.text
        with pytest.raises(Interrupted) as e:
            stream._on_signal(signal.SIGTERM, None)
        assert e.value.signum == signal.SIGTERM


def test_a_plot_that_cannot_be_written_is_a_warning_and_the_others_are_written(tmp_path, monkeypatch, caplog):
    from matplotlib.figure import Figure

    from agentrl.obs.plots import plot_run

    log = MetricsLogger(tmp_path, tensorboard=False)
    log.log({"rollout/reward_mean": 0.5, "perf/step_time": 1.0, "eval/t/success": 0.5}, step=1)
    log.close()
    real_savefig = Figure.savefig

    def full_for_training(self, path, **kw):
        if Path(path).name == "training.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_savefig(self, path, **kw)

    monkeypatch.setattr(Figure, "savefig", full_for_training)
    assert [p.name for p in plot_run(log, tmp_path)] == ["timing.png", "eval.png"]
    assert f"{tmp_path / 'training.png'}: not written (OSError: [Errno 28] No space left on device" in caplog.text


@pytest.mark.parametrize("command", [["train.py"], ["-m", "agentrl", "train"]])
def test_ctrl_c_while_the_command_is_still_importing_is_one_line(tmp_path, command):
    """A Ctrl-C a moment after start (torch is still being imported, or the run is loading): exit 130, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, *command, "--config", "recipes/quickstart/config.yaml", "--model-path",
                             "tiny-qwen2", "--output-dir", str(tmp_path / "run"), "--save", "none"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # past the interpreter's start-up, into the imports
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    # 130, or killed by the SIGINT itself (-2, which a shell also shows as 130) after saying so
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and ("interrupted" in err or "stopped at once by Ctrl-C" in err), err
