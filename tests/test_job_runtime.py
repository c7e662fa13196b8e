"""The shared job runtime on each service's own job tables: a worker whose lease is lost stops, and never
overwrites the outcome of the worker that took the job over; cancel and shutdown settle the job."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest
from grpc_health.v1.health_pb2_grpc import HealthStub

from ftcommon.db import Database
from ftcommon.job_runtime import (
    Finished,
    JobContext,
    JobFailed,
    JobRuntime,
    JobRuntimeSettings,
    JobStopped,
)
from ftcommon.jobs import JobState, JobStore, Lease
from services.data import tables as data_tables
from services.data.config import DataSettings
from services.data.worker import PREPARE_KIND
from services.eval import tables as eval_tables
from services.eval.config import EvalSettings
from services.eval.worker import KIND as EVAL_KIND
from services.trainer import tables as trainer_tables
from services.trainer.config import TrainerSettings
from services.trainer.job_queue import JOB_KIND as TRAIN_KIND
from services.trainer.job_queue import job_store as trainer_job_store

WAIT_SECONDS = 10.0


def _prepare_store(db_url: str) -> JobStore:
    db = Database(db_url, data_tables.metadata, data_tables.MIGRATIONS)
    db.migrate()
    return JobStore(db, data_tables.prepare_jobs, data_tables.prepare_job_events, id_prefix="prep")


def _train_store(db_url: str) -> JobStore:
    db = Database(db_url, trainer_tables.metadata, trainer_tables.MIGRATIONS)
    db.migrate()
    return trainer_job_store(db)


def _eval_store(db_url: str) -> JobStore:
    db = Database(db_url, eval_tables.metadata, eval_tables.MIGRATIONS)
    db.migrate()
    return JobStore(db, eval_tables.jobs, eval_tables.job_events, id_prefix="eval")


KINDS: dict[str, Callable[[str], JobStore]] = {
    PREPARE_KIND: _prepare_store,
    TRAIN_KIND: _train_store,
    EVAL_KIND: _eval_store,
}


@pytest.fixture(params=sorted(KINDS))
def kind_and_store(request, tmp_path: Path) -> Iterator[tuple[str, JobStore]]:
    store = KINDS[request.param](f"sqlite:///{tmp_path / 'jobs.db'}")
    yield request.param, store
    store.db.dispose()


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def _take_over(store: JobStore, job_id: str) -> Lease:
    """What a second worker does when the first looked dead: requeue the job, then claim it."""
    assert store.requeue_stale(timedelta(seconds=-1)) == [job_id]
    claimed = store.claim("worker-b")
    assert claimed is not None and claimed.id == job_id and claimed.attempt == 2
    return Lease.of(claimed)


def _settings(heartbeat_seconds: float) -> JobRuntimeSettings:
    # Stale after an hour: only the test decides that the first worker looks dead.
    return JobRuntimeSettings(
        poll_seconds=0.02, heartbeat_seconds=heartbeat_seconds, stale_after_seconds=3600
    )


def test_a_worker_whose_lease_is_lost_stops_and_leaves_the_job_to_the_new_owner(kind_and_store) -> None:
    kind, store = kind_and_store
    started = threading.Event()
    stopped_because: list[str] = []

    def runner(context: JobContext) -> Finished:
        started.set()
        try:
            while True:
                context.stop_if_asked()
                time.sleep(0.01)
        except JobStopped:
            stopped_because.append("lease lost" if context.lease_lost else "other")
            raise

    runtime = JobRuntime(store, kind, runner, _settings(heartbeat_seconds=0.05))
    job = store.create(kind, {"n": 1})
    runtime.start()
    try:
        assert started.wait(WAIT_SECONDS)
        new_owner = _take_over(store, job.id)
        _wait_until(lambda: stopped_because, "the first worker's runner stops")
        assert stopped_because == ["lease lost"]
        # The old worker wrote nothing: the job is still the new owner's running attempt.
        time.sleep(0.2)
        taken = store.get(job.id)
        assert (taken.state, taken.worker_id, taken.attempt) == (JobState.RUNNING, "worker-b", 2)
        assert store.transition(job.id, JobState.SUCCEEDED, result={"by": "b"}, lease=new_owner)
        assert store.get(job.id).result == {"by": "b"}
    finally:
        runtime.stop()


@pytest.mark.parametrize("first_worker_ends_by", ["finishing", "failing", "stopping"])
def test_a_worker_that_lost_its_lease_cannot_overwrite_the_new_owners_outcome(
    kind_and_store, first_worker_ends_by: str
) -> None:
    """The first worker ends after the job was taken over but before its own heartbeat noticed: the lease
    on the outcome, not the heartbeat, keeps it from writing over the new owner's job."""
    kind, store = kind_and_store
    taken_over = threading.Event()
    started = threading.Event()
    ended = threading.Event()

    def runner(context: JobContext) -> Finished:
        started.set()
        assert taken_over.wait(WAIT_SECONDS)
        ended.set()
        if first_worker_ends_by == "failing":
            raise JobFailed("the first worker failed")
        if first_worker_ends_by == "stopping":
            raise JobStopped()  # with no lease lost noticed, this would put the job back in the queue
        return Finished({"by": "a"})

    runtime = JobRuntime(store, kind, runner, _settings(heartbeat_seconds=3600))
    job = store.create(kind, {"n": 1})
    runtime.start()
    try:
        assert started.wait(WAIT_SECONDS)
        new_owner = _take_over(store, job.id)
        taken_over.set()
        assert ended.wait(WAIT_SECONDS)
        time.sleep(0.2)  # the first worker writes (or fails to write) its outcome now
        taken = store.get(job.id)
        assert (taken.state, taken.worker_id, taken.result, taken.error) == (
            JobState.RUNNING,
            "worker-b",
            {},
            "",
        )
        assert store.transition(job.id, JobState.SUCCEEDED, result={"by": "b"}, lease=new_owner)
        assert store.get(job.id).result == {"by": "b"}
    finally:
        runtime.stop()


