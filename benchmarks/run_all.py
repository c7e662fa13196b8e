"""`make bench`: runs every benchmark in this folder, one after another (they share 2 cores), and lists
the result files. Each benchmark measures its baseline in the same run and writes
benchmarks/results/<name>.json; pass extra arguments through with BENCH_ARGS."""

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["data_prep.py", "train_throughput.py", "serve_throughput.py", "eval_throughput.py"]


def main() -> int:
    failures = []
    extra = shlex.split(os.environ.get("BENCH_ARGS", ""))
    for script in BENCHMARKS:
        started = time.monotonic()
        print(f"== {script}", flush=True)
        status = subprocess.call([sys.executable, str(HERE / script), *extra])
        print(f"== {script}: exit {status} after {time.monotonic() - started:.0f}s", flush=True)
        if status:
            failures.append(script)
    for result in sorted((HERE / "results").glob("*.json")):
        print(f"result: {result.relative_to(HERE.parent)}")
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
