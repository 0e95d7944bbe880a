"""HF <-> Megatron weight conversion: layouts, tensor-parallel sharding, exact round trips."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from megatron_helpers import ARCHS, random_hf_model

from agentrl.testing import tiny_config
from agentrl.train.megatron.convert import (
    WeightConversionError,
    export_hf_weights,
    hf_shapes,
    load_hf_weights,
    qkv_from_megatron,
    qkv_to_megatron,
    save_hf_checkpoint,
    shard,
    unshard,
)
from agentrl.train.megatron.shape import ModelShape, UnsupportedModelError


def _shape(**kw) -> ModelShape:
    base = ModelShape.from_hf(tiny_config("qwen2"))
    return dataclasses.replace(base, **kw)


def test_qkv_layout_groups_query_heads_with_their_kv_head():
    # 4 query heads, 2 KV groups, head dim 1: rows are labelled by head
    shape = _shape(num_attention_heads=4, num_query_groups=2, head_dim=1, hidden_size=4)
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    k = torch.tensor([[20.0], [21.0]])
    v = torch.tensor([[30.0], [31.0]])
    fused = qkv_to_megatron(q, k, v, shape)
    # group 0: q0 q1 k0 v0, group 1: q2 q3 k1 v1
    assert fused[:, 0].tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    back = qkv_from_megatron(fused, shape)
    assert all(torch.equal(a, b) for a, b in zip(back, (q, k, v)))


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("kind", ["column", "row", "qkv", "fc1", "replicated"])
def test_shard_unshard_round_trip(kind, tp):
    full = torch.arange(8 * 12, dtype=torch.float32).reshape(8, 12)
    pieces = [shard(full, kind, tp, r) for r in range(tp)]
    assert torch.equal(unshard(pieces, kind), full)


def test_fc1_shard_holds_gate_and_up_of_its_rank():
    gate = torch.arange(4.0)[:, None]
    up = 100 + torch.arange(4.0)[:, None]
    full = torch.cat([gate, up])
    assert shard(full, "fc1", 2, 1)[:, 0].tolist() == [2, 3, 102, 103]


def test_vocab_shard_pads_with_zero_rows_and_unshard_cuts_them():
    full = torch.ones(5, 3)
    pieces = [shard(full, "vocab", 2, r, padded_vocab=6) for r in range(2)]
    assert [p.shape[0] for p in pieces] == [3, 3]
    assert pieces[1][-1].abs().sum() == 0
    assert torch.equal(unshard(pieces, "vocab", vocab_size=5), full)


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_megatron_hf_round_trip_is_exact(parallel, arch):
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model

    hf = random_hf_model(arch)
    shape = ModelShape.from_hf(hf.config)
    model = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention="sdpa"))
    load_hf_weights(model, shape, hf.state_dict())
    out = dict(export_hf_weights(model, shape))
    expected = {k: v for k, v in hf.state_dict().items() if not (shape.tie_embeddings and k == "lm_head.weight")}
    assert sorted(out) == sorted(expected) == sorted(hf_shapes(shape))
    for name, tensor in expected.items():
        assert torch.equal(out[name], tensor), name


def test_save_hf_checkpoint_loads_in_transformers(parallel, tmp_path):
    from transformers import AutoModelForCausalLM

    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model

    hf = random_hf_model("qwen3")
    shape = ModelShape.from_hf(hf.config)
    model = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention="sdpa"))
    load_hf_weights(model, shape, hf.state_dict())
    save_hf_checkpoint(model, shape, tmp_path, hf_config=hf.config, max_shard_bytes=200_000)
    assert (tmp_path / "model.safetensors.index.json").exists()  # small shards: several files
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    for name, tensor in hf.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    # and the folder loads back into Megatron
    again = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention="sdpa"))
    load_hf_weights(again, shape, tmp_path)
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), again.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_load_reports_missing_and_misshaped_tensors(parallel):
    from agentrl.train.megatron.model import MegatronModelConfig, build_gpt_model

    hf = random_hf_model("llama")
    shape = ModelShape.from_hf(hf.config)
    model = build_gpt_model(hf.config, MegatronModelConfig(dtype="float32", attention="sdpa"))
    state = dict(hf.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(WeightConversionError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf_weights(model, shape, state)
    state = dict(hf.state_dict())
    state["model.norm.weight"] = torch.ones(3)
    with pytest.raises(WeightConversionError, match=r"model.norm.weight: expected shape \(64,\)"):
        load_hf_weights(model, shape, state)


def test_unsupported_configs_fail_clearly():
    with pytest.raises(UnsupportedModelError, match="model_type one of"):
        ModelShape.from_hf(type("C", (), {"model_type": "gpt2"})())
    with pytest.raises(UnsupportedModelError, match="o_proj"):
        ModelShape.from_hf(tiny_config("llama", attention_bias=True))
    with pytest.raises(UnsupportedModelError, match="RoPE type"):
        ModelShape.from_hf(tiny_config("llama", rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                                                   "rope_theta": 1e4}))


def test_shape_reads_family_features():
    q2, q3, ll = (ModelShape.from_hf(tiny_config(a)) for a in ("qwen2", "qwen3", "llama"))
    assert (q2.qkv_bias, q2.qk_norm, q2.tie_embeddings) == (True, False, True)
    assert (q3.qkv_bias, q3.qk_norm, q3.head_dim) == (False, True, 16)
    assert (ll.qkv_bias, ll.qk_norm, ll.tie_embeddings) == (False, False, False)
    assert ModelShape.from_hf(tiny_config("qwen2", rope_theta=1e6, rms_norm_eps=1e-5)).norm_eps == 1e-5
    scaled = ModelShape.from_hf(tiny_config("llama", rope_parameters={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_theta": 5e5}))
    assert (scaled.rope_base, scaled.rope_scaling_factor) == (5e5, 8.0)
