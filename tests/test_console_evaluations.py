"""The console's evaluation pages against real data, trainer, gateway and eval services on loopback: a run
created from the form, its report rendered in the page (verdict, metrics with intervals, error categories,
the side-by-side table and its filters), the paged list, the comparison of two runs; CSRF and roles."""

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from data_fixtures import prepared_qa_version
from fastapi.testclient import TestClient
from gateway_support import one_request_at_a_time_gateway  # noqa: F401  (fixture: inference_server)
from test_console import signed_in

from finetune.v1 import common_pb2, data_pb2, eval_pb2, eval_pb2_grpc
from ftcommon.grpc_client import open_channel
from ftcommon.grpc_server import RunningServer
from services.console.app import create_app
from services.console.config import ConsoleSettings
from services.console.serving_evaluations import ExampleFilter, report_view
from services.console.state import ConsoleState
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

if TYPE_CHECKING:
    from services.eval.server import EvalServer
    from services.inference.server import InferenceServer

PAIRS = [
    ("What is the console?", "A web face of the platform."),
    ("Who may promote a model?", "Only the registry, with evidence."),
    ("Where do reports live?", "In the eval service."),
    ("What does prepare do?", "It templates, tokenizes and splits a dataset."),
    ("Which split do evaluations read?", "The test split."),
    ("How is a run compared?", "Against its baseline, row by row."),
]


def test_report_filters_by_outcome_on_the_primary_metric_and_by_category() -> None:
    def row(index: int, base: float, tuned: float, category: str | None) -> dict[str, object]:
        answers = {
            "base": {"text": "b", "error_category": None, "scores": {"reference_loss": base}},
            "tuned": {"text": "t", "error_category": category, "scores": {"reference_loss": tuned}},
        }
        return {"index": index, "question": f"q{index}", "reference": "r", "answers": answers}

    report = {
        "models": [{"label": "base"}, {"label": "tuned"}],
        "baseline": "base",
        "rule": {"primary_metric": "reference_loss"},  # lower is better: a smaller loss wins
        "summaries": {"base": {"reference_loss": {"mean": 2.0, "low": 1.5, "high": 2.5, "n": 3}}},
        "error_analysis": {"tuned": {"empty": {"count": 1}, "format": {"count": 0}}},
        "examples": [row(0, 2.0, 1.0, None), row(1, 1.0, 2.0, "empty"), row(2, 1.0, 1.0, None)],
    }
    run = eval_pb2.EvalRun()
    wins = report_view(run, report, ExampleFilter("", outcome="win"))
    assert [r["index"] for r in wins.examples] == [0]
    losses = report_view(run, report, ExampleFilter("tuned", outcome="loss"))
    assert [r["index"] for r in losses.examples] == [1]
    empty = report_view(run, report, ExampleFilter("tuned", category="empty"))
    assert [r["index"] for r in empty.examples] == [1] and empty.matching == 1
    assert empty.categories == {"empty": {"tuned": 1}}  # categories nobody fell into are left out
    assert [m.metric for m in empty.metrics] == ["reference_loss"] and empty.metrics[0].values[
        "tuned"
    ] is None


@pytest.fixture(scope="module")
def eval_server(
    data_root, trainer_server, data_server, inference_server: "InferenceServer"
) -> Iterator["EvalServer"]:
    from services.eval.config import EvalSettings
    from services.eval.server import build_server

    settings = EvalSettings(
        data_dir=data_root,
        port=0,
        inference_address=inference_server.grpc_address,
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        poll_seconds=0.1,
        concurrency=4,
    )
    server = build_server(settings)
    yield server
    server.stop(grace=1)


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory,
    data_server: RunningServer,
    trainer_server: RunningServer,
    eval_server: "EvalServer",
) -> Iterator[ConsoleState]:
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console-eval"),
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address=eval_server.address,
        page_size=1,  # two runs make two pages
    )
    state = ConsoleState.build(settings)
    yield state
    state.close()


def _finish(eval_address: str, run_id: str) -> eval_pb2.EvalRun:
    with open_channel(eval_address, 30) as channel:
        stub = eval_pb2_grpc.EvalServiceStub(channel)
        list(stub.WatchRun(common_pb2.WatchRequest(id=run_id), timeout=400))
        return stub.GetRun(eval_pb2.GetRunRequest(id=run_id))


