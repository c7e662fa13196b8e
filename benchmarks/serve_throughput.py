"""Serving throughput, one run, same model, same prompts, greedy decoding:

(a) the seed course's `inference()`: transformers `generate`, fp32, one request at a time;
(b) our gateway over HTTP (`python -m services.inference.server`, engine from --engine), in float32 and,
    where the hardware computes bf16 natively (a GPU, AVX512-BF16 or AMX), in bfloat16 (FT_INFERENCE_DTYPE);
(c) vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`, eager), in the same dtypes,
    so the gateway's overhead is measured against it dtype for dtype.

(b) and (c) of one dtype run at the same time and are measured in turns (--rounds rounds; each round every
level, each level on both, the first of the two alternating between rounds): these machines' speed moves by
a third between minutes, so one system measured minutes after the other compared the minutes, not the
systems. A system's figures are its median round's; gateway_vs_vllm_throughput is the median of the rounds'
ratios.

At concurrency 1, 8 and 32: generated tokens/s, p50/p95 latency and time to first token. (a) serves one
request at a time, so its per-request service times are measured back to back and a burst of c requests
is replayed through that single server: request i waits for the i-1 before it (its TTFT is its latency, it
does not stream). Writes benchmarks/results/serve_throughput.json, naming the processor (model and flags).
--tiny (4 tokens, concurrency 1 and 2, the transformers engine, no vLLM server) only proves the script runs.

    .venv/bin/python benchmarks/serve_throughput.py --quick
"""

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The benchmark's services run on loopback in plaintext without a service token.
os.environ.setdefault("FT_INSECURE_LOCAL_DEV", "1")

from ftcommon.hardware import cpu_has_native_bf16, cpu_report  # noqa: E402
from services.trainer.config import DEFAULT_BASE_MODEL_NAME  # noqa: E402

MODEL_DIR = REPO / "var" / "base_models" / DEFAULT_BASE_MODEL_NAME
RESULTS_DIR = REPO / "benchmarks" / "results"
QUESTIONS = [
    "What is the capital of France?",
    "Explain what a neural network is.",
    "Give me three tips for writing clean code.",
    "What does an API key protect?",
    "Describe the water cycle.",
    "Why is the sky blue?",
    "What is fine-tuning of a language model?",
    "Name a few uses of Python.",
]
# Between two measurements: an idle server's OpenMP threads spin a little after its last request.
IDLE_BETWEEN_TURNS_S = 1.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(latencies: list[float], ttfts: list[float], tokens: int, wall: float) -> dict[str, float]:
    return {
        "requests": len(latencies),
        "generated_tokens": tokens,
        "tokens_per_second": round(tokens / wall, 2),
        "p50_latency_s": round(percentile(latencies, 0.5), 3),
        "p95_latency_s": round(percentile(latencies, 0.95), 3),
        "p50_ttft_s": round(percentile(ttfts, 0.5), 3),
        "p95_ttft_s": round(percentile(ttfts, 0.95), 3),
        "wall_s": round(wall, 2),
    }


# (a) the seed course's inference(), one request at a time


def seed_course_baseline(count: int, max_tokens: int, levels: list[int]) -> dict[str, dict[str, float]]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()

    def inference(text: str) -> tuple[str, int]:
        # The course's function, with max_new_tokens so every system gets the same output budget.
        input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=1000)
        output = model.generate(input_ids=input_ids, max_new_tokens=max_tokens, do_sample=False)
        answer = tokenizer.batch_decode(output, skip_special_tokens=True)[0][len(text) :]
        return answer, output.shape[1] - input_ids.shape[1]

    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in QUESTIONS
    ]
    inference(prompts[0])  # warm-up, as the servers get theirs
    services: list[tuple[float, int]] = []
    for index in range(count):
        started = time.perf_counter()
        _, generated = inference(prompts[index % len(prompts)])
        services.append((time.perf_counter() - started, generated))
    results = {}
    for level in levels:
        latencies, clock, tokens = [], 0.0, 0
        for index in range(level):
            seconds, generated = services[index % len(services)]
            clock += seconds
            latencies.append(clock)
            tokens += generated
        results[str(level)] = summarize(latencies, latencies, tokens, clock)
    return results


# (b) and (c): OpenAI-compatible servers under concurrent streaming load


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, question: str, max_tokens: int
) -> tuple:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c["delta"].get("content") for c in chunk["choices"]):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - started
    return latency, first if first is not None else latency, tokens


async def load(url: str, model: str, level: int, requests: int, max_tokens: int) -> dict[str, float]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(QUESTIONS[index % len(QUESTIONS)])
    outcomes: list[tuple] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            question = queue.get_nowait()
            outcomes.append(await one_request(client, url, model, question, max_tokens))

    limits = httpx.Limits(max_connections=level + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, url, model, QUESTIONS[0], 2)  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(level)))
        wall = time.perf_counter() - started
    return summarize([o[0] for o in outcomes], [o[1] for o in outcomes], sum(o[2] for o in outcomes), wall)


