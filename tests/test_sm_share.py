"""Confining a thread's kernels to part of a GPU's SMs (agentrl.utils.sm_share)."""

import threading
from types import SimpleNamespace

import pytest
import torch

from agentrl.utils import sm_share
from agentrl.utils.sm_share import confined_stream


def test_a_cpu_device_is_refused():
    with pytest.raises(ValueError, match="needs a CUDA device; got cpu"):
        confined_stream("cpu", 8)


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(multi_processor_count=132))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: ("stream", device))


@pytest.mark.parametrize("sms", [0, 133])
def test_a_count_outside_the_devices_sms_is_refused(fake_gpu, sms):
    with pytest.raises(ValueError, match=rf"SM count must be in 1..132 \(the SMs of cuda:0\); got {sms}"):
        confined_stream("cuda", sms)


def test_all_sms_is_a_plain_stream(fake_gpu):
    assert confined_stream("cuda:0", 132) == ("stream", torch.device("cuda", 0))


def test_without_green_contexts_the_error_says_what_is_needed(fake_gpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "green_contexts", SimpleNamespace(SUPPORTED=False, GreenContext=object))
    with pytest.raises(RuntimeError, match="has no CUDA green contexts"):
        confined_stream("cuda:0", 66)


def test_one_context_per_device_and_count_is_kept(fake_gpu, monkeypatch):
    made = []

    class Green:
        @staticmethod
        def create(num_sms, device_id):
            made.append((num_sms, device_id))
            return SimpleNamespace(Stream=lambda: ("green", num_sms, device_id))

        Stream = None

    monkeypatch.setattr(torch.cuda, "green_contexts", SimpleNamespace(SUPPORTED=True, GreenContext=Green))
    monkeypatch.setattr(sm_share, "_KEEP", {})
    assert confined_stream("cuda:0", 66) == ("green", 66, 0)
    assert confined_stream("cuda:0", 66) == ("green", 66, 0)
    assert confined_stream("cuda:0", 88) == ("green", 88, 0)
    assert made == [(66, 0), (88, 0)]


@pytest.mark.gpu
def test_a_confined_stream_trains_like_the_whole_gpu():
    """Forward, backward and an optimizer step on a confined stream, in a thread of its own (as the
    async trainer runs), give what the unconfined run gives."""
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256)).cuda()
    x = torch.randn(64, 256, device="cuda")

    def step(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss.detach(), [p.detach().clone() for p in model.parameters()]

    import copy

    want_loss, want = step(copy.deepcopy(base))
    got = {}

    def worker():
        torch.cuda.set_device(0)
        stream = confined_stream("cuda:0", max(8, sm_share.sm_count("cuda:0") // 2))
        torch.cuda.set_stream(stream)
        got["result"] = step(copy.deepcopy(base))
        stream.synchronize()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    loss, params = got["result"]
    torch.testing.assert_close(loss, want_loss)
    for p, q in zip(params, want):
        torch.testing.assert_close(p, q)
