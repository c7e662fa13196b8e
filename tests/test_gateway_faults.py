"""Faults in the gateway: request ids on every error, server-side deadlines, malformed JSON, a dead engine
rebuilt (or /healthz failing when it cannot be), and no engine process outliving its gateway.

The fast tests run the transformers engine in-process; the vLLM ones run the gateway as its own process so
that it and its EngineCore can be killed with SIGKILL."""

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest
from gateway_support import loopback_gateway_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from finetune.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.logs import JsonFormatter
from services.inference.engine import engine_run_dir
from services.inference.engine.base import GenerationChunk, SamplingOptions
from services.inference.engine.process_records import ProcessId, descendants
from services.inference.engine.transformers_engine import TransformersEngine
from services.inference.engine.vllm_engine import vllm_available
from services.inference.server import InferenceServer, build_server
from services.inference.supervisor import EngineWatch

ALIAS = "faults-test-prod"  # never set: the default base model serves
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
COUNTING = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
REPO = Path(__file__).resolve().parents[1]


def chat(gateway: InferenceServer, messages=QUESTION, **fields: object) -> httpx.Response:
    body = {"model": ALIAS, "messages": messages, "max_tokens": 4, "temperature": 0, **fields}
    return httpx.post(f"{gateway.http_url}/v1/chat/completions", json=body, timeout=120)


def on_loop(gateway: InferenceServer, coroutine: Coroutine) -> object:
    return asyncio.run_coroutine_threadsafe(coroutine, gateway.loop).result(120)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_carries_its_request_id(response: httpx.Response) -> str:
    request_id = response.headers["x-request-id"]
    assert request_id and f"(request id {request_id})" in response.json()["error"]["message"]
    return request_id


def supervised_settings(data_root: Path, trainer_address: str, **overrides: object):
    values: dict[str, object] = {
        "model": ALIAS,
        "max_model_len": 1024,
        "require_api_key": False,
        "engine_check_interval_seconds": 0.2,
        "engine_restart_attempts": 2,
        "engine_restart_backoff_seconds": 0.05,
        **overrides,
    }
    return loopback_gateway_settings(data_root, trainer_address, **values)


@pytest.fixture(scope="module")
def gateway(data_root: Path, trainer_server) -> Iterator[InferenceServer]:
    server = build_server(supervised_settings(data_root, trainer_server.address))
    yield server
    server.stop(grace=1)


class EngineFailingAfterFirstChunk(TransformersEngine):
    """The real engine with a fault in its generation path: it raises after its first chunk while its health
    check stays good, so the fault is the request's (a 500), not the engine's (a rebuild)."""

    async def generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        async for chunk in super().generate(prompt_ids, sampling, request_id):
            yield chunk
            raise RuntimeError("a fault inside the engine call")


@pytest.fixture
def faulty_engine(gateway: InferenceServer) -> Iterator[None]:
    served = gateway.state.manager.default
    healthy = served.watch
    faulty = on_loop(gateway, EngineFailingAfterFirstChunk.load(healthy.engine.model))
    served.watch = EngineWatch(faulty, served.name, load_seconds=1.0)
    yield
    served.watch = healthy
    on_loop(gateway, faulty.shutdown())


