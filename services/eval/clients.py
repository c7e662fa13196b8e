"""The eval service's calls to the other services: registry, data rows, generation and scoring.

Generation is never one example at a time: a thread pool keeps `concurrency` Generate calls in
flight, so the gateway's engine (vLLM or the transformers engine with dynamic batching) decodes
them together. Scoring sends many continuations per Score call for the same reason.
"""

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import grpc

from finetune.v1 import (
    common_pb2,
    data_pb2,
    data_pb2_grpc,
    eval_pb2,
    inference_pb2,
    inference_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)
from ftcommon.errors import InvalidArgument, Unavailable, describe_rpc_error
from ftcommon.grpc_client import open_channel
from ftcommon.job_runtime import JobStopped
from services.eval.analysis import Answer
from services.eval.config import EvalSettings

Messages = list[dict[str, str]]
# Called after each finished generation with the number done so far; returns False to stop early.
ProgressFn = Callable[[int], bool]

# A training job's history is read to its end; a job still running would stream forever.
TRAINING_HISTORY_TIMEOUT_SECONDS = 15.0
PAGE_SIZE = 500


@dataclass(frozen=True)
class ResolvedModel:
    reference: str  # what the caller wrote: id, name or alias
    model_id: str
    name: str
    job_id: str  # the training job that made it; empty for base models


def _peer_failed(service: str, address: str, err: grpc.RpcError) -> Unavailable:
    return Unavailable(f"the {service} service at {address} failed: {describe_rpc_error(err)}")


class Clients:
    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        timeout = settings.rpc_timeout_seconds
        self._channels = [
            open_channel(settings.inference_address, timeout, settings.security),
            open_channel(settings.data_address, timeout, settings.security),
            open_channel(settings.trainer_address, timeout, settings.security),
        ]
        self.inference = inference_pb2_grpc.InferenceServiceStub(self._channels[0])
        self.data = data_pb2_grpc.DataServiceStub(self._channels[1])
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels[2])

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    # Registry

    def resolve_model(self, reference: str, field: str = "models") -> ResolvedModel:
        try:
            model = self.trainer.GetModel(trainer_pb2.GetModelRequest(name=reference))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise InvalidArgument(
                    f"no model, name or alias {reference!r} in the registry", field=field
                ) from err
            raise _peer_failed("trainer", self.settings.trainer_address, err) from None
        return ResolvedModel(reference, model.id, model.name, model.lineage.job_id)

    def check_data(self, data: eval_pb2.EvalData) -> None:
        """The prepared version or the dataset a run names exists (with the split asked for)."""
        source = data.WhichOneof("source")
        try:
            if source == "prepared_version_id":
                version = self.data.GetPreparedVersion(
                    data_pb2.GetPreparedVersionRequest(id=data.prepared_version_id)
                )
                split = data.split or "test"
                if version.split_stats and split not in version.split_stats:
                    raise InvalidArgument(
                        f"prepared version {version.id} has no {split!r} split "
                        f"(it has {', '.join(sorted(version.split_stats))})",
                        field="data.split",
                    )
            elif source == "dataset_id":
                self.data.GetDataset(data_pb2.GetDatasetRequest(id=data.dataset_id))
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                value = getattr(data, source or "")
                raise InvalidArgument(f"{value!r} does not exist", field=f"data.{source}") from err
            raise _peer_failed("data", self.settings.data_address, err) from None

    def training_curve(self, job_id: str) -> list[dict[str, float]]:
        """Train-step losses and validation losses from the training job's durable event log."""
        points: list[dict[str, float]] = []
        stream = self.trainer.WatchJob(
            common_pb2.WatchRequest(id=job_id, after_index=0), timeout=TRAINING_HISTORY_TIMEOUT_SECONDS
        )
        try:
            for event in stream:
                metrics = dict(event.metrics)
                if event.kind == common_pb2.EVENT_KIND_TRAIN_STEP and "loss" in metrics:
                    points.append({"step": metrics.get("step", 0.0), "loss": metrics["loss"]})
                elif event.kind == common_pb2.EVENT_KIND_VALIDATION and "validation_loss" in metrics:
                    points.append(
                        {"step": metrics.get("step", 0.0), "validation_loss": metrics["validation_loss"]}
                    )
        except grpc.RpcError as err:
            # A deadline ends the history of a job still running; anything else means no curve.
            if err.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND):
                raise
        return points

    # Data

    def prepared_examples(self, version_id: str, split: str) -> Iterator[data_pb2.Conversation]:
        token = ""
        while True:
            page = self.data.ReadPreparedExamples(
                data_pb2.ReadPreparedExamplesRequest(
                    version_id=version_id,
                    split=split,
                    page=common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=token),
                )
            )
            yield from page.examples
            token = page.next_page_token
            if not token:
                return

    def dataset_rows(self, dataset_id: str) -> Iterator[data_pb2.Conversation]:
        offset = 0
        while True:
            page = self.data.PreviewDataset(
                data_pb2.PreviewDatasetRequest(id=dataset_id, offset=offset, limit=PAGE_SIZE)
            )
            yield from page.rows
            offset += len(page.rows)
            if not page.rows or offset >= page.total:
                return

    # Generation and scoring

    def generate_many(
        self,
        model_id: str,
        prompts: Sequence[Messages],
        sampling: inference_pb2.SamplingParams,
        on_progress: ProgressFn,
    ) -> list[Answer]:
        """Answers in prompt order, `concurrency` requests in flight at any time."""
        answers: list[Answer | None] = [None] * len(prompts)
        pending: dict[Future, int] = {}
        next_index = 0
        done = 0
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="eval-gen") as pool:
            while next_index < len(prompts) or pending:
                while next_index < len(prompts) and len(pending) < self.settings.concurrency:
                    future = pool.submit(self._generate_one, model_id, prompts[next_index], sampling)
                    pending[future] = next_index
                    next_index += 1
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for future in finished:
                    answers[pending.pop(future)] = future.result()
                    done += 1
                    if not on_progress(done):
                        for other in pending:
                            other.cancel()
                        raise JobStopped()
        return [answer for answer in answers if answer is not None]

    def _generate_one(
        self, model_id: str, messages: Messages, sampling: inference_pb2.SamplingParams
    ) -> Answer:
        response = self.inference.Generate(
            inference_pb2.GenerateRequest(
                model=model_id,
                messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
                sampling=sampling,
            ),
            timeout=self.settings.generate_timeout_seconds,
        )
        return Answer(
            text=response.text,
            hit_max_tokens=response.finish_reason == inference_pb2.FINISH_REASON_LENGTH,
            completion_tokens=response.completion_tokens,
        )

    def score_many(self, model_id: str, items: Sequence[inference_pb2.ScoreItem]) -> list[tuple[float, int]]:
        """(summed logprob, tokens) per item, in order; batches go out concurrently."""
        size = self.settings.score_batch_size
        batches = [list(items[start : start + size]) for start in range(0, len(items), size)]
        workers = max(1, min(len(batches), self.settings.concurrency // 4 or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-score") as pool:
            responses = list(pool.map(lambda batch: self._score_batch(model_id, batch), batches))
        return [result for response in responses for result in response]

    def _score_batch(self, model_id: str, batch: list[inference_pb2.ScoreItem]) -> list[tuple[float, int]]:
        response = self.inference.Score(
            inference_pb2.ScoreRequest(model=model_id, items=batch),
            timeout=self.settings.generate_timeout_seconds,
        )
        return [(result.logprob, result.tokens) for result in response.results]
