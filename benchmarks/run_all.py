"""`make bench`: runs every benchmark in this folder, one after another (they share 2 cores), and lists
the result files. Each benchmark measures its baseline in the same run and writes
benchmarks/results/<name>.json (or --results-dir); pass extra arguments through with BENCH_ARGS.
--tiny runs each at settings that only prove it still works (tests/test_benchmarks.py), never for figures."""

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "data_prep.py",
    "generate.py",
    "train_throughput.py",
    "train_sharing.py",
    "serve_throughput.py",
    "eval_throughput.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="minimal settings: proves every script runs")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    failures = []
    extra = shlex.split(os.environ.get("BENCH_ARGS", ""))
    extra += ["--results-dir", str(args.results_dir)] + (["--tiny"] if args.tiny else [])
    for script in BENCHMARKS:
        started = time.monotonic()
        print(f"== {script}", flush=True)
        status = subprocess.call([sys.executable, str(HERE / script), *extra])
        print(f"== {script}: exit {status} after {time.monotonic() - started:.0f}s", flush=True)
        if status:
            failures.append(script)
    for result in sorted(args.results_dir.glob("*.json")):
        print(f"result: {result}")
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