def test_cancel_and_shutdown_settle_a_running_job(tmp_path: Path) -> None:
    store = _prepare_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    running = threading.Event()

    def runner(context: JobContext) -> Finished:
        running.set()
        while context.keep_going():
            time.sleep(0.01)
        raise JobStopped()

    cancelled = store.create(PREPARE_KIND, {})
    runtime = JobRuntime(store, PREPARE_KIND, runner, _settings(heartbeat_seconds=0.05))
    runtime.start()
    assert running.wait(WAIT_SECONDS)
    store.request_cancel(cancelled.id)
    _wait_until(lambda: store.get(cancelled.id).state == JobState.CANCELLED, "the job is cancelled")

    running.clear()
    interrupted = store.create(PREPARE_KIND, {})
    assert running.wait(WAIT_SECONDS)
    runtime.stop()
    back = store.get(interrupted.id)
    assert back.state == JobState.QUEUED and back.worker_id == ""
    store.db.dispose()


def test_a_runner_that_stops_for_a_pause_leaves_the_job_paused(tmp_path: Path) -> None:
    store = _prepare_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    running = threading.Event()

    def runner(context: JobContext) -> Finished:
        running.set()
        while context.keep_going():  # a pause does not stop keep_going(): the runner honours it itself
            if context.pause_requested():
                raise JobStopped()
            time.sleep(0.01)
        raise JobStopped()

    job = store.create(PREPARE_KIND, {})
    runtime = JobRuntime(store, PREPARE_KIND, runner, _settings(heartbeat_seconds=0.05))
    runtime.start()
    try:
        assert running.wait(WAIT_SECONDS)
        store.request_pause(job.id)
        _wait_until(lambda: store.get(job.id).state == JobState.PAUSED, "the job is paused")
        running.clear()
        store.resume(job.id)
        assert running.wait(WAIT_SECONDS), "the resumed job runs again"
        assert store.get(job.id).attempt == 2
    finally:
        runtime.stop()
    store.db.dispose()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_runner_results_and_errors_become_outcomes(tmp_path: Path) -> None:
    store = _eval_store(f"sqlite:///{tmp_path / 'jobs.db'}")
    outcomes = {"ok": Finished({"x": 1}, "done"), "bad": JobFailed("no such split"), "bug": KeyError("k")}

    def runner(context: JobContext) -> Finished:
        if context.job.payload["case"] == "peer":  # a real failed call: nothing listens on that port
            with grpc.insecure_channel(f"127.0.0.1:{_closed_port()}") as channel:
                HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
        outcome = outcomes[context.job.payload["case"]]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    runtime = JobRuntime(store, EVAL_KIND, runner, _settings(heartbeat_seconds=1))
    jobs = {case: store.create(EVAL_KIND, {"case": case}) for case in [*outcomes, "peer"]}
    while runtime.poll_once("worker-a"):
        pass
    ok, bad, bug, peer = (store.get(jobs[case].id) for case in ("ok", "bad", "bug", "peer"))
    assert (ok.state, ok.result) == (JobState.SUCCEEDED, {"x": 1})
    assert (bad.state, bad.error) == (JobState.FAILED, "no such split")
    assert bug.state == JobState.FAILED and bug.error == "internal error: KeyError: 'k'"
    assert peer.state == JobState.FAILED
    assert peer.error.startswith("a call to another service failed: UNAVAILABLE: ")
    assert "debug_error_string" not in peer.error and "\n" not in peer.error
    store.db.dispose()


def test_each_service_nests_one_job_settings_block_and_keeps_its_older_names(monkeypatch) -> None:
    monkeypatch.setenv("FT_DATA_JOB_STALE_SECONDS", "4")  # an older flat name
    monkeypatch.setenv("FT_TRAINER_JOBS__HEARTBEAT_SECONDS", "0.5")  # the nested one
    monkeypatch.setenv("FT_TRAINER_HEARTBEAT_SECONDS", "9")  # loses to the nested one
    data = DataSettings(job_poll_seconds=0.1, prepare_workers=2).jobs
    assert (data.poll_seconds, data.workers, data.stale_after_seconds) == (0.1, 2, 4.0)
    assert TrainerSettings().jobs.heartbeat_seconds == 0.5
    evaluation = EvalSettings(max_attempts=5).jobs
    # Keyword arguments win; what is not given keeps the service's own default.
    assert (evaluation.max_attempts, evaluation.stale_after_seconds) == (5, 60.0)