def _start(client: TestClient, csrf: str, version: str, candidate: str, max_examples: int) -> str:
    reply = client.post(
        "/evaluations",
        data={
            "csrf_token": csrf,
            "baseline": DEFAULT_BASE_MODEL_NAME,
            "candidate": candidate,
            "prepared_version_id": version,
            "split": "test",
            "max_examples": str(max_examples),
            "max_tokens": "8",
            "off_topic_probes": "Who invented the telephone?\nHow do I iron a shirt?",
        },
        follow_redirects=False,
    )
    assert reply.status_code == 303, reply.text
    return reply.headers["location"].rsplit("/", 1)[1]


@pytest.mark.slow
def test_a_run_from_the_form_renders_its_report_filters_and_compares(
    console: ConsoleState, data_stub, data_root, eval_server: "EvalServer"
) -> None:
    split = data_pb2.SplitFractions(train=0.4, validation=0.0, test=0.6)
    version = prepared_qa_version(data_stub, data_root, "console-eval", PAIRS, split, seed=3)
    client, csrf = signed_in(console, "admin")
    assert 'id="eval-form"' in client.get("/evaluations").text  # the form, with an empty list below it

    first = _start(client, csrf, version, DEFAULT_BASE_MODEL_NAME, 0)
    waiting = client.get(f"/evaluations/{first}").text
    assert 'http-equiv="refresh"' in waiting or "verdict" in waiting
    assert _finish(eval_server.address, first).status.state == common_pb2.JOB_STATE_SUCCEEDED

    page = client.get(f"/evaluations/{first}").text
    assert 'id="verdict"' in page and "fail" in page  # a model against itself cannot win
    command = (
        f"ftctl eval run --models {DEFAULT_BASE_MODEL_NAME},{DEFAULT_BASE_MODEL_NAME} --dataset {version}"
    )
    assert command in page and "--max-tokens 8 --off-topic-probes probes.txt" in page
    metrics = page.split('id="metrics"')[1].split("</table>")[0]
    assert "token_f1" in metrics and '<svg class="interval"' in metrics and "ties" in metrics
    table = page.split('id="side-by-side"')[1].split("</table>")[0]
    rows = table.count("<tr class=")
    assert rows >= 3 and sum(question in table for question, _ in PAIRS) == rows
    ties = client.get(f"/evaluations/{first}?outcome=tie").text  # greedy: the same answers twice
    assert f"{rows} of {rows} rows" in ties
    assert "No rows match" in client.get(f"/evaluations/{first}?outcome=win").text
    assert client.get(f"/evaluations/{first}?outcome=maybe").status_code == 400

    second = _start(client, csrf, version, "", 2)
    assert _finish(eval_server.address, second).status.state == common_pb2.JOB_STATE_SUCCEEDED
    listed = client.get("/evaluations").text
    assert second in listed and "page_token=" in listed  # page size 1: the first run is on page two
    compared = client.get(f"/evaluations/compare?a={first}&b={second}")
    assert compared.status_code == 200
    header = compared.text.split('id="comparison"')[1].split("</thead>")[0]
    assert f"{first}/{DEFAULT_BASE_MODEL_NAME}" in header and f"{second}/{DEFAULT_BASE_MODEL_NAME}" in header


@pytest.mark.slow
def test_creating_a_run_needs_the_admin_role_and_the_csrf_token(console: ConsoleState) -> None:
    reader, reader_csrf = signed_in(console, "read-only")
    fields = {"baseline": DEFAULT_BASE_MODEL_NAME, "prepared_version_id": "pv-any"}
    refused = reader.post("/evaluations", data={"csrf_token": reader_csrf, **fields})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert 'id="eval-form"' not in reader.get("/evaluations").text
    admin, _ = signed_in(console, "admin")
    assert admin.post("/evaluations", data=fields).status_code == 403
    missing = admin.get("/evaluations/run-missing", headers={"Accept": "application/json"})
    assert missing.status_code == 404
    body = missing.json()
    assert body["service"] == "eval service" and re.fullmatch(r"[0-9a-f-]{8,}", body["request_id"])


def test_eval_pages_need_a_session(tmp_path) -> None:
    state = ConsoleState.build(ConsoleSettings(data_dir=tmp_path, eval_address="127.0.0.1:1"))
    try:
        client = TestClient(create_app(state))
        reply = client.get("/evaluations", follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/login")
        assert client.post("/evaluations", data={}).status_code == 401
    finally:
        state.close()
