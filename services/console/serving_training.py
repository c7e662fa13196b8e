"""Training jobs through TrainerService: the list, one job, create, cancel, and the live event relay
(WatchJob as server-sent events; each event carries its index, so a reloaded page or a reconnecting
EventSource (Last-Event-ID) replays from where it stands)."""

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from finetune.v1 import common_pb2, data_pb2, trainer_pb2
from ftcommon.specs.train import TrainSpec
from services.console.pages import state_name
from services.console.peers import Peers, call, peer_failed


@dataclass(frozen=True)
class JobPage:
    jobs: list[trainer_pb2.TrainingJob]
    next_page_token: str


class TrainingServing:
    def __init__(self, peers: Peers, page_size: int, watch_timeout: float) -> None:
        self.peers = peers
        self.page_size = page_size
        self.watch_timeout = watch_timeout

    def page(self, page_token: str) -> JobPage:
        reply = call(
            "trainer",
            self.peers.trainer.ListJobs,
            trainer_pb2.ListJobsRequest(
                page=common_pb2.PageRequest(page_size=self.page_size, page_token=page_token)
            ),
        )
        return JobPage(list(reply.jobs), reply.next_page_token)

    def job(self, job_id: str) -> trainer_pb2.TrainingJob:
        return call("trainer", self.peers.trainer.GetJob, trainer_pb2.GetJobRequest(id=job_id))

    def checkpoints(self, job_id: str) -> list[trainer_pb2.Checkpoint]:
        reply = call("trainer", self.peers.trainer.ListCheckpoints, trainer_pb2.GetJobRequest(id=job_id))
        return list(reply.checkpoints)

    def prepared_versions(self) -> list[data_pb2.PreparedVersion]:
        reply = call(
            "data service", self.peers.data.ListPreparedVersions, data_pb2.ListPreparedVersionsRequest()
        )
        return list(reply.versions)

    def create(self, spec: TrainSpec) -> trainer_pb2.TrainingJob:
        return call("trainer", self.peers.trainer.CreateJob, spec.to_request())

    def cancel(self, job_id: str) -> trainer_pb2.TrainingJob:
        return call("trainer", self.peers.trainer.CancelJob, trainer_pb2.GetJobRequest(id=job_id))

    def events(self, job_id: str, after_index: int) -> Iterator[str]:
        """Server-sent events: `event: job` with the JobEvent as JSON, then `event: end` once the stream closes
        (the job ended); a failed stream sends `event: failure` and the browser reconnects from its last id."""
        stream = self.peers.trainer.WatchJob(
            common_pb2.WatchRequest(id=job_id, after_index=after_index), timeout=self.watch_timeout
        )
        try:
            for event in stream:
                payload = {
                    "index": event.index,
                    "kind": common_pb2.EventKind.Name(event.kind).removeprefix("EVENT_KIND_").lower(),
                    "state": state_name(event.state) if event.state else "",
                    "progress": event.progress,
                    "message": event.message,
                    "metrics": dict(event.metrics),
                }
                yield f"id: {event.index}\nevent: job\ndata: {json.dumps(payload)}\n\n"
            yield "event: end\ndata: {}\n\n"
        except grpc.RpcError as err:
            if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return  # a long-running job: the browser reopens the stream from its last event
            failure = peer_failed(err, "trainer")
            body = {"error": failure.message, "request_id": failure.request_id}
            yield f"event: failure\ndata: {json.dumps(body)}\n\n"
        finally:
            stream.cancel()
