"""Q&A pairs from a generator model, through the inference service's gRPC API (InferenceService.Generate).

The inference contract has no constrained decoding (no JSON schema or grammar on GenerateRequest; neither
engine behind the gateway is asked for it), so this asks for one JSON object per question style, shows
one worked example first (a small model copies a format it has seen far more often than one it was told
of), parses the first {...} in the reply, and retries with sampling when the reply is not a usable
object. SmolLM2-135M answers such prompts with `Question: "..."` / `Answer: "..."` lines more often than
with JSON, so those two labelled lines are read too; the grounding check decides whether the pair is any
good either way. A small model can still fail every attempt: that chunk then reports zero model pairs and the
malformed replies, never an error, and the structural pairs still stand. A call that times out or is
turned away for load is counted for its chunk and the run goes on; a generator the gateway does not know
fails the whole job with one clear line (GeneratorMissing), and so does a gateway that cannot be reached.

Generate calls go out `concurrency` at a time, so the gateway's engine batches them.
"""

import json
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from finetune.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from ftcommon.specs.generate import DEFAULT_MODEL_ATTEMPTS, DEFAULT_MODEL_MAX_TOKENS
from services.data.documents.chunking import Chunk
from services.data.documents.pairs import Pair, fact_id

STYLES = {
    "factual": "a factual question whose answer is one fact the text states (a number, a name, a command)",
    "how-to": "a how-to question a user of the system would ask, answered with the steps or command the text gives",
    "why": "a why question, answered with the reason the text gives",
    "paraphrase": "a question worded differently from the text, answered with the text's facts",
}
SYSTEM_PROMPT = (
    "You write training data. Read the text and write one question a user could ask and its answer, "
    "taken from the text. Reply with one JSON object and nothing else, in this form: "
    '{"question": "...", "answer": "..."}'
)
MAX_CHUNK_CHARS_IN_PROMPT = 2400
EXAMPLE_TEXT = (
    'Text from handbook.md (Handbook > Expenses):\n"""\nSubmit receipts in the expenses tool within '
    '30 days of the purchase. Claims over 500 EUR need a manager\'s approval.\n"""\n\n'
    "Write a factual question whose answer is one fact the text states. Reply with the JSON object only."
)
EXAMPLE_REPLY = '{"question": "Within how many days must receipts be submitted?", "answer": "Within 30 days of the purchase."}'
_LABELLED = re.compile(
    r"question\s*:\s*\"?(?P<question>[^\n\"]+\?)\"?\s*\n+\s*answer\s*:\s*\"?(?P<answer>[^\n]+?)\"?\s*$",
    re.IGNORECASE | re.MULTILINE,
)
# One slow or shed call costs its chunk a pair, not the whole run.
_SKIPPED_CALL_CODES = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class GeneratorMissing(Exception):
    """The gateway does not serve the generator model."""


@dataclass(frozen=True)
class ModelSettings:
    model: str
    styles: tuple[str, ...] = tuple(STYLES)
    attempts: int = DEFAULT_MODEL_ATTEMPTS  # per style and chunk; the first greedy, the rest sampled
    max_tokens: int = DEFAULT_MODEL_MAX_TOKENS
    temperature: float = 0.7
    concurrency: int = 4
    timeout_seconds: float = 120.0


@dataclass
class ChunkYield:
    pairs: list[Pair] = field(default_factory=list)
    calls: int = 0
    malformed: int = 0  # replies that held no usable {"question", "answer"} object
    failed_calls: int = 0  # calls that timed out or were shed by the gateway
    styles_without_pair: list[str] = field(default_factory=list)


def parse_pair(text: str) -> tuple[str, str] | None:
    """(question, answer) from the first JSON object in a reply, else from `Question:` and `Answer:` lines;
    None when the reply holds neither."""
    return _json_pair(text) or _labelled_pair(text)


def _labelled_pair(text: str) -> tuple[str, str] | None:
    match = _LABELLED.search(text)
    if not match:
        return None
    return match.group("question").strip(), match.group("answer").strip()


def _json_pair(text: str) -> tuple[str, str] | None:
    start = text.find("{")
    while start >= 0:
        try:
            value, _ = json.JSONDecoder().raw_decode(text[start:])
        except json.JSONDecodeError:
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            question, answer = value.get("question"), value.get("answer")
            if isinstance(question, str) and isinstance(answer, str) and question.strip() and answer.strip():
                return question.strip(), answer.strip()
        return None
    return None


class ModelGenerator:
    def __init__(self, channel: grpc.Channel, settings: ModelSettings) -> None:
        self.stub = inference_pb2_grpc.InferenceServiceStub(channel)
        self.settings = settings

    def pairs_for(self, chunks: list[Chunk], on_chunk: Callable[[int, ChunkYield], None]) -> None:
        """Generates for every chunk, `concurrency` calls in flight; on_chunk(index, yield) as each ends."""
        pool = ThreadPoolExecutor(max_workers=self.settings.concurrency)
        try:
            for index, result in enumerate(pool.map(self._chunk_pairs, chunks)):
                on_chunk(index, result)
        finally:
            # A stop (cancel, missing generator) drops the calls not yet started instead of making them all.
            pool.shutdown(wait=True, cancel_futures=True)

    def _chunk_pairs(self, chunk: Chunk) -> ChunkYield:
        result = ChunkYield()
        for style in self.settings.styles:
            found = None
            for attempt in range(self.settings.attempts):
                result.calls += 1
                reply = self._generate(chunk, style, attempt)
                if reply is None:
                    result.failed_calls += 1
                    continue
                found = parse_pair(reply)
                if found:
                    break
                result.malformed += 1
            if found is None:
                result.styles_without_pair.append(style)
                continue
            question, answer = found
            result.pairs.append(
                Pair(question, answer, fact_id(chunk, answer), chunk, self.settings.model, style)
            )
        return result

    def _generate(self, chunk: Chunk, style: str, attempt: int) -> str | None:
        """The reply's text; None when the call timed out or was shed."""
        where = " > ".join(chunk.heading_path) or chunk.document
        user = (
            f'Text from {chunk.document} ({where}):\n"""\n{chunk.text[:MAX_CHUNK_CHARS_IN_PROMPT]}\n"""\n\n'
            f"Write {STYLES[style]}. Reply with the JSON object only."
        )
        request = inference_pb2.GenerateRequest(
            model=self.settings.model,
            messages=[
                common_pb2.ChatMessage(role="system", content=SYSTEM_PROMPT),
                common_pb2.ChatMessage(role="user", content=EXAMPLE_TEXT),
                common_pb2.ChatMessage(role="assistant", content=EXAMPLE_REPLY),
                common_pb2.ChatMessage(role="user", content=user),
            ],
            sampling=inference_pb2.SamplingParams(
                max_tokens=self.settings.max_tokens,
                temperature=0.0 if attempt == 0 else self.settings.temperature,
                seed=attempt,
            ),
        )
        try:
            return self.stub.Generate(request, timeout=self.settings.timeout_seconds).text
        except grpc.RpcError as err:
            if err.code() in _SKIPPED_CALL_CODES:
                return None
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise GeneratorMissing(
                    f"the inference service does not serve the generator '{self.settings.model}': {err.details()}"
                ) from None
            raise
