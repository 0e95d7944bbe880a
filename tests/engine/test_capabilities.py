"""Engine capabilities are small protocols: which engines have which, and what the weight sync
does with each (an HF folder for engines in other processes, the tensors for the rest)."""

import pytest

from agentrl.cluster import EnginePool
from agentrl.engine import (Closable, Engine, LoadsWeightsFromDisk, OnDevice, ReleasesMemory, ReportsMetrics,
                            SamplingParams)
from agentrl.engine.embedded import EmbeddedEngine
from agentrl.engine.sglang import SGLangEngine
from agentrl.models import load_model
from agentrl.rollout.async_partial import InterruptibleEngine
from agentrl.sync import sync_weights
from agentrl.testing import FakeEngine

CAPABILITIES = (Closable, ReleasesMemory, ReportsMetrics, LoadsWeightsFromDisk, OnDevice)


def _has(engine) -> set[str]:
    assert isinstance(engine, Engine)
    return {p.__name__ for p in CAPABILITIES if isinstance(engine, p)}


async def test_each_engine_has_its_capabilities():
    fake = FakeEngine(responder=lambda ids, sp: [1])
    assert _has(fake) == set()
    assert _has(InterruptibleEngine(fake)) == set()  # the rollout's wrapper: capabilities stay with the engine
    assert _has(EnginePool([fake], health_interval=0)) == {"Closable", "ReleasesMemory", "ReportsMetrics"}
    sglang = SGLangEngine("http://127.0.0.1:9")
    assert _has(sglang) == {"Closable", "LoadsWeightsFromDisk"}
    await sglang.close()
    model, tok = load_model("tiny-qwen2", device="cpu")
    async with EmbeddedEngine(model, tok, max_batch_size=1, max_seq_len=32) as embedded:
        assert _has(embedded) == {"Closable", "ReleasesMemory", "ReportsMetrics", "OnDevice"}
        assert str(embedded.device) == "cpu"


async def test_an_engine_pool_frees_memory_only_on_members_that_can():
    class Releasing(FakeEngine):
        def __init__(self):
            super().__init__(responder=lambda ids, sp: [1])
            self.calls = []

        async def release_memory(self):
            self.calls.append("release")

        async def resume_memory(self):
            self.calls.append("resume")

    releasing, plain = Releasing(), FakeEngine(responder=lambda ids, sp: [2])
    pool = EnginePool([releasing, plain], health_interval=0)
    await pool.release_memory()
    await pool.resume_memory()
    assert releasing.calls == ["release", "resume"]
    await pool.close()


class _Trainer:
    def __init__(self):
        self.exported = []

    def weights(self):
        return iter([("w", 1.0)])

    def export_hf(self, path):
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        self.exported.append(path.name)


class _DiskEngine(FakeEngine):
    """An engine in another process, as far as the sync can tell."""

    def __init__(self):
        super().__init__(responder=lambda ids, sp: [1])
        self.loaded = []

    async def update_weights_from_disk(self, path, *, version=None):
        self.loaded.append((path, version))
        return await self.update_weights(None, version=version)


async def test_sync_writes_a_folder_for_engines_that_load_from_disk(tmp_path):
    engine, trainer = _DiskEngine(), _Trainer()
    assert isinstance(engine, LoadsWeightsFromDisk)
    assert await sync_weights(engine, trainer, staging_dir=tmp_path) == 1
    assert await sync_weights(engine, trainer, staging_dir=tmp_path) == 2
    assert trainer.exported == ["weights_v1", "weights_v2"]
    assert [p for p, _ in engine.loaded] == [str(tmp_path / "weights_v1"), str(tmp_path / "weights_v2")]
    assert [p.name for p in tmp_path.iterdir()] == ["weights_v2"]  # the previous version's folder is gone
    with pytest.raises(ValueError, match="staging_dir"):
        await sync_weights(engine, trainer)


async def test_sync_hands_in_process_engines_the_tensors(tmp_path):
    seen = []

    class InProcess(FakeEngine):
        async def update_weights(self, weights=None, *, version=None):
            seen.append(list(weights))
            return await super().update_weights(None, version=version)

    engine, trainer = InProcess(responder=lambda ids, sp: [1]), _Trainer()
    assert await sync_weights(engine, trainer, staging_dir=tmp_path, version=5) == 5
    assert seen == [[("w", 1.0)]] and trainer.exported == [] and not any(tmp_path.iterdir())
    assert (await engine.generate([1], SamplingParams())).weight_version == 5