class _FormattedLines(logging.Handler):
    """Log lines as the services write them (JSON with the request id of the call being served)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[list[dict]]:
    handler = _FormattedLines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler.lines
    root.removeHandler(handler)


def test_malformed_json_names_the_problem_and_where(gateway):
    body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": }'
    response = httpx.post(
        f"{gateway.http_url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    column = body.index("}", body.index("max_tokens")) + 1
    assert error["message"] == f"body is not valid JSON: Expecting value at line 1 column {column}"
    assert error["param"] is None


def test_a_fault_in_the_engine_call_is_a_500_with_the_request_id(gateway, faulty_engine, log_lines):
    response = chat(gateway)
    assert response.status_code == 500
    request_id = assert_carries_its_request_id(response)
    assert response.json()["error"]["type"] == "internal_error"
    assert "a fault inside the engine call" not in response.text  # no internals to the caller
    logged = [line for line in log_lines if line.get("request_id") == request_id]
    assert any(line["msg"] == "internal error" and "a fault inside" in line["exc"] for line in logged)


def test_a_fault_while_streaming_ends_the_stream_with_an_error_event_carrying_the_id(
    gateway, faulty_engine, log_lines
):
    body = {"model": ALIAS, "messages": QUESTION, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{gateway.http_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    last = json.loads(events[-1])
    assert last["error"]["type"] == "internal_error"
    assert last["error"]["message"] == f"internal error (request id {request_id})"
    assert any(line.get("request_id") == request_id and "exc" in line for line in log_lines)


def test_a_dead_engine_is_rebuilt_while_requests_get_503_with_retry_after(gateway):
    served = gateway.state.manager.default
    dead = served.engine
    deaths = counter("gateway_engine_deaths_total", model=served.name, kind="dead")
    rebuilt = counter("gateway_engine_restarts_total", model=served.name, outcome="succeeded")
    on_loop(gateway, dead.shutdown())  # the engine stops behind the gateway's back

    response = chat(gateway)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert_carries_its_request_id(response)

    give_up_at = time.monotonic() + 60
    while (response := chat(gateway, max_tokens=12)).status_code != 200:
        assert response.status_code == 503 and time.monotonic() < give_up_at
        time.sleep(0.2)
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    assert served.engine is not dead
    assert counter("gateway_engine_deaths_total", model=served.name, kind="dead") == deaths + 1
    assert counter("gateway_engine_restarts_total", model=served.name, outcome="succeeded") == rebuilt + 1
    assert httpx.get(f"{gateway.http_url}/readyz").status_code == 200
    exported = httpx.get(f"{gateway.http_url}/metrics").text
    assert "gateway_engine_deaths_total{" in exported and "gateway_engine_restarts_total{" in exported


def test_healthz_fails_once_the_engine_could_not_be_rebuilt(data_root, trainer_server):
    server = build_server(supervised_settings(data_root, trainer_server.address))
    served = server.state.manager.default
    folder = served.engine.model.folder
    away = folder.with_name(folder.name + ".away")
    failed = counter("gateway_engine_restarts_total", model=served.name, outcome="failed")
    try:
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200
        folder.rename(away)  # the weights are gone: every rebuild fails
        on_loop(server, served.engine.shutdown())
        give_up_at = time.monotonic() + 60
        while (health := httpx.get(f"{server.http_url}/healthz")).status_code == 200:
            assert time.monotonic() < give_up_at
            time.sleep(0.2)
        assert health.status_code == 503
        assert "could not be rebuilt in 2 attempts" in health.json()["reason"]
        assert counter("gateway_engine_restarts_total", model=served.name, outcome="failed") == failed + 2
        response = chat(server)
        assert response.status_code == 503
        assert "could not be rebuilt" in response.json()["error"]["message"]
    finally:
        if away.exists():
            away.rename(folder)
        server.stop(grace=0)


class EngineThatStalls(TransformersEngine):
    """The real engine, except that generations never get a token while its health check stays good: the
    stall vLLM showed under load ("No available shared memory broadcast block")."""

    async def generate(
        self, prompt_ids: list[int], sampling: SamplingOptions, request_id: str
    ) -> AsyncIterator[GenerationChunk]:
        await asyncio.Event().wait()
        yield GenerationChunk("", 0)  # never reached


def test_a_stalled_engine_is_declared_lost_its_requests_end_with_503_and_it_is_rebuilt(
    data_root, trainer_server
):
    server = build_server(supervised_settings(data_root, trainer_server.address, engine_stall_seconds=0.5))
    try:
        served = server.state.manager.default
        stalling = on_loop(server, EngineThatStalls.load(served.engine.model))
        served.watch = EngineWatch(stalling, served.name, load_seconds=1.0)
        stalls = counter("gateway_engine_deaths_total", model=served.name, kind="stalled")
        started = time.monotonic()
        response = chat(server)
        assert response.status_code == 503 and time.monotonic() - started < 10
        assert_carries_its_request_id(response)
        assert counter("gateway_engine_deaths_total", model=served.name, kind="stalled") == stalls + 1
        give_up_at = time.monotonic() + 60
        while (response := chat(server)).status_code != 200:
            assert response.status_code == 503 and time.monotonic() < give_up_at
            time.sleep(0.2)
        assert served.engine is not stalling
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def short_deadline_gateway(data_root: Path, trainer_server) -> Iterator[InferenceServer]:
    server = build_server(
        supervised_settings(data_root, trainer_server.address, generation_timeout_seconds=0.5)
    )
    yield server
    server.stop(grace=1)


def test_a_generation_past_the_deadline_is_504_with_the_request_id(short_deadline_gateway):
    gateway = short_deadline_gateway
    started = time.monotonic()
    response = chat(gateway, COUNTING, max_tokens=400)
    assert time.monotonic() - started < 10
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "timeout_error"
    assert "deadline of 0.5 s" in response.json()["error"]["message"]
    assert_carries_its_request_id(response)
    # A slow generation is not a sick engine: nothing is rebuilt, and the slot is free again.
    assert gateway.state.manager.default.watch.lost_reason is None
    assert gateway.state.core.admission.admitted == 0


def test_a_grpc_generation_past_the_deadline_is_deadline_exceeded(short_deadline_gateway):
    request = inference_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(**m) for m in COUNTING],
        sampling=inference_pb2.SamplingParams(max_tokens=400),
    )
    with open_channel(short_deadline_gateway.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            inference_pb2_grpc.InferenceServiceStub(channel).Generate(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert re.search(r"deadline of 0\.5 s \(request id \w+\)", err.value.details())


_RECORD_AND_EXIT = """
import sys
from pathlib import Path
from services.inference.engine.process_records import EngineProcessRecords, ProcessId
EngineProcessRecords(Path(sys.argv[1])).record("some-model", {ProcessId.of(int(sys.argv[2]))})
"""


def test_a_restarted_gateway_ends_what_its_killed_predecessor_left_running(
    data_root, trainer_server, tmp_path
):
    settings = supervised_settings(
        tmp_path, trainer_server.address, artifact_store_url=str(data_root / "artifacts")
    )
    leftover = subprocess.Popen(["sleep", "300"])
    try:
        # A gateway that recorded it as its engine, then died without cleaning up (as after kill -9).
        subprocess.run(
            [sys.executable, "-c", _RECORD_AND_EXIT, str(engine_run_dir(settings)), str(leftover.pid)],
            cwd=REPO,
            check=True,
        )
        server = build_server(settings)
        server.stop(grace=0)
        assert leftover.wait(timeout=10) == -signal.SIGKILL
        assert not list(engine_run_dir(settings).glob("engines-*.json"))  # its own record went with it
    finally:
        leftover.kill()
        leftover.wait()


_SPAWNS_LIKE_VLLM = """
import multiprocessing, sys, time
from pathlib import Path
from services.inference.engine.parent_death import children_die_with_this_process

