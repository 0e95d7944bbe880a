"""agentrl.utils.attention: grouped SDPA and the process-wide cuDNN switch shared by engine and trainer."""

import threading
import time

import torch
import torch.nn.functional as F

from agentrl.utils.attention import _CUDNN, attention_kernels_as_set, no_cudnn_attention, sdpa_grouped


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_sdpa_grouped_equals_attention_over_repeated_heads():
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.rand(2, 1, 5, 5) > 0.3
    mask[..., 0] = True  # every query sees a key
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=mask)
    torch.testing.assert_close(sdpa_grouped(q, k, v, mask=mask), ref)


def _two_overlapping_holders() -> dict:
    """Two threads hold the switch, the second entering before the first leaves; what the second
    sees once the first has left."""
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with no_cudnn_attention("cuda"):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second():
        first_in.wait(10)
        with no_cudnn_attention(torch.device("cuda", 0)):
            second_in.set()
            first_out.wait(10)
            seen["after_first_left"] = torch.backends.cuda.cudnn_sdp_enabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return seen


def test_cudnn_switch_is_held_until_the_last_holder_leaves():
    """The flag is process-wide (set here on a CPU build too): two threads that overlap leave it off
    while either holds it, and restore it as it was, on or off, once both are done."""
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        for start in (True, False):
            torch.backends.cuda.enable_cudnn_sdp(start)
            assert _two_overlapping_holders() == {"after_first_left": False}
            assert torch.backends.cuda.cudnn_sdp_enabled() is start
            with no_cudnn_attention("cpu"):  # off CUDA: untouched
                assert torch.backends.cuda.cudnn_sdp_enabled() is start
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_kernels_as_set_wait_for_holders_and_keep_new_ones_out():
    """A graph capture (as set) waits for a training pass (off) to end; a second pass arriving
    meanwhile waits for the capture; each sees the flag it asked for; nested holds do not block."""
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    log, release_pass = [], threading.Event()
    try:
        def training_pass():
            with no_cudnn_attention("cuda"):
                log.append(("pass", torch.backends.cuda.cudnn_sdp_enabled()))
                with no_cudnn_attention("cuda"):  # nested: enters at once
                    release_pass.wait(10)

        def capture():
            with attention_kernels_as_set("cuda"):
                log.append(("capture", torch.backends.cuda.cudnn_sdp_enabled()))

        def second_pass():
            with no_cudnn_attention("cuda"):
                log.append(("second pass", torch.backends.cuda.cudnn_sdp_enabled()))

        first = threading.Thread(target=training_pass)
        first.start()
        _until(lambda: log)
        waiting = threading.Thread(target=capture)
        waiting.start()
        _until(lambda: _CUDNN._waiting[False] == 1)  # the capture waits for the pass
        late = threading.Thread(target=second_pass)
        late.start()
        _until(lambda: _CUDNN._waiting[True] == 1)  # the second pass waits for the capture
        assert log == [("pass", False)]
        release_pass.set()
        for t in (first, waiting, late):
            t.join(20)
        assert log == [("pass", False), ("capture", True), ("second pass", False)]
        assert torch.backends.cuda.cudnn_sdp_enabled() is True
    finally:
        release_pass.set()
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_kernels_as_set_without_waiting_report_a_busy_switch():
    """``wait=False`` (a decode graph capture that would rather run eagerly than stall): False while
    another thread holds cuDNN off, True once it has left; off CUDA always True."""
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    held, release = threading.Event(), threading.Event()

    def training_pass():
        with no_cudnn_attention("cuda"):
            held.set()
            release.wait(10)

    worker = threading.Thread(target=training_pass)
    try:
        worker.start()
        held.wait(10)
        with attention_kernels_as_set("cuda", wait=False) as free:
            assert free is False and torch.backends.cuda.cudnn_sdp_enabled() is False
        with attention_kernels_as_set("cpu", wait=False) as free:
            assert free is True
        release.set()
        worker.join(10)
        with attention_kernels_as_set("cuda", wait=False) as free:
            assert free is True and torch.backends.cuda.cudnn_sdp_enabled() is True
        assert torch.backends.cuda.cudnn_sdp_enabled() is True
    finally:
        release.set()
        torch.backends.cuda.enable_cudnn_sdp(was)
