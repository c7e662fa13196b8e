"""`ftctl data` against the real data service: upload with progress, list, report, preview, prepare, delete."""

import json
import shlex

import pytest
from data_fixtures import jsonl, qa_rows
from typer.testing import CliRunner

from ftctl.data import app

runner = CliRunner()


@pytest.fixture
def cli_env(data_server, monkeypatch):
    monkeypatch.setenv("FT_DATA_ADDRESS", data_server.address)


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_upload_report_preview_prepare_and_delete(cli_env, tmp_path):
    path = tmp_path / "docs.csv"
    rows = qa_rows(20, "cli")
    path.write_text(
        "q,a\n" + "".join(f'"{r["question"]}","{r["answer"]}"\n' for r in rows) + '"Empty answer?",""\n'
    )
    dataset = json.loads(invoke("upload", str(path), "--map", "question=q", "--map", "answer=a", "--json"))
    assert dataset["counts"]["rows_kept"] == "20" and dataset["name"] == "docs.csv"
    dataset_id = dataset["id"]

    assert dataset_id in [d["id"] for d in json.loads(invoke("list", "--json"))["datasets"]]
    assert "docs.csv" in invoke("list")
    report = json.loads(invoke("report", dataset_id, "--json"))
    assert report["rejected"] == [{"line": "22", "reason": "empty answer", "field": "a"}]
    assert "empty answer" in invoke("report", dataset_id)
    preview = json.loads(invoke("preview", dataset_id, "--limit", "2", "--json"))
    assert [row["source_line"] for row in preview["rows"]] == ["2", "3"]

    table = invoke(
        "prepare",
        dataset_id,
        "--base-model",
        "smollm2-135m-instruct",
        "--max-seq-len",
        "128",
        "--split",
        "0.8,0.1,0.1",
    )
    assert "prepared version pv-" in table and "train" in table

    invoke("delete", dataset_id)
    assert dataset_id not in invoke("list", "--json")


def test_errors_are_one_line_and_exit_1(cli_env, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    result = runner.invoke(app, ["upload", str(path)])
    assert result.exit_code == 1
    assert "INVALID_ARGUMENT" in result.output and "empty" in result.output
    result = runner.invoke(app, ["prepare", "ds-missing", "--base-model", "smollm2-135m-instruct"])
    assert result.exit_code == 1 and "NOT_FOUND" in result.output


def test_prepare_without_waiting_prints_the_job(cli_env, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(jsonl(qa_rows(5, "nowait")))
    dataset_id = json.loads(invoke("upload", str(path), "--json"))["id"]
    job = json.loads(
        invoke("prepare", dataset_id, "--base-model", "smollm2-135m-instruct", "--no-wait", "--json")
    )
    assert job["status"]["id"].startswith("prep-")


def test_a_failed_schema_detection_prints_the_command_that_works(cli_env, tmp_path):
    path = tmp_path / "my questions.csv"
    path.write_text("q;a\nWhat is it?;A platform, for fine-tuning.\n")
    result = runner.invoke(app, ["upload", str(path), "--name", "faq"])
    assert result.exit_code == 1 and "INVALID_ARGUMENT" in result.output
    command = result.output.split("this would work:\n")[1].splitlines()[0].strip()
    assert command == f"ftctl data upload '{path}' --name faq --map question=q --map answer=a"
    dataset = json.loads(invoke(*shlex.split(command)[2:], "--json"))
    assert dataset["counts"]["rows_kept"] == "1" and dataset["name"] == "faq"