def wait_ready(url: str, path: str, process: subprocess.Popen, timeout: float = 600) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], url: str, ready_path: str, name: str) -> Iterator[float]:
    """Runs a server until the block ends; yields the seconds it took to be ready."""
    log = open(Path(env["BENCH_LOG_DIR"]) / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield wait_ready(url, ready_path, process)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def measure_in_turns(servers: dict[str, tuple[str, str]], args: argparse.Namespace) -> dict[str, dict]:
    """Every level on every server (name: (url, served model)), round after round, the servers' order
    reversed each round; per server and level its rounds and its median round (by tokens/s)."""
    names = list(servers)
    rounds: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {str(lv): [] for lv in args.levels} for n in names
    }
    for round_index in range(args.rounds):
        for level in args.levels:
            for name in names if round_index % 2 == 0 else names[::-1]:
                url, model = servers[name]
                time.sleep(IDLE_BETWEEN_TURNS_S)
                result = asyncio.run(load(url, model, level, max(level, args.min_requests), args.max_tokens))
                rounds[name][str(level)].append(result)
                print(f"  round {round_index + 1} {name} c={level}: {result}", flush=True)
    return {
        name: {
            "levels": {level: median_round(results) for level, results in by_level.items()},
            "rounds_tokens_per_second": {
                level: [r["tokens_per_second"] for r in results] for level, results in by_level.items()
            },
        }
        for name, by_level in rounds.items()
    }


def median_round(results: list[dict[str, float]]) -> dict[str, float]:
    return sorted(results, key=lambda r: r["tokens_per_second"])[(len(results) - 1) // 2]


def start_trainer(data_dir: Path) -> object:
    from finetune.v1 import trainer_pb2, trainer_pb2_grpc
    from ftcommon.grpc_client import open_channel
    from services.trainer.config import TrainerSettings
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_dir, port=0))
    with open_channel(running.address) as channel:
        trainer_pb2_grpc.TrainerServiceStub(channel).RegisterBaseModel(
            trainer_pb2.RegisterBaseModelRequest(name=DEFAULT_BASE_MODEL_NAME, path=str(MODEL_DIR)),
            timeout=300,
        )
    return running


def gateway_environment(
    base_env: dict[str, str], work: Path, trainer_address: str, engine: str, dtype: str
) -> tuple[str, dict[str, str]]:
    """Our gateway's URL and environment: its own data root under `work`, the model from the trainer at
    `trainer_address`, no API key, the context vLLM's server gets too."""
    http_port = free_port()
    env = {
        **base_env,
        "FT_INFERENCE_DATA_DIR": str(work / f"var-{dtype}"),
        "FT_INFERENCE_HTTP_PORT": str(http_port),
        "FT_INFERENCE_PORT": str(free_port()),
        "FT_INFERENCE_TRAINER_ADDRESS": trainer_address,
        "FT_INFERENCE_ENGINE": engine,
        "FT_INFERENCE_DTYPE": dtype,
        "FT_INFERENCE_REQUIRE_API_KEY": "false",
        "FT_INFERENCE_MAX_MODEL_LEN": "1024",
        "FT_INFERENCE_CACHE_DIR": str(work / "gateway-cache"),
        "FT_INFERENCE_LOG_LEVEL": "WARNING",
    }
    return f"http://127.0.0.1:{http_port}", env


