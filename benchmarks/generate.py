"""GenerateDataset's yield and speed on this project's own docs: pairs per minute and grounded-pair yield.

The corpus is `docs/*.md` and `README.md`, read as the job reads uploaded documents. Timed is the function the
generate job runs (services/data/documents/generation.generate: parse, chunk, generate, check), nothing
stored, so the figure is the generation itself and not the job's storage. Reported per generator:
- pairs generated and kept per minute of wall time (the median of --repeats runs for the structural one);
- grounded-pair yield: kept / generated, the share that passes every check (grounding, length, the heading
  check, duplicates), with the rejections by reason and the mean grounding score of the kept pairs;
- chunks, chunks that yield a kept pair, facts kept.
The structural generator (no model) always runs. A generator model runs only with --generator MODEL and
--gateway ADDRESS (the inference service's gRPC address, where the model is served), over --model-sources
(README.md unless given) and --model-styles (all four unless given): SmolLM2-135M through the
transformers engine on 2 shared CPU cores did not finish README.md's 14 chunks in all four styles within
10 minutes. There is no baseline to quote a ratio against: no other generator runs offline here (see
docs/architecture.md); the structural figures are the baseline a model generator is compared with in the
same run. Writes benchmarks/results/generate.json
naming the processor. --tiny (README.md once) only proves the script runs.

--quality measures what the generated data teaches instead: `make demo-docs` (ftctl/demo_docs.py,
pipelines/docs_demo.yaml) in a temporary data directory, generate -> prepare (split by phrasing within a
fact) -> train -> evaluate base vs tuned on the held-out phrasings and on samples/docs_questions.jsonl ->
promote, through a local stack of the four services; fact accuracy, token F1, ROUGE-L and exact match with
95% intervals, the training loss reached and the wall time go to benchmarks/results/generate_quality.json.
The baseline is the base model in the same run. About 20 minutes on 2 CPU cores, so never in --tiny.
"""

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from pydantic import ValidationError

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The benchmark reaches a gateway on loopback in plaintext without a service token.
os.environ.setdefault("FT_INSECURE_LOCAL_DEV", "1")

from ftcommon.hardware import cpu_report  # noqa: E402
from ftcommon.specs.generate import GenerateSpec  # noqa: E402
from services.data.config import DataSettings  # noqa: E402
from services.data.documents.generation import GenerationResult, SourceFile, generate  # noqa: E402
from services.data.documents.model_generation import GeneratorMissing, ModelGenerator  # noqa: E402
from services.data.documents.pairs import STRUCTURAL  # noqa: E402
from services.data.generate_jobs import generation_settings, model_settings  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def corpus(paths: list[Path]) -> list[SourceFile]:
    return [
        SourceFile(path.name, data, hashlib.sha256(data).hexdigest())
        for path in paths
        for data in [path.read_bytes()]
    ]


def docs_corpus() -> list[Path]:
    return [*sorted((REPO_ROOT / "docs").glob("*.md")), REPO_ROOT / "README.md"]


def summary(result: GenerationResult, generator: str, seconds: float) -> dict[str, Any]:
    """Yield figures for the pairs of one generator ("structural" or the model's name)."""
    generated = [p for p in result.generated if p.generator == generator]
    kept = [p for p in result.outcome.kept if p.generator == generator]
    rejected = Counter(r.reason for r in result.outcome.rejected if r.pair.generator == generator)
    scores = [result.outcome.grounding[id(p)] for p in kept]
    minutes = seconds / 60
    return {
        "seconds": round(seconds, 3),
        "chunks": len(result.chunks),
        "chunks_yielding": len({p.chunk.chunk_id for p in kept}),
        "pairs_generated": len(generated),
        "pairs_kept": len(kept),
        "facts_kept": len({p.fact_id for p in kept}),
        "pairs_generated_per_minute": round(len(generated) / minutes, 1) if seconds else None,
        "pairs_kept_per_minute": round(len(kept) / minutes, 1) if seconds else None,
        "grounded_pair_yield": round(len(kept) / len(generated), 4) if generated else 0.0,
        "mean_grounding_kept": round(sum(scores) / len(scores), 4) if scores else 0.0,
        "rejected_by_reason": dict(rejected),
    }


def run_once(
    sources: list[SourceFile], spec: GenerateSpec, model: ModelGenerator | None
) -> tuple[GenerationResult, float]:
    settings = generation_settings(spec, DataSettings().near_duplicate_threshold)
    started = time.perf_counter()
    result = generate(sources, settings, model, [], lambda _fraction, _message: None, lambda: None)
    return result, time.perf_counter() - started