def worker():
    time.sleep(300)

def engine_core():
    multiprocessing.get_context("spawn").Process(target=worker).start()
    time.sleep(300)

if __name__ == "__main__":
    with children_die_with_this_process(Path(sys.argv[1])):
        multiprocessing.get_context("spawn").Process(target=engine_core).start()
    time.sleep(300)
"""


def test_spawned_children_and_grandchildren_die_with_a_process_killed_with_sigkill(tmp_path):
    """What vLLM does (EngineCore spawned, Workers spawned by it), without loading vLLM."""
    script = tmp_path / "gateway_like.py"
    script.write_text(_SPAWNS_LIKE_VLLM)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], env=env)
    try:
        give_up_at = time.monotonic() + 60
        while (
            len(spawned := {p for p in descendants(parent.pid) if "spawn_main" in _command_line(p.pid)}) < 2
        ):
            assert time.monotonic() < give_up_at, "the children never started"
            time.sleep(0.1)
        parent.kill()
        parent.wait()
        give_up_at = time.monotonic() + 10
        while (survivors := [p for p in spawned if p.alive()]) and time.monotonic() < give_up_at:
            time.sleep(0.1)
        assert not survivors
    finally:
        parent.kill()
        parent.wait()


_REPORTS_OPENMP_CPUS = """
import ctypes, multiprocessing, os, sys
from pathlib import Path
from services.inference.engine.parent_death import children_die_with_this_process

def report(libgomp, queue):
    queue.put(ctypes.CDLL(libgomp).omp_get_num_procs())

if __name__ == "__main__":
    libgomp = sys.argv[2]
    # What vLLM's CPU executor sets before it spawns a Worker.
    os.environ["LD_PRELOAD"] = libgomp
    os.environ["GOMP_CPU_AFFINITY"] = " ".join(map(str, sorted(os.sched_getaffinity(0))))
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    with children_die_with_this_process(Path(sys.argv[1])):
        context.Process(target=report, args=(libgomp, queue)).start()
    print(queue.get(timeout=60))