def vllm_server_command(dtype: str) -> tuple[str, list[str]]:
    """vLLM's own OpenAI server's URL and command, with the gateway's engine settings (eager, same context)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(MODEL_DIR),
        "--served-model-name",
        "vllm-direct",
        "--max-model-len",
        "1024",
        "--dtype",
        dtype,
        "--enforce-eager",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    return f"http://127.0.0.1:{port}", command


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="16 new tokens, fewer requests")
    parser.add_argument(
        "--engine", default="vllm", choices=["vllm", "transformers"], help="the gateway's engine"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["seed", "gateway", "vllm"])
    parser.add_argument(
        "--dtypes", nargs="*", choices=["float32", "bfloat16"], help="default: bf16 where native"
    )
    parser.add_argument("--tiny", action="store_true", help="4 tokens, concurrency 1 and 2, no vLLM server")
    parser.add_argument(
        "--rounds", type=int, default=3, help="turns of every level on the gateway and vLLM's server"
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    args.levels = [1, 8, 32]
    args.max_tokens = 16 if args.quick else 64
    args.min_requests = 4 if args.quick else 16  # per round: 48 requests at concurrency 1 in 3 rounds
    baseline_requests = 8 if args.quick else 32
    if args.tiny:
        args.levels, args.max_tokens, args.min_requests, baseline_requests = [1, 2], 4, 2, 2
        args.rounds = 1
        args.engine, args.skip = "transformers", [*args.skip, "vllm"]
    native_bf16 = torch.cuda.is_available() or cpu_has_native_bf16()
    dtypes = args.dtypes or (["float32", "bfloat16"] if native_bf16 else ["float32"])

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    # Two data roots, a vLLM and an inductor cache: about 1 GB that no one reads after the run.
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    base_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CACHE_ROOT": str(work / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"),
        "TMPDIR": str(work),
        "BENCH_LOG_DIR": str(work),
    }
    report: dict = {
        "model": DEFAULT_BASE_MODEL_NAME,
        "max_tokens": args.max_tokens,
        "decoding": "greedy",
        "cpu": cpu_report(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "quick": args.quick,
        "tiny": args.tiny,
        "dtypes": dtypes,
        "rounds": args.rounds,
        "note": "vLLM on CPU in bfloat16 answers wrongly with vllm-cpu 0.32 (services/inference/engine/"
        "precision.py): its bf16 speed is measured, but the gateway's auto dtype keeps vLLM on CPU in fp32",
        "systems": {},
    }
    if "seed" not in args.skip:
        print("(a) seed course inference(), one at a time", flush=True)
        report["systems"]["seed_inference"] = {
            "levels": seed_course_baseline(baseline_requests, args.max_tokens, args.levels)
        }
        print(f"  {report['systems']['seed_inference']}", flush=True)
    for dtype in dtypes:
        with contextlib.ExitStack() as stack:
            servers: dict[str, tuple[str, str]] = {}
            ready: dict[str, float] = {}
            if "gateway" not in args.skip:
                print(f"(b) our gateway, engine {args.engine}, {dtype}", flush=True)
                trainer = start_trainer(work / f"var-{dtype}")
                stack.callback(trainer.stop, grace=1)
                url, env = gateway_environment(base_env, work, trainer.address, args.engine, dtype)
                command = [sys.executable, "-m", "services.inference.server"]
                name = f"gateway_{dtype}"
                ready[name] = stack.enter_context(serving(command, env, url, "/readyz", name))
                servers[name] = (url, "prod")
            if "vllm" not in args.skip:
                print(f"(c) vLLM's OpenAI server, {dtype}", flush=True)
                url, command = vllm_server_command(dtype)
                name = f"vllm_server_{dtype}"
                ready[name] = stack.enter_context(serving(command, base_env, url, "/health", name))
                servers[name] = (url, "vllm-direct")
            for name, measured in measure_in_turns(servers, args).items():
                report["systems"][name] = {"dtype": dtype, "ready_s": round(ready[name], 1), **measured}
            if f"gateway_{dtype}" in servers:
                report["systems"][f"gateway_{dtype}"]["engine"] = args.engine
    report["ratios"] = {dtype: ratios(report["systems"], args.levels, dtype) for dtype in dtypes}
    if len(dtypes) == 2:
        report["ratios"]["gateway_bfloat16_vs_float32"] = dtype_ratios(report["systems"], args.levels)
    results = Path(args.results_dir) / "serve_throughput.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratios"], indent=2))
    print(f"wrote {results}")


def dtype_ratios(systems: dict, levels: list[int]) -> dict[str, float]:
    """The gateway's throughput in bfloat16 over float32, per level."""
    out: dict[str, float] = {}
    for level in map(str, levels):
        bf16 = systems.get("gateway_bfloat16", {}).get("levels", {}).get(level)
        fp32 = systems.get("gateway_float32", {}).get("levels", {}).get(level)
        if bf16 and fp32:
            out[level] = round(bf16["tokens_per_second"] / fp32["tokens_per_second"], 3)
    return out


def ratios(systems: dict, levels: list[int], dtype: str) -> dict[str, dict[str, float]]:
    """Throughput of the gateway over the baseline, and its cost against vLLM's own server in the same
    dtype (the median of the rounds' ratios), per level."""
    out: dict[str, dict[str, float]] = {}
    for level in map(str, levels):
        row: dict[str, float] = {}
        gateway = systems.get(f"gateway_{dtype}", {}).get("levels", {}).get(level)
        seed = systems.get("seed_inference", {}).get("levels", {}).get(level)
        direct = systems.get(f"vllm_server_{dtype}", {}).get("levels", {}).get(level)
        if gateway and seed:
            row["gateway_vs_seed_throughput"] = round(
                gateway["tokens_per_second"] / seed["tokens_per_second"], 2
            )
        if gateway and direct:
            turns = zip(
                systems[f"gateway_{dtype}"]["rounds_tokens_per_second"][level],
                systems[f"vllm_server_{dtype}"]["rounds_tokens_per_second"][level],
                strict=True,
            )
            row["gateway_vs_vllm_throughput"] = round(statistics.median(g / d for g, d in turns), 3)
            row["gateway_vs_vllm_p50_latency"] = round(gateway["p50_latency_s"] / direct["p50_latency_s"], 3)
        out[level] = row
    return out


if __name__ == "__main__":
    main()
