"""launch_sglang's whole path (start, health, shutdown) with `agentrl serve --engine fake` standing in
for SGLang, and the client riding out a server killed and restarted mid-run."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import sys
import textwrap

import httpx
import pytest
import torch
from safetensors.torch import save_file

from agentrl.engine.base import EngineError, SamplingParams
from agentrl.engine.sglang import SGLangEngine, launch_sglang


def free_port(span: int = 1) -> int:
    """A port p such that p .. p+span-1 are free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + span < 65000 and all(_free(base + k) for k in range(span)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def fake_server(latency: float = 0.0, prelude: str = ""):
    """A server command running `agentrl serve --engine fake` (optionally after some Python)."""
    def command(index: int, port: int) -> list[str]:
        args = ["--engine", "fake", "--port", str(port), "--log-level", "warning", "--fake-latency", str(latency)]
        if not prelude:
            return [sys.executable, "-m", "agentrl.engine.server", *args]
        code = prelude + f"\nfrom agentrl.engine.server import serve_main\nserve_main({args!r})"
        return [sys.executable, "-c", code]
    return command


def expected(prompt_last: int) -> list[int]:
    return [(prompt_last + k + 1) % 32000 for k in range(8)]


def test_launch_servers_and_router_then_shut_everything_down(tmp_path):
    base = free_port(3)
    cluster = launch_sglang(
        "fake-model", num_servers=2, base_port=base, tp=2, log_dir=tmp_path / "logs",
        server_command=fake_server(prelude="import os; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'], flush=True)"),
        router_command=lambda urls, port: fake_server()(0, port),
    )
    with cluster:
        assert cluster.server_urls == [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
        assert cluster.router_url == cluster.url == f"http://127.0.0.1:{base + 2}"
        assert set(cluster.poll().values()) == {None}
        logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
        assert logs == ["router.log", "server-0.log", "server-1.log"]
        assert "CVD=0,1" in (tmp_path / "logs" / "server-0.log").read_text()
        assert "CVD=2,3" in (tmp_path / "logs" / "server-1.log").read_text()

        weights = tmp_path / "weights"  # a model folder the servers read (agentrl serve reads the files itself)
        weights.mkdir()
        save_file({"w": torch.zeros(2)}, str(weights / "model.safetensors"))

        async def use() -> None:
            async with cluster.engine(backoff=0.05) as engine:
                assert (await engine.generate([10], SamplingParams())).token_ids == expected(10)
                assert await engine.update_weights(weights) == 1
        asyncio.run(use())
        for url in cluster.server_urls:  # weight updates go to the servers, not the router
            assert httpx.get(url + "/get_weight_version").json() == {"weight_version": "1"}
    assert all(code is not None for code in cluster.poll().values())
    assert all(_free(base + k) for k in range(3))
    cluster.close()  # a second close is harmless


@pytest.mark.skipif(importlib.util.find_spec("sglang") is not None, reason="SGLang is installed: this would start it")
def test_default_command_runs_sglang_launch_server_and_reports_why_it_died(tmp_path):
    # SGLang is not installed here, so the real command path ends in a clear error with the log tail.
    with pytest.raises(EngineError) as exc:
        launch_sglang("Qwen/Qwen3-0.6B", base_port=free_port(), log_dir=tmp_path, health_timeout=60)
    message = str(exc.value)
    assert "server-0 exited with code 1" in message and str(tmp_path / "server-0.log") in message
    assert "No module named 'sglang'" in message


def test_a_server_that_dies_at_start_fails_with_its_log_tail(tmp_path):
    def dying(index: int, port: int) -> list[str]:
        return [sys.executable, "-c", "import sys; print('CUDA out of memory while loading'); sys.exit(3)"]

    with pytest.raises(EngineError, match=r"(?s)exited with code 3.*CUDA out of memory"):
        launch_sglang("m", base_port=free_port(), server_command=dying, log_dir=tmp_path)


def test_a_server_that_never_gets_healthy_times_out_and_is_killed(tmp_path):
    pid_file = tmp_path / "pid"

    def sleeper(index: int, port: int) -> list[str]:
        code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
        return [sys.executable, "-c", code]

    with pytest.raises(EngineError, match="not healthy after 1 s"):
        launch_sglang("m", base_port=free_port(), server_command=sleeper, log_dir=tmp_path, health_timeout=1)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_a_port_in_use_is_refused_before_starting_anything():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(EngineError, match=f"port {port} .* already in use"):
            launch_sglang("m", base_port=port, server_command=fake_server())


def test_close_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    stubborn = textwrap.dedent("""
        import http.server, signal, sys
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers()
            def log_message(self, *args):
                pass
        http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
    """)
    cluster = launch_sglang("m", base_port=free_port(), log_dir=tmp_path,
                            server_command=lambda i, port: [sys.executable, "-c", stubborn, str(port)])
    cluster.close(grace=0.5)
    assert cluster.poll() == {"server-0": -signal.SIGKILL}


async def test_client_rides_out_a_server_killed_and_restarted_mid_run(tmp_path):
    port = free_port()
    command = fake_server(latency=0.4)
    first = launch_sglang("m", base_port=port, server_command=command, log_dir=tmp_path / "first")
    engine = SGLangEngine(first.url, max_retries=40, backoff=0.05, max_backoff=0.3)
    try:
        early = [asyncio.ensure_future(engine.generate([i], SamplingParams(), rid=f"req-{i}")) for i in range(30)]
        await asyncio.sleep(0.2)  # all 30 are inside the server now, none answered yet
        os.killpg(first.processes[0].process.pid, signal.SIGKILL)
        first.processes[0].process.wait()
        late = [asyncio.ensure_future(engine.generate([i], SamplingParams(), rid=f"req-{i}")) for i in range(30, 40)]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in early + late)  # still retrying, nothing lost or failed
        second = await asyncio.to_thread(launch_sglang, "m", base_port=port, server_command=command,
                                         log_dir=tmp_path / "second")
        try:
            results = await asyncio.gather(*early, *late)
            info = httpx.get(second.url + "/get_server_info").json()
        finally:
            second.close()
    finally:
        first.close()
        await engine.aclose()
    assert [r.token_ids for r in results] == [expected(i) for i in range(40)]
    assert all(r.finish_reason == "stop" for r in results)
    assert engine.num_retries >= 40  # every request had to be retried at least once
    assert info["internal_states"][0]["num_requests_total"] == 40  # each reached the new server exactly once
