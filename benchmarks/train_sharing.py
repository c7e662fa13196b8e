"""Two trainings on one host: each one's throughput when both run at once, as a fraction of one alone.

Every training runs the platform's recipe with its defaults (LoRA, packed batches, bf16 where the CPU has
it) in its own process, with as many threads as the CPUs it may use (ftcommon.hardware.thread_count), the
way two trainer workers on one host run. Each process loads and warms up (one step), then all start
together and train for --seconds; throughput is real tokens over the steps finished in that window.

Two OpenMP wait policies are compared, each solo and as a pair:
- spin: the OpenMP default (threads spin at each barrier for a while before sleeping);
- passive: what the trainer worker gives its job processes (ftcommon.hardware.sharing_thread_environment);
- spincount-N (--spin-counts N ...): the default policy with libgomp's spin bounded to N iterations
  (GOMP_SPINCOUNT; torch's CPU wheels use libgomp) before a waiting thread sleeps.
Target (issue 17): each of a pair keeps >= 40% of its solo throughput.

    .venv/bin/python benchmarks/train_sharing.py --seconds 20
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from train_throughput import DEFAULT_MODEL_DIR, write_prepared  # noqa: E402

from ftcommon.hardware import cpu_report, sharing_thread_environment, thread_count  # noqa: E402

RESULTS_DIR = HERE / "results"
POLICIES = ("spin", "passive")


def train_for(model_dir: Path, prepared: Path, seconds: float) -> dict[str, float]:
    """The child: set up, one warm-up step, 'ready', wait for the go line, train for `seconds`."""
    from ftcommon.hardware import configure_torch_threads
    from ftcommon.specs.train import Hyperparameters
    from services.trainer.recipe import FinetuneRecipe, RecipeConfig

    configure_torch_threads(thread_count(0))
    with tempfile.TemporaryDirectory() as work:
        hyperparameters = Hyperparameters(max_steps=100_000, eval_every_steps=1_000_000)
        recipe = FinetuneRecipe(RecipeConfig(model_dir, prepared, Path(work), hyperparameters))
        recipe.setup()

        def step() -> int:
            tokens = recipe.train_step().tokens
            recipe.state.examples_seen += recipe.examples_per_step
            return tokens

        step()
        print("ready", flush=True)
        sys.stdin.readline()
        tokens, steps, started = 0, 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            tokens += step()
            steps += 1
        elapsed = time.perf_counter() - started
    return {"steps": steps, "seconds": elapsed, "real_tokens_per_second": tokens / elapsed}


def run_together(count: int, policy: str, args: argparse.Namespace, prepared: Path) -> list[dict]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OMP_")}
    env.pop("GOMP_SPINCOUNT", None)
    if policy == "passive":
        env.update(sharing_thread_environment(thread_count(0)))
    elif policy.startswith("spincount-"):
        env.update(OMP_NUM_THREADS=str(thread_count(0)), GOMP_SPINCOUNT=policy.removeprefix("spincount-"))
    command = [sys.executable, __file__, "--child", "--prepared", str(prepared)]
    command += ["--model-dir", args.model_dir, "--seconds", str(args.seconds)]
    children = [
        subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for child in children:  # every one loaded and warmed up before any starts the measured window
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a training child failed to start (exit {child.wait()})")
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        output, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a training child failed (exit {child.returncode})")
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window of each run")
    parser.add_argument("--examples", type=int, default=64, help="distinct training examples")
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument(
        "--spin-counts",
        type=int,
        nargs="*",
        default=[],
        help="also bounded spins of N iterations (GOMP_SPINCOUNT)",
    )
    parser.add_argument("--tiny", action="store_true", help="2 s windows, the passive policy only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_for(Path(args.model_dir), Path(args.prepared), args.seconds)))
        return
    policies = POLICIES + tuple(f"spincount-{count}" for count in args.spin_counts)
    if args.tiny:
        args.seconds, args.examples, args.max_len, policies = 2.0, 8, 64, ("passive",)
    report: dict[str, object] = {
        "what": "real tokens/s of one training alone and of each of two at once, per OpenMP wait policy",
        "cpu": cpu_report(),
        "threads_per_training": thread_count(0),
        "seconds_per_window": args.seconds,
        "tiny": args.tiny,
        "target_fraction_of_solo": 0.4,
    }
    with tempfile.TemporaryDirectory() as folder:
        prepared = write_prepared(Path(args.model_dir), args.examples, args.max_len, Path(folder))
        for policy in policies:
            (solo,) = run_together(1, policy, args, prepared)
            pair = run_together(2, policy, args, prepared)
            fractions = [run["real_tokens_per_second"] / solo["real_tokens_per_second"] for run in pair]
            report[policy] = {"solo": solo, "pair": pair, "fraction_of_solo_each": fractions}
            print(
                f"{policy}: solo {solo['real_tokens_per_second']:.1f} tokens/s, pair fractions "
                + ", ".join(f"{f:.0%}" for f in fractions),
                flush=True,
            )
    results = Path(args.results_dir) / "train_sharing.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
