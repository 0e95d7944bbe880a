"""Vocabulary-parallel log-probs and entropy: values and gradients against a dense reference."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agentrl.train.megatron.logprobs import vocab_parallel_logprobs


def _dense(logits: torch.Tensor, targets: torch.Tensor, vocab: int, temperature: float):
    z = logits[..., :vocab] / temperature
    logp = torch.log_softmax(z, dim=-1)
    return logp.gather(-1, targets[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_dense_log_softmax_and_entropy(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 19, dtype=torch.float64, generator=g) * 3
    targets = torch.randint(0, 16, (3, 5), generator=g)
    lp, ent = vocab_parallel_logprobs(logits, targets, vocab_size=16, temperature=temperature, with_entropy=True)
    want_lp, want_ent = _dense(logits, targets, 16, temperature)
    torch.testing.assert_close(lp, want_lp.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, want_ent.float(), atol=1e-5, rtol=1e-5)


def test_gradients_match_autograd_of_the_dense_formula():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 7, 13, dtype=torch.float64, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, 11, (4, 7), generator=g)
    w_lp, w_ent = torch.randn(4, 7, dtype=torch.float64, generator=g), torch.randn(4, 7, dtype=torch.float64, generator=g)
    lp, ent = vocab_parallel_logprobs(logits, targets, vocab_size=11, temperature=0.8, with_entropy=True)
    (got,) = torch.autograd.grad((lp.double() * w_lp).sum() + (ent.double() * w_ent).sum(), logits)
    want_lp, want_ent = _dense(logits, targets, 11, 0.8)
    (want,) = torch.autograd.grad((want_lp * w_lp).sum() + (want_ent * w_ent).sum(), logits)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert got[..., 11:].abs().max() == 0  # padded vocabulary gets no gradient


def test_row_chunks_give_the_same_values_and_gradients(monkeypatch):
    from agentrl.train.megatron import logprobs as module

    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(5, 6, 13, dtype=torch.float64, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, 12, (5, 6), generator=g)
    w = torch.randn(5, 6, dtype=torch.float64, generator=g)
    results = []
    for chunk in (1 << 26, 13 * 4):  # one chunk; chunks of 4 rows (the last one shorter)
        monkeypatch.setattr(module, "_CHUNK_ELEMENTS", chunk)
        lp, ent = vocab_parallel_logprobs(logits, targets, vocab_size=12, temperature=1.3, with_entropy=True)
        (grad,) = torch.autograd.grad((lp.double() * w).sum() + ent.double().sum(), logits)
        results.append((lp, ent, grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


def test_bf16_logits_give_float32_results_and_bf16_gradients():
    logits = torch.randn(4, 50).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 50, (4,))
    lp, _ = vocab_parallel_logprobs(logits, targets)
    assert lp.dtype == torch.float32
    want = torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None])[:, 0]
    torch.testing.assert_close(lp, want, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(lp.sum(), logits)
    assert grad.dtype == torch.bfloat16


def test_entropy_without_grad_is_detached_and_logprob_grad_unchanged():
    logits = torch.randn(2, 3, 9, requires_grad=True)
    targets = torch.randint(0, 9, (2, 3))
    lp, ent = vocab_parallel_logprobs(logits, targets, with_entropy=True, entropy_grad=False)
    assert not ent.requires_grad
    (g1,) = torch.autograd.grad(lp.sum(), logits)
    (g2,) = torch.autograd.grad(torch.log_softmax(logits, -1).gather(-1, targets[..., None]).sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="disagree"):
        vocab_parallel_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        vocab_parallel_logprobs(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), temperature=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 4 * world, dtype=torch.float64, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, 4 * world - 3, (6,), generator=g)
    w = torch.randn(6, dtype=torch.float64, generator=g)
    part = logits.detach()[:, rank * 4:(rank + 1) * 4].clone().requires_grad_()
    lp, ent = vocab_parallel_logprobs(part, targets, vocab_size=4 * world - 3, with_entropy=True,
                                      group=dist.group.WORLD)
    (grad,) = torch.autograd.grad((lp.double() * w).sum() + ent.double().sum(), part)
    torch.save({"lp": lp.detach(), "ent": ent.detach(), "grad": grad}, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_the_dense_result(tmp_path):
    """Two gloo processes, each holding half the vocabulary (the last 3 ids are padding)."""
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 4 * world, dtype=torch.float64, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, 4 * world - 3, (6,), generator=g)
    w = torch.randn(6, dtype=torch.float64, generator=g)
    want_lp, want_ent = _dense(logits, targets, 4 * world - 3, 1.0)
    (want_grad,) = torch.autograd.grad((want_lp * w).sum() + want_ent.sum(), logits)
    for r, p in enumerate(parts):
        torch.testing.assert_close(p["lp"], want_lp.detach().float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p["ent"], want_ent.detach().float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(p["grad"], want_grad[:, r * 4:(r + 1) * 4], atol=1e-5, rtol=1e-4)


def test_compiled_kernels_match_the_eager_ones(monkeypatch):
    """The fused (``torch.compile``d) chunk functions used on CUDA, compiled here for the CPU."""
    from agentrl.train.megatron import logprobs as module
    from agentrl.utils.compile import MaybeCompiled

    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 9, 37, generator=g) * 2).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 35, (2, 9), generator=g)
    w = torch.randn(2, 9, generator=g)
    results = []
    for compiled in (False, True):
        kernels = {}

        def kernel(name, _logits, compiled=compiled, kernels=kernels):
            fn = {"stats": module._chunk_stats, "grad": module._chunk_grad}[name]
            if compiled:
                fn = kernels.setdefault(name, MaybeCompiled(fn, enabled=True))
                fn.fn = None  # a compiler failure must fail the test, not fall back
            return fn

        monkeypatch.setattr(module, "_kernel", kernel)
        lp, ent = vocab_parallel_logprobs(logits, targets, vocab_size=35, temperature=0.9, with_entropy=True)
        (grad,) = torch.autograd.grad((lp * w).sum() + ent.sum(), logits)
        results.append((lp, ent, grad))
    (lp0, ent0, g0), (lp1, ent1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    assert g1.dtype == torch.bfloat16 and g1[..., 35:].abs().max() == 0
    torch.testing.assert_close(g1.float(), g0.float(), atol=1e-2, rtol=1e-2)
