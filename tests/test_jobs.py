"""The shared job state machine on SQLite: transitions, events, claims, stale workers, idempotency."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import MetaData

from ftcommon.db import Database, Migration, create_tables
from ftcommon.errors import FailedPrecondition, NotFound
from ftcommon.jobs import EventKind, JobState, JobStore, add_pause_requested, job_tables


@pytest.fixture
def store(tmp_path) -> JobStore:
    metadata = MetaData()
    jobs, events = job_tables(metadata, "demo")
    db = Database(
        f"sqlite:///{tmp_path / 'jobs.db'}",
        metadata,
        [Migration("0001", create_tables(metadata, "demo_jobs", "demo_job_events"))],
    )
    assert db.migrate() == ["0001"]
    assert db.migrate() == []
    return JobStore(db, jobs, events, "job")


def test_a_job_runs_through_its_states_and_logs_each(store):
    job = store.create("prepare", {"x": 1})
    assert job.state == JobState.QUEUED
    claimed = store.claim("worker-a")
    assert claimed is not None and claimed.id == job.id and claimed.attempt == 1
    store.emit(job.id, EventKind.PROGRESS, progress=0.5, metrics={"rows": 10.0})
    assert store.transition(job.id, JobState.SUCCEEDED, result={"version": "v1"})
    done = store.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.result == {"version": "v1"} and done.progress == 1.0
    events = store.events_after(job.id, 0)
    assert [e.index for e in events] == [1, 2, 3, 4]
    assert [e.state for e in events if e.kind == EventKind.STATE] == [
        JobState.QUEUED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]
    assert events[2].metrics == {"rows": 10.0}


def test_terminal_states_are_final(store):
    job = store.create("prepare", {})
    store.claim("w")
    assert store.transition(job.id, JobState.FAILED, error="boom")
    assert not store.transition(job.id, JobState.RUNNING)
    assert not store.transition(job.id, JobState.SUCCEEDED)
    assert store.get(job.id).error == "boom"
    with pytest.raises(FailedPrecondition):
        store.request_cancel(job.id)


def test_watch_resumes_after_an_index_without_repeats(store):
    job = store.create("train", {})
    store.claim("w")
    for step in range(5):
        store.emit(job.id, EventKind.TRAIN_STEP, metrics={"step": float(step)})
    store.transition(job.id, JobState.SUCCEEDED)
    everything = [e.index for e in store.watch(job.id, 0, lambda: True, poll_seconds=0.01)]
    rest = [e.index for e in store.watch(job.id, 4, lambda: True, poll_seconds=0.01)]
    assert everything == list(range(1, 9))
    assert rest == list(range(5, 9))


def test_queued_job_cancels_at_once_running_job_is_flagged(store):
    queued = store.create("train", {})
    assert store.request_cancel(queued.id).state == JobState.CANCELLED
    running = store.create("train", {})
    store.claim("w")
    flagged = store.request_cancel(running.id)
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert store.cancel_requested(running.id)


def test_idempotency_key_returns_the_first_job(store):
    first = store.create("train", {"a": 1}, idempotency_key="ci-build-42")
    again = store.create("train", {"a": 1}, idempotency_key="ci-build-42")
    assert again.id == first.id
    assert len(store.list_jobs(None, 0, 10)) == 1


def test_two_workers_never_claim_the_same_job(store):
    for _ in range(20):
        store.create("train", {})
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def work(name: str) -> None:
        while (job := store.claim(name)) is not None:
            claimed[name].append(job.id)

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_ids = claimed["a"] + claimed["b"]
    assert len(all_ids) == 20 and len(set(all_ids)) == 20


def test_a_job_whose_worker_died_is_requeued_and_resumed_as_a_new_attempt(store):
    job = store.create("train", {})
    store.claim("dead-worker")
    assert store.requeue_stale(timedelta(seconds=-1)) == [job.id]
    assert store.get(job.id).state == JobState.QUEUED
    again = store.claim("live-worker")
    assert again.id == job.id and again.attempt == 2
    assert not store.heartbeat(job.id, "dead-worker")
    assert store.heartbeat(job.id, "live-worker")


def test_unknown_job_is_not_found(store):
    with pytest.raises(NotFound):
        store.get("job-missing")


def test_a_job_that_keeps_losing_its_worker_fails_instead_of_looping(store):
    job = store.create("train", {})
    for attempt in (1, 2):
        store.claim(f"worker-{attempt}")
        requeued = store.requeue_stale(timedelta(seconds=-1), max_attempts=2)
        assert requeued == ([job.id] if attempt == 1 else [])
    failed = store.get(job.id)
    assert failed.state == JobState.FAILED and "lost on each of 2 attempts" in failed.error


def test_a_queued_job_pauses_at_once_and_resumes_to_the_queue(store):
    job = store.create("train", {})
    paused = store.request_pause(job.id)
    assert paused.state == JobState.PAUSED and paused.pause_requested
    assert store.claim("w") is None, "a paused job is nobody's to run"
    assert store.request_pause(job.id).state == JobState.PAUSED  # asking again changes nothing
    resumed = store.resume(job.id)
    assert resumed.state == JobState.QUEUED and not resumed.pause_requested
    assert store.claim("w").id == job.id
    states = [e.message for e in store.events_after(job.id, 0) if e.kind == EventKind.STATE]
    assert states == ["queued", "paused", "resumed", "claimed by w"]


def test_a_running_job_is_flagged_and_a_pause_not_taken_can_be_withdrawn(store):
    job = store.create("train", {})
    store.claim("w")
    flagged = store.request_pause(job.id)
    assert flagged.state == JobState.RUNNING and store.pause_requested(job.id)
    assert store.resume(job.id).state == JobState.RUNNING and not store.pause_requested(job.id)
    store.request_pause(job.id)
    assert store.transition(job.id, JobState.PAUSED, require_from={JobState.RUNNING})
    assert store.get(job.id).worker_id == ""


def test_a_paused_job_can_be_cancelled_and_an_ended_one_neither_paused_nor_resumed(store):
    job = store.create("train", {})
    store.request_pause(job.id)
    assert store.request_cancel(job.id).state == JobState.CANCELLED
    with pytest.raises(FailedPrecondition):
        store.request_pause(job.id)
    with pytest.raises(FailedPrecondition):
        store.resume(job.id)


def test_a_job_asked_to_pause_whose_worker_died_is_paused_not_requeued(store):
    job = store.create("train", {})
    store.claim("dead-worker")
    store.request_pause(job.id)
    assert store.requeue_stale(timedelta(seconds=-1)) == []
    assert store.get(job.id).state == JobState.PAUSED


def test_a_jobs_table_made_before_pausing_existed_gains_the_flag(tmp_path):
    metadata = MetaData()
    jobs, events = job_tables(metadata, "old")
    url = f"sqlite:///{tmp_path / 'old.db'}"
    first = Migration("0001", create_tables(metadata, "old_jobs", "old_job_events"))
    assert Database(url, metadata, [first]).migrate() == ["0001"]
    old = Database(url, metadata, [first])
    with old.begin() as conn:  # the table as it was made before the column existed, with a job in it
        conn.exec_driver_sql("ALTER TABLE old_jobs DROP COLUMN pause_requested")
        conn.exec_driver_sql(
            "INSERT INTO old_jobs (id, kind, state, payload, result, error, progress, attempt, worker_id, "
            "cancel_requested, created_at) VALUES ('job-old', 'train', 1, '{}', '{}', '', 0, 0, '', 0, "
            "'2026-01-01 00:00:00')"
        )
    db = Database(url, metadata, [first, Migration("0002", add_pause_requested("old_jobs"))])
    assert db.migrate() == ["0002"]
    store = JobStore(db, jobs, events, "job")
    assert not store.get("job-old").pause_requested
    assert store.request_pause("job-old").state == JobState.PAUSED
