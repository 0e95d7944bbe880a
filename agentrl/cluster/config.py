"""Settings of a run on Ray: engines, environment workers, weight sync, fault tolerance (imported without Ray)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass
class ClusterConfig:
    """Ray: engines and trainer as actors in placement groups (docs/scaling.md)."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--use-ray": "use_ray", "--ray-address": "ray_address", "--num-engines": "num_engines",
        "--rollout-num-gpus-per-engine": "rollout_num_gpus_per_engine", "--num-env-workers": "num_env_workers",
        "--ray-weight-sync": "ray_weight_sync", "--use-fault-tolerance": "use_fault_tolerance",
        "--engine-health-interval": "engine_health_interval", "--engine-health-timeout": "engine_health_timeout",
    }

    use_ray: bool = False
    """Run engines and trainer as Ray actors in placement groups (see agentrl.cluster, docs/scaling.md)."""
    ray_address: str | None = None
    """Ray cluster to join with --use-ray (auto, HOST:6379 or ray://HOST:10001); none: start a local one."""
    num_engines: int = 1
    """Inference engines with --use-ray (embedded-engine actors, or SGLang servers with --engine sglang)."""
    rollout_num_gpus_per_engine: int = 1
    """GPUs of each engine with --use-ray (SGLang servers: the tensor-parallel size)."""
    num_env_workers: int = 0
    """Ray actors that host environments and their tools (CPU-heavy envs) with --use-ray; 0: in the driver."""
    ray_weight_sync: Literal["object_store", "nccl", "gloo"] = "object_store"
    """With --use-ray: object_store (a CPU state dict every engine reads) | nccl (broadcast from the trainer's GPU
    to the engines' GPUs) | gloo (the same broadcast over the CPU)."""
    use_fault_tolerance: bool = True
    """With --use-ray: restart a dead or hung engine with the current weights and re-run its requests elsewhere."""
    engine_health_interval: float = 10.0
    """Seconds between health checks of every engine with --use-ray (0: only failed requests reveal a dead one)."""
    engine_health_timeout: float = 60.0
    """A health check unanswered for this many seconds marks the engine hung."""

    def problems(self) -> list[str]:
        import importlib.util

        out = [f"{flag} must be >= {low}; got {value}" for flag, value, low in (
            ("--num-engines", self.num_engines, 1), ("--rollout-num-gpus-per-engine", self.rollout_num_gpus_per_engine, 1),
            ("--num-env-workers", self.num_env_workers, 0)) if value is None or value < low]
        if self.engine_health_interval < 0 or self.engine_health_timeout <= 0:
            out.append(f"--engine-health-interval must be >= 0 and --engine-health-timeout > 0; got "
                       f"{self.engine_health_interval} and {self.engine_health_timeout}")
        if not self.use_ray:
            for flag, value, default in (("--num-engines", self.num_engines, 1),
                                         ("--num-env-workers", self.num_env_workers, 0),
                                         ("--ray-address", self.ray_address, None)):
                if value != default:
                    out.append(f"{flag} {value} needs --use-ray (several engines and env workers run as Ray actors)")
        elif importlib.util.find_spec("ray") is None:
            out.append("Ray is not installed, and --use-ray (or a trainer of several ranks) runs engines and ranks "
                       "as Ray actors: pip install 'agentrl[ray]'")
        return out


@dataclass
class TrainerGroupConfig:
    """Trainer group: the trainer as several ranks, one Ray actor each (docs/scaling.md)."""

    FLAGS: ClassVar[dict[str, str]] = {
        "--actor-num-nodes": "actor_num_nodes", "--actor-num-gpus-per-node": "actor_num_gpus_per_node",
        "--update-weight-buffer-size": "update_weight_buffer_size", "--dry-run": "dry_run",
    }

    actor_num_nodes: int = 1
    """Nodes the trainer ranks span; ranks = --actor-num-nodes x --actor-num-gpus-per-node."""
    actor_num_gpus_per_node: int = 1
    """Trainer ranks per node, one GPU each (CPU bundles with gloo on a cluster without GPUs). More than one rank in
    all runs the trainer as a group of Ray actors: data parallel = ranks / (TP x PP x CP)."""
    update_weight_buffer_size: int = 512 * 1024**2
    """Bytes of gathered HF-named tensors sent to the engines at a time in a weight sync from a trainer group (slime's
    name); no process holds more of the full model than this."""
    dry_run: bool = False
    """Print the trainer layout and the memory per GPU it needs (weights, gradients, optimiser state, activations),
    then exit without loading anything."""

    @property
    def world_size(self) -> int:
        """Trainer ranks in all."""
        return self.actor_num_nodes * self.actor_num_gpus_per_node

    def problems(self) -> list[str]:
        return [f"{flag} must be >= {low}; got {value}" for flag, value, low in (
            ("--actor-num-nodes", self.actor_num_nodes, 1), ("--actor-num-gpus-per-node", self.actor_num_gpus_per_node, 1),
            ("--update-weight-buffer-size", self.update_weight_buffer_size, 1)) if value is None or value < low]
