"""The shared database layer, the job state machine and the model registry against a real PostgreSQL.

Needs FT_TEST_POSTGRES_URL (`export FT_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh)`); skips when it
is unset or the server does not answer. Each test run works in a database of its own, dropped afterwards.
"""

import importlib
import importlib.util
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text, update
from sqlalchemy.engine import URL, make_url

from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database, utcnow
from ftcommon.errors import FailedPrecondition
from ftcommon.jobs import EventKind, JobState, JobStore
from services.trainer import tables as trainer_tables
from services.trainer.config import DEFAULT_BASE_MODEL_NAME
from services.trainer.registry import BASE, ModelRegistry

POSTGRES_URL_ENV = "FT_TEST_POSTGRES_URL"
SERVICES = ("data", "trainer", "eval", "inference")


def _admin_engine(url: URL):
    # CREATE/DROP DATABASE cannot run inside a transaction.
    return create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A freshly created database on the test server; dropped when the module's tests are done."""
    raw = os.environ.get(POSTGRES_URL_ENV)
    if not raw:
        pytest.skip(
            f"{POSTGRES_URL_ENV} is unset: run `export {POSTGRES_URL_ENV}=$(bash scripts/start_postgres.sh)`"
        )
    server = make_url(raw)
    admin = _admin_engine(server)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means: no usable server here
        admin.dispose()
        pytest.skip(f"PostgreSQL at {server.render_as_string(hide_password=True)} is unreachable: {exc}")
    name = f"ft_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def trainer_db(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url, trainer_tables.metadata, trainer_tables.MIGRATIONS)
    db.migrate()
    yield db
    db.dispose()


@pytest.fixture
def job_store(trainer_db: Database) -> JobStore:
    # Each test gets an empty queue, so claims only see that test's jobs.
    with trainer_db.begin() as conn:
        conn.execute(trainer_tables.job_events.delete())
        conn.execute(trainer_tables.jobs.delete())
    return JobStore(trainer_db, trainer_tables.jobs, trainer_tables.job_events, "train")


def _services_with_tables() -> list[str]:
    # Services add their tables module as they are built; every one that exists must migrate on PostgreSQL.
    return [name for name in SERVICES if importlib.util.find_spec(f"services.{name}.tables") is not None]


# Migrations


@pytest.mark.parametrize("service", _services_with_tables())
def test_service_migrations_apply_once_in_a_database_of_its_own(postgres_url: str, service: str):
    module = importlib.import_module(f"services.{service}.tables")
    url = make_url(postgres_url)
    name = f"{url.database}_{service}"
    admin = _admin_engine(url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(
        url.set(database=name).render_as_string(hide_password=False), module.metadata, module.MIGRATIONS
    )
    try:
        assert db.migrate() == [m.revision for m in module.MIGRATIONS]
        assert db.migrate() == []
        assert set(module.metadata.tables) <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_concurrent_migrations_apply_each_revision_once(postgres_url: str):
    url = make_url(postgres_url)
    name = f"{url.database}_race"
    admin = _admin_engine(url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    target = url.set(database=name).render_as_string(hide_password=False)
    databases = [Database(target, trainer_tables.metadata, trainer_tables.MIGRATIONS) for _ in range(4)]
    start = threading.Barrier(len(databases))

    def migrate(db: Database) -> list[str]:
        start.wait()
        return db.migrate()

    try:
        with ThreadPoolExecutor(len(databases)) as pool:
            applied = list(pool.map(migrate, databases))
        every_revision = [m.revision for m in trainer_tables.MIGRATIONS]
        assert sorted(r for revisions in applied for r in revisions) == sorted(every_revision)
    finally:
        for db in databases:
            db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# Jobs


def test_create_and_idempotency_key(job_store: JobStore):
    job = job_store.create("train", {"steps": 3}, idempotency_key="run-1")
    assert job.state == JobState.QUEUED and job.payload == {"steps": 3}
    assert job_store.create("train", {"steps": 99}, idempotency_key="run-1").id == job.id
    assert job_store.create("train", {"steps": 3}).id != job.id


def test_concurrent_creates_with_one_idempotency_key_make_one_job(job_store: JobStore):
    start = threading.Barrier(6)

    def create(_: int) -> str:
        start.wait()
        return job_store.create("train", {}, idempotency_key="same-request").id

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(create, range(6)))
    assert len(ids) == 1


def test_concurrent_workers_never_claim_the_same_job(job_store: JobStore):
    created = {job_store.create("train", {"n": n}).id for n in range(24)}
    start = threading.Barrier(4)

    def work(worker: int) -> list[str]:
        start.wait()
        taken = []
        while (job := job_store.claim(f"worker-{worker}")) is not None:
            taken.append(job.id)
        return taken

    with ThreadPoolExecutor(4) as pool:
        per_worker = list(pool.map(work, range(4)))
    claimed = [job_id for taken in per_worker for job_id in taken]
    assert len(claimed) == len(set(claimed)) == len(created)
    assert set(claimed) == created
    assert all(job_store.get(job_id).attempt == 1 for job_id in claimed)


def test_claim_skips_a_row_another_transaction_has_locked(job_store: JobStore, trainer_db: Database):
    oldest = job_store.create("train", {})
    newer = job_store.create("train", {})
    jobs = trainer_tables.jobs
    with trainer_db.engine.connect() as conn, conn.begin():
        conn.execute(jobs.select().where(jobs.c.id == oldest.id).with_for_update())
        # Without SKIP LOCKED this claim would block until the transaction above ends.
        claimed = job_store.claim("worker-a")
    assert claimed is not None and claimed.id == newer.id
    assert job_store.claim("worker-b").id == oldest.id


def test_transitions_follow_the_state_machine(job_store: JobStore):
    job = job_store.create("train", {})
    assert not job_store.transition(job.id, JobState.SUCCEEDED)
    claimed = job_store.claim("worker-a")
    assert claimed.id == job.id and claimed.state == JobState.RUNNING
    assert job_store.heartbeat(job.id, "worker-a")
    assert not job_store.heartbeat(job.id, "worker-b")
    assert job_store.transition(job.id, JobState.SUCCEEDED, result={"model_id": "m-1"})
    done = job_store.get(job.id)
    assert done.state == JobState.SUCCEEDED and done.result == {"model_id": "m-1"} and done.progress == 1.0
    assert done.finished_at is not None
    assert not job_store.transition(job.id, JobState.RUNNING)
    states = [e.state for e in job_store.events_after(job.id, 0) if e.kind == EventKind.STATE]
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]