"""


def torch_libgomp() -> Path | None:
    import torch

    return next((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"), None)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell one from all")
def test_openmp_in_a_launched_child_sees_all_the_cpus_its_parent_may_use(tmp_path):
    """libgomp pins the launcher that loads it to one CPU; the child must not start with that pin."""
    libgomp = torch_libgomp()
    if libgomp is None:
        pytest.skip("this torch build has no libgomp")
    script = tmp_path / "spawns_like_vllm_cpu.py"
    script.write_text(_REPORTS_OPENMP_CPUS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), str(libgomp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert int(seen.stdout) == len(os.sched_getaffinity(0))


# vLLM: the gateway in its own process, so it and its engine can be killed for real.


class GatewayProcess:
    """`python -m services.inference.server` with its stderr (JSON log lines, vLLM's own) collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "services.inference.server"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self._listening = threading.Event()
        self.url = ""
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line.rstrip())
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("msg") == "gateway listening":
                self.url = f"http://127.0.0.1:{entry['http_port']}"
                self._listening.set()

    def log_tail(self) -> str:
        return "\n".join(self.log[-30:])

    def wait_until_ready(self, timeout: float) -> None:
        give_up_at = time.monotonic() + timeout
        while not self._listening.wait(1):
            assert self.process.poll() is None, f"the gateway exited:\n{self.log_tail()}"
            assert time.monotonic() < give_up_at, f"the gateway never listened:\n{self.log_tail()}"
        while httpx.get(f"{self.url}/readyz", timeout=10).status_code != 200:
            assert self.process.poll() is None, f"the gateway exited:\n{self.log_tail()}"
            assert time.monotonic() < give_up_at, f"the gateway never got ready:\n{self.log_tail()}"
            time.sleep(1)

    def engine_processes(self) -> set[ProcessId]:
        return {p for p in descendants(self.process.pid) if "VLLM" in _command_line(p.pid)}

    def chat(self, messages=QUESTION, max_tokens: int = 8) -> httpx.Response:
        body = {"model": ALIAS, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=90)


def exported_sample(exposition: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return sample.value
    return None


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def vllm_gateway(data_root: Path, trainer_server, tmp_path_factory) -> Iterator[GatewayProcess]:
    home = tmp_path_factory.mktemp("vllm-gateway")
    env = {
        **os.environ,
        "FT_INFERENCE_ENGINE": "vllm",
        "FT_INFERENCE_DATA_DIR": str(home),
        "FT_INFERENCE_ARTIFACT_STORE_URL": str(data_root / "artifacts"),
        "FT_INFERENCE_TRAINER_ADDRESS": trainer_server.address,
        "FT_INFERENCE_PORT": "0",
        "FT_INFERENCE_HTTP_PORT": "0",
        "FT_INFERENCE_REQUIRE_API_KEY": "false",
        "FT_INFERENCE_MODEL": ALIAS,
        "FT_INFERENCE_MAX_MODEL_LEN": "1024",
        "FT_INFERENCE_CACHE_DIR": str(home / "cache"),
        "FT_INFERENCE_ENGINE_CHECK_INTERVAL_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    gateway = GatewayProcess(env)
    try:
        # About a minute on two idle cores; more when the machine is busy.
        gateway.wait_until_ready(timeout=420)
        yield gateway
    finally:
        if gateway.process.poll() is None:
            gateway.process.terminate()
            gateway.process.wait(60)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_killing_the_engine_core_under_load_ends_with_the_gateway_serving_again(vllm_gateway):
    engine_core = [p for p in vllm_gateway.engine_processes() if "EngineCore" in _command_line(p.pid)]
    assert len(engine_core) == 1
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(vllm_gateway.chat, COUNTING, 200) for _ in range(4)]
        time.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(engine_core[0].pid, signal.SIGKILL)
        responses = [answer.result() for answer in answers]  # httpx's timeout bounds each: none hangs
    for response in responses:
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert_carries_its_request_id(response)
    assert any(response.status_code == 503 for response in responses)
    while (response := vllm_gateway.chat()).status_code != 200:
        assert response.status_code == 503, response.text  # never a 500 while it rebuilds
        assert_carries_its_request_id(response)
        assert httpx.get(f"{vllm_gateway.url}/healthz").status_code == 200  # rebuilding, not given up
        assert time.monotonic() - killed_at < 420, (
            f"the gateway did not serve again:\n{vllm_gateway.log_tail()}"
        )
        time.sleep(2)
    print(f"served again {time.monotonic() - killed_at:.0f} s after the EngineCore was killed")
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    assert not engine_core[0].alive()
    exported = httpx.get(f"{vllm_gateway.url}/metrics").text
    assert exported_sample(exported, "gateway_engine_deaths_total", kind="dead") == 1.0
    assert exported_sample(exported, "gateway_engine_restarts_total", outcome="succeeded") == 1.0


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")
def test_no_engine_process_outlives_a_gateway_killed_with_sigkill(vllm_gateway):
    engine = vllm_gateway.engine_processes()
    assert any("EngineCore" in _command_line(p.pid) for p in engine)
    vllm_gateway.process.kill()
    vllm_gateway.process.wait(30)
    give_up_at = time.monotonic() + 15
    while (survivors := [p for p in engine if p.alive()]) and time.monotonic() < give_up_at:
        time.sleep(0.2)
    assert not survivors, [_command_line(p.pid) for p in survivors]
