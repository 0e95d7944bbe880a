"""Trainer layouts: every inconsistent one is a single line and exit 2 before anything loads; the memory
estimate per GPU against hand counts; ``train.py --dry-run``."""

from __future__ import annotations

import pytest

from agentrl import train_cli
from agentrl.train.estimate import GIB, ModelSize, estimate_memory
from agentrl.train.layout import ModelDims, TrainerLayout, layout_problems, model_config, model_dims

QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+1?", "label": "2"}\n')
    return str(path)


@pytest.fixture
def nothing_loads(monkeypatch):
    """The loop must not start (it is what loads models)."""
    import agentrl.loop

    def refuse(cfg):
        raise AssertionError("the run started")

    monkeypatch.setattr(agentrl.loop, "train", refuse)


BAD = {  # flags -> the one problem line it must give (a fragment of it)
    "world not divisible": (["--trainer", "megatron", "--actor-num-gpus-per-node", "3", "--tensor-model-parallel-size",
                             "2"], "= 2 does not divide the 3 trainer rank(s)"),
    "heads / KV heads": (["--trainer", "megatron", "--actor-num-gpus-per-node", "4", "--tensor-model-parallel-size",
                          "4"], "must divide the attention heads (4) and the KV heads (2)"),
    "layers": (["--trainer", "megatron", "--actor-num-gpus-per-node", "4", "--pipeline-model-parallel-size", "4"],
               "--pipeline-model-parallel-size 4 must divide the layers (2)"),
    "global batch": (["--trainer", "megatron", "--actor-num-gpus-per-node", "4", "--global-batch-size", "2",
                      "--num-steps-per-rollout", "2"], "--global-batch-size 2 must be divisible by the data-parallel "
                                                        "size 4"),
    "context parallel": (["--trainer", "megatron", "--actor-num-gpus-per-node", "2", "--context-parallel-size", "2"],
                         "--context-parallel-size 2: the attention backends agentrl ships"),
    "torch trainer TP": (["--trainer", "torch", "--actor-num-gpus-per-node", "2", "--tensor-model-parallel-size", "2"],
                         "tensor and pipeline parallelism need --trainer megatron"),
    "TP on one rank": (["--trainer", "megatron", "--tensor-model-parallel-size", "2"],
                       "= 2 does not divide the 1 trainer rank(s)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_layout_is_one_line_and_exit_2(case, prompts, nothing_loads, capsys):
    flags, expected = BAD[case]
    argv = ["--model-path", "tiny-qwen2", "--prompt-data", prompts, "--rollout-batch-size", "2",
            "--n-samples-per-prompt", "2", *flags]
    assert train_cli.main(argv, prog="train.py") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert len(lines) == 1, lines
    assert expected in lines[0]


def test_without_ray_a_group_of_ranks_says_so_once(prompts, nothing_loads, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    argv = ["--model-path", "tiny-qwen2", "--prompt-data", prompts, "--rollout-batch-size", "2",
            "--n-samples-per-prompt", "2", "--trainer", "megatron", "--actor-num-gpus-per-node", "3",
            "--tensor-model-parallel-size", "2"]
    assert train_cli.main(argv, prog="train.py") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]
    assert len(lines) == 2, lines  # the layout's problem and the missing Ray, one line each
    assert sum("does not divide the 3 trainer rank(s)" in line for line in lines) == 1
    assert sum("pip install 'agentrl[ray]'" in line for line in lines) == 1


def test_a_good_layout_has_no_problems():
    dims = ModelDims(num_layers=28, num_heads=28, num_kv_heads=4)
    for layout in (TrainerLayout("megatron", 8, tp=2), TrainerLayout("megatron", 16, tp=4, pp=2, nodes=2),
                   TrainerLayout("torch", 8)):
        assert layout_problems(layout, dims, global_batch_size=64) == []


def test_model_dims_of_a_tiny_alias_without_loading():
    assert model_dims(model_config("tiny-qwen2")) == ModelDims(num_layers=2, num_heads=4, num_kv_heads=2)
    assert model_config("/no/such/folder") is None


def test_parameter_count_of_qwen2_7b():
    # Qwen2-7B: 7.62B parameters (its model card); per layer: q, k, v, o with q/k/v biases, the SwiGLU MLP, two norms
    h, f, kv = 3584, 18944, 512
    layer = h * h + 2 * h * kv + (h + 2 * kv) + h * h + 3 * h * f + 2 * h
    size = ModelSize.of(QWEN2_7B)
    assert size.layer_params == layer
    assert size.num_parameters == 28 * layer + 2 * 152064 * h + h == 7_615_616_512


def test_memory_estimate_by_hand():
    n_layer = ModelSize.of(QWEN2_7B).layer_params
    emb = 152064 * 3584
    # megatron TP 2, one stage: half of each layer and each embedding, the final norm whole
    m = estimate_memory(QWEN2_7B, TrainerLayout("megatron", 8, tp=2, sequence_parallel=True),
                        tokens_per_micro_batch=1024)
    stage = 28 * n_layer / 2 + emb + 3584
    assert m.weights == pytest.approx(2 * stage)
    assert m.gradients == pytest.approx(4 * stage)
    assert m.optimizer == pytest.approx(12 * stage / 4)  # two moments + main weights, over DP 4
    per_token_layer = 2 * (4 * 3584 / 2 + (2 * 3584 + 2 * 512) / 2 + 3 * 18944 / 2)
    assert m.activations == pytest.approx(1024 * (28 * per_token_layer + 6 * 152064 / 2))
    # without the distributed optimiser every DP rank keeps the whole state of its shard
    assert estimate_memory(QWEN2_7B, TrainerLayout("megatron", 8, tp=2), distributed_optimizer=False).optimizer \
        == pytest.approx(12 * stage)
    # FSDP2 over 8: float32 master, gradient and two moments sharded by 8, plus two gathered bf16 layers
    t = estimate_memory(QWEN2_7B, TrainerLayout("torch", 8))
    n = ModelSize.of(QWEN2_7B).num_parameters
    assert t.weights == pytest.approx(4 * n / 8 + 2 * 2 * n_layer)
    assert t.optimizer == pytest.approx(8 * n / 8)
    # full recompute keeps one hidden state per layer plus one layer's activations
    r = estimate_memory(QWEN2_7B, TrainerLayout("megatron", 8, tp=2), tokens_per_micro_batch=1, recompute="full")
    assert r.activations == pytest.approx(28 * 2 * 3584 + 2 * (4 * 3584 + (2 * 3584 + 2 * 512) / 2 + 3 * 18944 / 2)
                                          + 6 * 152064 / 2)


def test_a_7b_model_does_not_fit_one_80gb_gpu_but_fits_eight():
    one = estimate_memory(QWEN2_7B, TrainerLayout("megatron", 1), tokens_per_micro_batch=4096)
    eight = estimate_memory(QWEN2_7B, TrainerLayout("megatron", 8, tp=2, sequence_parallel=True),
                            tokens_per_micro_batch=4096)
    assert one.total > 80 * GIB > eight.total


def test_dry_run_prints_layout_and_memory_without_prompts(nothing_loads, capsys):
    argv = ["--model-path", "tiny-qwen2", "--trainer", "megatron", "--actor-num-gpus-per-node", "4",
            "--tensor-model-parallel-size", "2", "--sequence-parallel", "--dry-run"]
    assert train_cli.main(argv, prog="train.py") == 0
    out = capsys.readouterr().out
    assert "megatron trainer: 4 ranks (1 node x 4), TP 2 x PP 1 x CP 1 x DP 2, sequence parallel" in out
    for part in ("weights", "gradients", "optimiser state", "activations", "total"):
        assert part in out
