"""A model's page against real services: lineage followed to the base model, prepared version, dataset, job
and hyperparameters of a tiny model trained by the real trainer; its alias history; the export downloaded
as a zip whose files are the trainer's; an unknown model and a bad format refused with the message."""

import io
import json
import re
import zipfile
from collections.abc import Iterator

import pytest
from test_console import signed_in
from test_model_export import job, trainer_without_eval  # noqa: F401  (fixtures: a tiny trained model)

from finetune.v1 import registry_pb2, registry_pb2_grpc, trainer_pb2
from ftcommon.grpc_client import open_channel
from ftcommon.grpc_server import RunningServer
from services.console.config import ConsoleSettings
from services.console.state import ConsoleState
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def console(
    tmp_path_factory: pytest.TempPathFactory,
    data_server: RunningServer,
    trainer_without_eval: str,  # noqa: F811
) -> Iterator[ConsoleState]:
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console-model"),
        data_address=data_server.address,
        trainer_address=trainer_without_eval,
        eval_address="127.0.0.1:1",  # no eval service: the page says so and shows the rest
    )
    state = ConsoleState.build(settings)
    yield state
    state.close()


def test_a_trained_models_page_shows_its_lineage_and_alias_history(
    console: ConsoleState,
    job: trainer_pb2.TrainingJob,  # noqa: F811
    trainer_without_eval: str,  # noqa: F811
) -> None:
    with open_channel(trainer_without_eval) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).Promote(
            registry_pb2.PromoteRequest(
                model=job.merged_model_id, alias="console-lineage", force=True, reason="page test"
            )
        )
    client, _ = signed_in(console, "read-only")
    page = client.get(f"/models/{job.merged_model_id}").text
    lineage = page.split('id="lineage"')[1].split("</section>")[0]
    assert f'href="/jobs/{job.status.id}"' in lineage and DEFAULT_BASE_MODEL_NAME in lineage
    assert (
        f"#version-{job.prepared_version_id}" in lineage and "export-facts" in lineage
    )  # the dataset's name
    assert re.search(r"<th>lora_rank</th><td>4</td>", lineage)
    assert "eval service" in page  # its runs could not be read: said, not a failed page
    history = page.split('id="alias-history"')[1].split("</section>")[0]
    assert "console-lineage" in history and "<b>this model</b>" in history and "force" in history
    base = client.get(f"/models/{DEFAULT_BASE_MODEL_NAME}").text
    assert "A base model" in base and "format=adapter" not in base
    assert f'href="/models/{job.merged_model_id}"' in client.get("/models").text


def test_the_adapter_downloads_as_a_zip_of_the_trainers_files(
    console: ConsoleState,
    job: trainer_pb2.TrainingJob,  # noqa: F811
) -> None:
    client, _ = signed_in(console, "read-only")
    reply = client.get(f"/models/{job.adapter_model_id}/export?format=adapter")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(reply.content))
    assert archive.testzip() is None  # every file's CRC holds
    names = archive.namelist()
    folder = names[0].split("/")[0]
    assert folder.endswith("-adapter") and all(name.startswith(f"{folder}/") for name in names)
    config = json.loads(archive.read(f"{folder}/adapter_config.json"))
    assert config["r"] == 4
    assert any(name.endswith(".safetensors") for name in names)


def test_an_unknown_model_and_a_bad_format_are_refused_by_name(console: ConsoleState) -> None:
    client, _ = signed_in(console, "read-only")
    missing = client.get("/models/no-such-model", headers={"Accept": "application/json"})
    assert missing.status_code == 404 and missing.json()["service"] == "registry"
    assert "no-such-model" in missing.json()["error"] and missing.json()["request_id"]
    bad = client.get(f"/models/{DEFAULT_BASE_MODEL_NAME}/export?format=gguf")
    assert bad.status_code == 400 and "format" in bad.text
