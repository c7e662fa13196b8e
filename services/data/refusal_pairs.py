"""Refusal preference pairs built from an SFT dataset (PrepareSpec.preference_pairs.from_refusals).

An off-topic prompt (a refusal row: the dataset's own, or one prepare adds from `refusals`) becomes the
pair (the refusal chosen, the generator's own answer rejected): what SFT on the refusal alone cannot say,
that answering is worse. An in-domain prompt becomes (the reference answer chosen, the refusal rejected),
which is what pushes wrong refusals down. The generator's answers come from InferenceService.Generate at
FT_DATA_INFERENCE_ADDRESS, over the channel, timeout and concurrency GenerateDataset uses, greedy: a
prepare run again after its worker was killed asks the same questions, gets the same answers and publishes
the same version (prepare writes nothing visible until its version is complete, see prepare.py).

A generated answer that is itself a refusal (the generator already refuses that prompt), or an empty one,
would make a pair whose two sides teach the same thing: the row is skipped and counted, as is a row whose
call timed out or was shed by the gateway; the version's manifest and warnings say how many.
"""

import re
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from finetune.v1 import common_pb2, inference_pb2, inference_pb2_grpc
from ftcommon.errors import describe_rpc_error
from ftcommon.grpc_client import open_channel
from ftcommon.job_runtime import JobFailed
from ftcommon.refusal_detection import RefusalDetector, opens_with_a_refusal
from ftcommon.settings import TransportSecurity
from ftcommon.word_sequences import tokens
from services.data.config import DataSettings
from services.data.records import Conversation
from services.data.refusals import DEFAULT_REFUSAL_TEMPLATE, refusal_answer

ADDRESS_SETTING = "FT_DATA_INFERENCE_ADDRESS"
# "Let's keep the discussion relevant to <anything>.": the refusal prepare itself writes, in any domain.
_TEMPLATE_REFUSAL = re.compile(
    "^" + re.escape(DEFAULT_REFUSAL_TEMPLATE).replace(re.escape("{domain}"), ".+?") + "?$", re.IGNORECASE
)
# One slow or shed call costs its row, not the whole prepare (as in GenerateDataset).
_SKIPPED_CALL_CODES = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


@dataclass(frozen=True)
class InferenceAccess:
    """Where and how the data service reaches the inference service (GenerateDataset's settings)."""

    address: str
    timeout_seconds: float
    concurrency: int
    security: TransportSecurity

    @classmethod
    def from_settings(cls, settings: DataSettings) -> "InferenceAccess":
        return cls(
            settings.inference_address,
            settings.generator_timeout_seconds,
            settings.generator_concurrency,
            settings.security,
        )


def refusal_text_of(conversations: list[Conversation], domain: str, text: str) -> str:
    """The refusal the pairs use: the request's (refusal_text, or the template with its domain), else the
    dataset's most common refusal answer; "" when there is none."""
    if text.strip() or domain.strip():
        return refusal_answer(domain, text.strip() or None)
    found = Counter(_answer(c) for c in conversations if c.is_refusal or _TEMPLATE_REFUSAL.match(_answer(c)))
    return found.most_common(1)[0][0] if found else ""


def is_refusal_row(conversation: Conversation, refusal_text: str) -> bool:
    """A row that teaches refusing: marked so (prepare's refusal rows), or answered with the refusal."""
    answer = _answer(conversation)
    return conversation.is_refusal or answer == refusal_text.strip() or bool(_TEMPLATE_REFUSAL.match(answer))


def sounds_like_refusal(answer: str, refusal_text: str) -> bool:
    """An answer no pair may reject: empty, refusing in its own words, or the refusal text reworded. The
    last is the evaluator's rule (ftcommon/refusal_detection.py): no pair rejects what it counts as a refusal."""
    if not tokens(answer) or opens_with_a_refusal(answer):
        return True
    return RefusalDetector(refusal_text).is_refusal(answer)