def test_watch_streams_events_until_the_job_ends(job_store: JobStore):
    job = job_store.create("train", {})
    job_store.claim("worker-a")

    def run() -> None:
        for step in range(1, 6):
            job_store.emit(job.id, EventKind.TRAIN_STEP, progress=step / 5, metrics={"loss": 1.0 / step})
        job_store.transition(job.id, JobState.SUCCEEDED)

    runner = threading.Thread(target=run)
    runner.start()
    events = list(job_store.watch(job.id, after_index=0, is_active=lambda: True, poll_seconds=0.05))
    runner.join()
    assert [e.index for e in events] == list(range(1, 1 + len(events)))
    assert [e.metrics["loss"] for e in events if e.kind == EventKind.TRAIN_STEP] == [
        1.0 / s for s in range(1, 6)
    ]
    assert events[-1].state == JobState.SUCCEEDED


def test_concurrent_emitters_get_distinct_event_indexes(job_store: JobStore):
    job = job_store.create("train", {})

    def emit(n: int) -> int:
        return job_store.emit(job.id, EventKind.LOG, message=f"line {n}")

    with ThreadPoolExecutor(3) as pool:
        indexes = list(pool.map(emit, range(15)))
    assert sorted(indexes) == list(range(2, 17))


def test_requeue_stale_hands_a_dead_workers_job_to_the_next(job_store: JobStore, trainer_db: Database):
    job = job_store.create("train", {})
    job_store.claim("worker-dead")
    with trainer_db.begin() as conn:
        conn.execute(
            update(trainer_tables.jobs)
            .where(trainer_tables.jobs.c.id == job.id)
            .values(heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    assert job_store.requeue_stale(timedelta(seconds=60)) == [job.id]
    assert job_store.get(job.id).state == JobState.QUEUED
    again = job_store.claim("worker-live")
    assert again.id == job.id and again.attempt == 2 and again.worker_id == "worker-live"
    assert job_store.requeue_stale(timedelta(seconds=60)) == []


def test_cancel_queued_running_and_finished_jobs(job_store: JobStore):
    queued = job_store.create("train", {})
    assert job_store.request_cancel(queued.id).state == JobState.CANCELLED
    running = job_store.create("train", {})
    job_store.claim("worker-a")
    flagged = job_store.request_cancel(running.id)
    assert flagged.state == JobState.RUNNING and flagged.cancel_requested
    assert job_store.cancel_requested(running.id)
    assert job_store.transition(running.id, JobState.CANCELLED, message="stopped by its runner")
    with pytest.raises(FailedPrecondition):
        job_store.request_cancel(running.id)


# Model registry


def test_registry_registers_the_default_model_and_moves_aliases(
    trainer_db: Database, default_model_dir: Path, tmp_path: Path
):
    registry = ModelRegistry(trainer_db, ArtifactStore(str(tmp_path / "artifacts")))
    record = registry.register_folder(
        name=DEFAULT_BASE_MODEL_NAME, kind=BASE, folder=default_model_dir, lineage={"source": "test"}
    )
    assert record.parameters == 134_515_008 and record.eos_token == "<|im_end|>"
    again = registry.register_folder(
        name=DEFAULT_BASE_MODEL_NAME, kind=BASE, folder=default_model_dir, lineage={"source": "test"}
    )
    assert again.id == record.id
    first = registry.set_alias("prod", DEFAULT_BASE_MODEL_NAME)
    second = registry.set_alias("prod", record.id)
    assert first.model_id == second.model_id == record.id and second.revision > first.revision
    assert registry.get_alias("prod").revision == second.revision
    assert registry.get("prod").id == record.id and registry.get("prod").aliases == ["prod"]
    assert [a.revision for a in registry.aliases_after(first.revision, "prod")] == [second.revision]
