"""GPTModel from HF configs: logits parity with transformers, attention backends, packing."""

from __future__ import annotations

import pytest
import torch
from megatron_helpers import ARCHS, random_hf_model, random_samples

from agentrl.train.megatron.batching import build_inputs, gather_response
from agentrl.train.megatron.shape import ModelShape


def _megatron(hf, attention="sdpa"):
    from agentrl.train.megatron.convert import load_hf_weights
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model

    model = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention=attention)).eval()
    load_hf_weights(model, ModelShape.from_hf(hf.config), hf.state_dict())
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(parallel, arch):
    hf = random_hf_model(arch, seed=1)
    model = _megatron(hf)
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(ids).logits
        got = model(ids, None, None)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rope_base_and_norm_eps_are_honoured(parallel):
    hf = random_hf_model("qwen2", rope_theta=1e6, rms_norm_eps=1e-5)
    assert hf.config.rope_parameters["rope_theta"] == 1e6
    model = _megatron(hf)
    ids = torch.arange(40).reshape(2, 20) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(ids, None, None), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_sdpa_backend_matches_megatron_local_attention(parallel):
    hf = random_hf_model("qwen3", seed=2)
    sdpa, local = _megatron(hf, "sdpa"), _megatron(hf, "local")
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(sdpa(ids, None, None), local(ids, None, None), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_packed_sequences_match_padded_ones(parallel, arch):
    hf = random_hf_model(arch, seed=3)
    model = _megatron(hf)
    samples = random_samples(4, vocab=256, seed=5)
    width = max(len(s.response_ids) for s in samples)
    results = []
    for pack in (False, True):
        inputs = build_inputs(samples, width, pack=pack, pad_multiple=8)
        with torch.no_grad():
            logits = model(inputs.input_ids, None, None, packed_seq_params=inputs.packed_seq_params())
        lp = torch.log_softmax(logits, -1).gather(-1, inputs.targets[..., None])[..., 0]
        results.append(gather_response(lp, inputs))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=1e-5)
    # and both agree with transformers, one sample at a time
    for i, s in enumerate(samples):
        with torch.no_grad():
            logits = hf(torch.tensor([s.tokens])).logits[0]
        lp = torch.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(s.tokens[1:])[:, None])[:, 0]
        r = len(s.response_ids)
        torch.testing.assert_close(results[1][i, width - r:], lp[-r:], atol=1e-4, rtol=1e-4)


def test_build_inputs_layouts():
    from agentrl.types import Sample

    a = Sample(prompt_ids=[5], response_ids=[6, 7], loss_mask=[1, 1], rollout_logprobs=[-1.0, -1.0])
    b = Sample(prompt_ids=[8, 9, 10], response_ids=[11], loss_mask=[1], rollout_logprobs=[-1.0])
    padded = build_inputs([a, b], width=2, pack=False, pad_multiple=4)
    assert padded.input_ids.tolist() == [[5, 6, 7, 0], [8, 9, 10, 11]]
    assert padded.index.tolist() == [[0, 1], [0, 6]] and padded.valid.tolist() == [[True, True], [False, True]]
    packed = build_inputs([a, b], width=2, pack=True, pad_multiple=4)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 0]]
    assert packed.cu_seqlens.tolist() == [0, 3, 7, 8] and packed.max_seqlen == 4
    assert packed.index.tolist() == [[0, 1], [0, 5]]
    # targets are the next token: position 5 (token 10) predicts 11
    assert packed.targets[0, 5].item() == 11


def test_model_options_are_validated(parallel):
    from agentrl.train.megatron.attention import have_transformer_engine
    from agentrl.train.megatron.model import MegatronModelConfig, transformer_config

    shape = ModelShape.from_hf(random_hf_model("qwen2").config)
    with pytest.raises(ValueError, match="recompute must be one of"):
        transformer_config(shape, MegatronModelConfig(recompute="some"))
    with pytest.raises(ValueError, match="attention backend must be one of"):
        MegatronModelConfig(attention="flash").validate()
    if not have_transformer_engine():
        with pytest.raises(ImportError, match="Transformer Engine"):
            MegatronModelConfig(attention="te").validate()


def test_full_recompute_gives_the_same_gradients(parallel):
    from agentrl.train.megatron.convert import load_hf_weights
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model

    hf = random_hf_model("llama", seed=4)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    grads = []
    for recompute in ("none", "full"):
        model = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention="sdpa", recompute=recompute))
        load_hf_weights(model, ModelShape.from_hf(hf.config), hf.state_dict())
        model.train()
        model(ids, None, None).logsumexp(-1).mean().backward()
        grads.append(model.decoder.layers[0].mlp.linear_fc1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_fusions_give_the_same_logits_and_gradients(parallel):
    """``fusions``: megatron-core's compiled SwiGLU / bias-dropout-add and the compiled RMSNorm."""
    from agentrl.train.megatron.convert import load_hf_weights
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model

    hf = random_hf_model("qwen3", seed=5)
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(3))
    outs = []
    for fusions in (False, True):
        model = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention="sdpa", fusions=fusions))
        load_hf_weights(model, ModelShape.from_hf(hf.config), hf.state_dict())
        model.train()
        logits = model(ids, None, None)
        logits.logsumexp(-1).mean().backward()
        norm = model.decoder.layers[0].input_layernorm
        outs.append((logits.detach(), norm.weight.grad.clone(), norm._norm.active))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-5, rtol=1e-4)
    assert outs[1][2] and not outs[0][2]  # compiled with fusions (and it did not fall back), eager without
