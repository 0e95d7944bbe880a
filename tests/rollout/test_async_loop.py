

def test_trainer_thread_binds_plain_cuda_to_the_current_device(monkeypatch):
    """``--device cuda`` (no index): the trainer thread binds the process's current CUDA device."""
    import torch

    from agentrl.async_loop import _bind_device

    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("device", d)))
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: ("stream", device))
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: calls.append(s))
    _bind_device("cuda")
    assert calls == [("device", torch.device("cuda", 1)), ("stream", torch.device("cuda", 1))]
    calls.clear()
    _bind_device("cpu")
    assert calls == []
