"""The CLI itself: it starts without the heavy libraries, needs only the base install, names the service it
cannot reach, shows no `<bool>` types, keeps piped tables whole, prints server text as text, and
`train create --watch` follows the job it queued."""

import ast
import importlib.metadata
import io
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_fixtures import prepared_qa_version
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from rich.console import Console
from trainer_support import FACTS
from typer.main import get_command
from typer.testing import CliRunner

from finetune.v1 import common_pb2, data_pb2, trainer_pb2
from ftctl import common
from ftctl.main import app
from services.trainer.config import TrainerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"ftctl", "ftcommon", "finetune", "services"}
HEAVY_MODULES = ["torch", "transformers", "vllm", "fastapi", "uvicorn", "openai", "services.inference"]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter with stdout piped, as a user's `ftctl ... | less` runs."""
    environment = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )


def test_importing_the_cli_loads_no_heavy_module():
    loaded = run_python(
        f"import json, sys, ftctl.main; print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    assert json.loads(loaded.stdout) == []


def _base_install() -> set[str]:
    """The distributions `pip install .` brings: the declared dependencies and theirs, without extras."""
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pending = [Requirement(line).name for line in declared]
    installed: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in installed:
            continue
        installed.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return installed


def _imported_names(tree: ast.Module, everywhere: bool) -> set[str]:
    nodes = ast.walk(tree) if everywhere else iter(tree.body)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _source_of(module: str) -> Path | None:
    path = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _modules_the_cli_imports() -> set[str]:
    """Third-party modules that ftctl imports (anywhere in its files), and that the project's own modules it
    reaches import at their top level. Generated stubs (finetune) import grpc and protobuf only."""
    pending = [(path, True) for path in (REPO_ROOT / "ftctl").glob("*.py")]
    visited: set[Path] = set()
    third_party: set[str] = set()
    while pending:
        path, everywhere = pending.pop()
        if path in visited:
            continue
        visited.add(path)
        for name in _imported_names(ast.parse(path.read_text()), everywhere):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top == "finetune":
                continue
            if top not in FIRST_PARTY:
                third_party.add(top)
            elif (source := _source_of(name)) is not None:
                pending.append((source, source.parent.name == "ftctl"))
    return third_party


def test_every_module_the_cli_imports_comes_with_the_base_install():
    base = _base_install()
    providers = importlib.metadata.packages_distributions()
    missing = {
        module: providers.get(module)
        for module in _modules_the_cli_imports()
        if not any(canonicalize_name(dist) in base for dist in providers.get(module, []))
    }
    assert missing == {}, "add these to pyproject's `dependencies`"


def _help_pages(command, path: list[str]):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _help_pages(sub, [*path, name])


def test_no_help_page_shows_a_bool_type():
    runner = CliRunner()
    pages = list(_help_pages(get_command(app), []))
    assert ["data", "upload"] in pages and ["train", "create"] in pages
    for path in pages:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path


def test_tables_are_not_cut_when_piped():
    long_value = "artifact/" + "x" * 150
    printed = run_python(
        f"from ftctl.common import print_table; print_table('t', ['a', 'b'], [[{long_value!r}, 'y']])"
    )
    assert long_value in printed.stdout


@pytest.mark.parametrize(
    ("command", "service", "variable"),
    [(["models", "list"], "trainer", "FT_TRAINER_ADDRESS"), (["data", "list"], "data", "FT_DATA_ADDRESS")],
)
def test_connection_errors_name_the_service_its_address_and_variable(command, service, variable):
    result = CliRunner().invoke(app, command, env={variable: "127.0.0.1:1"})
    assert result.exit_code == 1
    error = " ".join(result.stderr.split())
    assert f"cannot reach the {service} service at 127.0.0.1:1" in error and variable in error


def test_names_and_text_with_markup_are_printed_as_text(data_server, tmp_path, monkeypatch):
    monkeypatch.setenv("FT_DATA_ADDRESS", data_server.address)
    runner = CliRunner()
    rows = [
        {"question": f"What does [/bold] mean, case {i}?", "answer": "[red]nothing[/red]"} for i in range(3)
    ]
    source = tmp_path / "markup.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    uploaded = runner.invoke(app, ["data", "upload", str(source), "--name", "x[/red]"])
    assert uploaded.exit_code == 0, uploaded.output
    assert "x[/red]" in uploaded.stdout
    listed = runner.invoke(app, ["data", "list"])
    assert listed.exit_code == 0 and "x[/red]" in listed.stdout
    dataset_id = json.loads(runner.invoke(app, ["data", "upload", str(source), "--json"]).stdout)["id"]
    previewed = runner.invoke(app, ["data", "preview", dataset_id])
    assert previewed.exit_code == 0, previewed.output
    assert "[/bold]" in previewed.stdout and "[red]nothing[/red]" in previewed.stdout

    # A column name with markup in a schema error.
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"q[/x]": "a question?", "reply": "an answer"}) + "\n")
    failed = runner.invoke(app, ["data", "upload", str(odd)])
    assert failed.exit_code == 1 and "q[/x]" in failed.stderr


def test_live_progress_prints_names_and_server_messages_as_text(monkeypatch):
    screen = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=screen, force_terminal=True, width=200))
    done = common_pb2.JobEvent(
        kind=common_pb2.EVENT_KIND_STATE,
        state=common_pb2.JOB_STATE_SUCCEEDED,
        message="done [/x]",
        progress=1,
    )
    assert common.follow_job(iter([done]), "preparing x[/red]") == common_pb2.JOB_STATE_SUCCEEDED
    assert "preparing x[/red]" in screen.getvalue() and "done [/x]" in screen.getvalue()


@pytest.fixture(scope="module")
def trainer_beside_data(data_root, data_server, trainer_server) -> Iterator[str]:
    """A trainer server on the shared data root that knows where the data service listens."""
    from services.trainer.server import build_server

    running = build_server(TrainerSettings(data_dir=data_root, port=0, data_address=data_server.address))
    yield running.address
    running.stop(grace=1)


def test_train_create_watch_follows_the_job_it_queued(
    data_stub, trainer_stub, data_root, trainer_beside_data
):
    """The job is cancelled while queued (no worker runs here): the watch ends with that state, exit 1."""
    split = data_pb2.SplitFractions(train=0.8, validation=0.2, test=0.0)
    version_id = prepared_qa_version(data_stub, data_root, "cli-watch", FACTS, split, seed=5)
    name = f"cli-watch-{time.monotonic_ns()}"

    def cancel_when_queued() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs = trainer_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs
            queued = [job for job in jobs if job.display_name == name]
            if queued:
                trainer_stub.CancelJob(trainer_pb2.GetJobRequest(id=queued[0].status.id))
                return
            time.sleep(0.2)

    canceller = threading.Thread(target=cancel_when_queued)
    canceller.start()
    result = CliRunner().invoke(
        app,
        ["train", "create", "--dataset", version_id, "--max-steps", "1", "--name", name, "--watch"],
        env={"FT_TRAINER_ADDRESS": trainer_beside_data},
    )
    canceller.join()
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "queued training job" in output and ": cancelled" in output
    job = [j for j in trainer_stub.ListJobs(trainer_pb2.ListJobsRequest()).jobs if j.display_name == name][0]
    assert job.status.state == common_pb2.JOB_STATE_CANCELLED