@dataclass
class PairCounts:
    """What building the pairs did, for the version's manifest."""

    generator: str
    off_topic_pairs: int = 0
    in_domain_pairs: int = 0
    skipped_generator_refused: int = 0  # the generator's answer was itself a refusal (or empty)
    skipped_generation_failed: int = 0  # the call timed out or was shed

    def warning(self) -> str:
        skipped = self.skipped_generator_refused + self.skipped_generation_failed
        if not skipped:
            return ""
        return (
            f"{skipped} off-topic rows made no preference pair: {self.skipped_generator_refused} were "
            f"already refused by {self.generator} (a refusal over a refusal teaches nothing) and "
            f"{self.skipped_generation_failed} got no answer in time; {self.off_topic_pairs} off-topic "
            f"and {self.in_domain_pairs} in-domain pairs were kept"
        )


def build_pairs(
    conversations: list[Conversation],
    refusal_text: str,
    generated: dict[int, str | None],
    counts: PairCounts,
) -> list[bool]:
    """Sets each row's rejected answer (the chosen one is its last message, as for uploaded pairs); returns
    which rows to keep. `generated` holds the generator's answer per off-topic row index (None: failed)."""
    keep = []
    for index, conversation in enumerate(conversations):
        if index not in generated:
            conversation.rejected = refusal_text
            counts.in_domain_pairs += 1
            keep.append(True)
            continue
        answer = generated[index]
        if answer is None:
            counts.skipped_generation_failed += 1
        elif sounds_like_refusal(answer, refusal_text):
            counts.skipped_generator_refused += 1
        else:
            conversation.rejected = answer.strip()
            conversation.is_refusal = True
            counts.off_topic_pairs += 1
        keep.append(conversation.rejected is not None)
    return keep


class AnswerGenerator:
    """The generator model's greedy answers to prompts, through InferenceService.Generate."""

    def __init__(self, access: InferenceAccess, model: str, max_new_tokens: int) -> None:
        self.access = access
        self.model = model
        self.max_new_tokens = max_new_tokens

    def answers(
        self,
        prompts: list[list[dict[str, str]]],
        progress: Callable[[int], None],
        stop_if_asked: Callable[[], None],
    ) -> list[str | None]:
        """One answer per prompt, in order (None where the call timed out or was shed); JobFailed naming
        FT_DATA_INFERENCE_ADDRESS when the inference service cannot be reached or lacks the model."""
        channel = open_channel(self.access.address, self.access.timeout_seconds, self.access.security)
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        pool = ThreadPoolExecutor(max_workers=self.access.concurrency, thread_name_prefix="refusal-pairs")
        results: list[str | None] = []
        try:
            for answer in pool.map(lambda messages: self._answer(stub, messages), prompts):
                results.append(answer)
                progress(len(results))
                stop_if_asked()
        finally:
            # A stop or failure drops the calls not yet started instead of making them all.
            pool.shutdown(wait=True, cancel_futures=True)
            channel.close()
        return results

    def _answer(
        self, stub: inference_pb2_grpc.InferenceServiceStub, messages: list[dict[str, str]]
    ) -> str | None:
        request = inference_pb2.GenerateRequest(
            model=self.model,
            messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            sampling=inference_pb2.SamplingParams(max_tokens=self.max_new_tokens, temperature=0.0),
        )
        try:
            return stub.Generate(request, timeout=self.access.timeout_seconds).text
        except grpc.RpcError as err:
            if err.code() in _SKIPPED_CALL_CODES:
                return None
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise JobFailed(
                    f"the inference service at {self.access.address} ({ADDRESS_SETTING}) does not serve the "
                    f"generator '{self.model}' (preference_pairs.generator): {err.details()}"
                ) from None
            raise JobFailed(
                f"could not generate the rejected answers: the inference service at {self.access.address} "
                f"({ADDRESS_SETTING}) failed: {describe_rpc_error(err)}"
            ) from None


def _answer(conversation: Conversation) -> str:
    return str(conversation.messages[-1]["content"]).strip()