def structural(sources: list[SourceFile], spec: GenerateSpec, repeats: int) -> dict[str, Any]:
    runs = [run_once(sources, spec, None) for _ in range(repeats)]
    seconds = statistics.median(s for _, s in runs)
    result = runs[0][0]
    return {
        **summary(result, STRUCTURAL, seconds),
        "repeats": repeats,
        "seconds_each": [round(s, 3) for _, s in runs],
        "documents_rejected": {d["name"]: d["rejected"] for d in result.documents if d["rejected"]},
    }


def with_model(sources: list[SourceFile], spec: GenerateSpec, generator: str, gateway: str) -> dict[str, Any]:
    from ftcommon.grpc_client import open_channel

    data_settings = DataSettings()
    with open_channel(gateway, data_settings.generator_timeout_seconds) as channel:
        model = ModelGenerator(channel, model_settings(spec, generator, data_settings))
        result, seconds = run_once(sources, spec, model)
    yields = result.model_yield.values()
    return {
        "generator": generator,
        "gateway": gateway,
        "documents": [s.name for s in sources],
        "model": {
            **summary(result, generator, seconds),
            "calls": sum(y.calls for y in yields),
            "malformed_replies": sum(y.malformed for y in yields),
            "failed_calls": sum(y.failed_calls for y in yields),
        },
        # The same run's structural pairs: the yield a model adds to, on the same documents.
        "structural_same_documents": summary(result, STRUCTURAL, seconds),
    }


def quality(results_dir: Path) -> int:
    """The documents demo end to end; its figures, with the processor, to generate_quality.json."""
    import tempfile

    from ftctl.demo_docs import DOCS_DEMO_SPEC, DOCS_QUESTIONS
    from ftctl.demo_docs import main as docs_demo

    with tempfile.TemporaryDirectory(prefix="docs-demo-") as scratch:
        figures = docs_demo(data_root=Path(scratch) / "var")
    results = {
        "cpu": cpu_report(),
        "command": "python benchmarks/generate.py --quality",
        "pipeline": str(DOCS_DEMO_SPEC.relative_to(REPO_ROOT)),
        "hand_written_questions": str(DOCS_QUESTIONS.relative_to(REPO_ROOT)),
        **figures,
    }
    result = results_dir / "generate_quality.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {result}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="structural runs; the median time counts")
    parser.add_argument("--generator", default="", help="a served model to generate with as well")
    parser.add_argument(
        "--gateway", default="", help="the inference service's gRPC address (with --generator)"
    )
    parser.add_argument(
        "--model-sources",
        nargs="*",
        type=Path,
        default=[],
        help="documents for the model run (default README.md)",
    )
    parser.add_argument(
        "--model-styles",
        nargs="*",
        default=[],
        help="question styles for the model (factual how-to why paraphrase; default all): fewer calls",
    )
    parser.add_argument("--tiny", action="store_true", help="README.md, one run: proves the script runs")
    parser.add_argument(
        "--quality", action="store_true", help="the documents demo: tuned vs base on docs questions (~20 min)"
    )
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args()
    if args.quality:
        if args.tiny or args.generator:
            parser.error("--quality runs alone: the documents demo, not a generator's yield")
        return quality(Path(args.results_dir))
    if bool(args.generator) != bool(args.gateway):
        parser.error("--generator and --gateway go together: the model is reached through the gateway")
    paths = [REPO_ROOT / "README.md"] if args.tiny else docs_corpus()
    sources = corpus(paths)
    try:
        spec = GenerateSpec(generator=args.generator, question_styles=args.model_styles)
    except ValidationError as err:
        parser.error(f"--model-styles: {err.errors()[0]['msg']}")
    results: dict[str, Any] = {
        "cpu": cpu_report(),
        "tiny": args.tiny,
        "documents": [s.name for s in sources],
        "corpus_bytes": sum(len(s.data) for s in sources),
        "settings": spec.model_dump(exclude={"documents", "sources"}),
        "command": "python benchmarks/generate.py"
        + (f" --generator {args.generator}" if args.generator else ""),
        "structural": structural(sources, spec, 1 if args.tiny else args.repeats),
        "model": None,
    }
    print("structural", json.dumps(results["structural"]), flush=True)
    if args.generator:
        model_paths = [Path(p).resolve() for p in args.model_sources] or [REPO_ROOT / "README.md"]
        try:
            results["model"] = with_model(corpus(model_paths), spec, args.generator, args.gateway)
        except GeneratorMissing as err:
            parser.exit(1, f"generate.py: {err}\n")
        except grpc.RpcError as err:
            parser.exit(
                1, f"generate.py: the gateway at {args.gateway} answered {err.code().name}: {err.details()}\n"
            )
        print("model", json.dumps(results["model"]), flush=True)
    result = Path(args.results_dir) / "generate.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
