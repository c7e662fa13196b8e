"""Sources are confined for real: fsspec aliases and chains, symlinks, disallowed protocols, loopback,
link-local and private hosts, model folders and benchmark files outside their roots are all refused
with the field named, nothing stored, and no byte of what was (or would have been) read in the message."""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from data_fixtures import dataset_ids, expect_rejected, jsonl, qa_rows

from finetune.v1 import data_pb2, data_pb2_grpc, eval_pb2, eval_pb2_grpc, trainer_pb2
from ftcommon.grpc_client import open_channel
from ftcommon.sources import SourcePolicy, resolve_source
from services.data.config import DataSettings
from services.eval.config import EvalSettings

SECRET = "root:x:0:0:root:/root:/bin/bash SECRET-LINE"
# What a probe fetched from the gateway: a JSON object whose keys were echoed as "its columns are: ...".
REMOTE_KEYS = {"openapi": "3.1.0", "info": {}, "paths": {}, "components": {}}


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file outside every root the session's services allow, holding a line that must never leak."""
    path = tmp_path_factory.mktemp("outside") / "passwd"
    path.write_text(SECRET + "\n")
    return path


def register(stub: data_pb2_grpc.DataServiceStub, source: str) -> data_pb2.Dataset:
    return stub.RegisterDataset(data_pb2.RegisterDatasetRequest(source=source), timeout=30)


def refused(stub, data_root: Path, source: str, mentions: list[str]) -> str:
    err = expect_rejected(
        stub, data_root, lambda: register(stub, source), mentions=["field 'source'", *mentions]
    )
    assert "SECRET" not in err.details() and "root:x" not in err.details()
    return err.details()


@pytest.mark.parametrize(
    ("template", "mentions"),
    [
        ("local://{path}", ["outside the allowed roots"]),
        ("file://{path}", ["outside the allowed roots"]),
        ("file:{path}", ["outside the allowed roots"]),
        ("{path}", ["outside the allowed roots"]),
        ("simplecache::file://{path}", ["chained URLs"]),
        ("file::{path}", ["chained URLs"]),
        ("filecache::local://{path}", ["chained URLs"]),
        ("memory://{path}", ["protocol 'memory' is not enabled"]),
        ("s3://bucket/{path}", ["protocol 's3' is not enabled"]),
        ("http://127.0.0.1:8000/openapi.json", ["protocol 'http' is not enabled"]),
        ("file://otherhost{path}", ["cannot name the host"]),
    ],
)
def test_a_source_outside_the_policy_is_refused(data_stub, data_root, outside, template, mentions):
    refused(data_stub, data_root, template.format(path=outside), mentions)


def test_a_symlink_inside_a_root_pointing_outside_is_refused(data_stub, data_root, outside):
    link = data_root / "files" / "innocent.jsonl"
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(outside)
    refused(data_stub, data_root, str(link), ["outside the allowed roots", "symlinks"])


def test_a_file_inside_the_roots_still_registers_by_any_local_spelling(data_stub, data_root):
    path = data_root / "files" / "spellings.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(jsonl(qa_rows(2, prefix="spelling")))
    for source in (str(path), f"file://{path}", f"local://{path}"):
        assert register(data_stub, source).counts.rows_kept == 2


class _JsonHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps(REMOTE_KEYS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def loopback_site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JsonHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _data_server(root: Path, trainer_address: str, **policy: object) -> object:
    from services.data.server import build_server

    return build_server(DataSettings(data_dir=root, port=0, trainer_address=trainer_address, **policy))


@pytest.fixture(scope="module")
def http_enabled(tmp_path_factory, trainer_server) -> Iterator[tuple[data_pb2_grpc.DataServiceStub, Path]]:
    """A data service whose operator enabled http for listed hosts, none of them in a private network."""
    root = tmp_path_factory.mktemp("http-data")
    server = _data_server(
        root,
        trainer_server.address,
        source_protocols=["file", "http"],
        source_hosts=["127.0.0.1", "localhost", "10.1.2.3", "169.254.169.254", "192.168.0.10", "[::1]"],
    )
    with open_channel(server.address) as channel:
        yield data_pb2_grpc.DataServiceStub(channel), root
    server.stop(grace=0)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/openapi.json",
        "http://localhost:{port}/openapi.json",
        "http://[::1]:{port}/openapi.json",
        "http://10.1.2.3/data.jsonl",
        "http://192.168.0.10/data.jsonl",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_loopback_private_and_link_local_hosts_are_refused(http_enabled, loopback_site, url):
    stub, root = http_enabled
    port = loopback_site.rsplit(":", 1)[1]
    details = refused(stub, root, url.format(port=port), ["loopback, link-local or private"])
    assert "openapi" not in details and "components" not in details


def test_a_host_not_listed_is_refused(http_enabled):
    stub, root = http_enabled
    refused(stub, root, "http://example.com/data.jsonl", ["host 'example.com' is not in"])


def test_a_listed_private_network_is_fetched_without_echoing_the_answer(
    tmp_path, trainer_server, loopback_site
):
    """Even from a host the operator allowed, an answer that is not a dataset is not repeated back."""
    server = _data_server(
        tmp_path,
        trainer_server.address,
        source_protocols=["http"],
        source_hosts=["127.0.0.1"],
        source_private_networks=["127.0.0.0/8"],
    )
    try:
        with open_channel(server.address) as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            details = refused(stub, tmp_path, f"{loopback_site}/openapi.json", ["127.0.0.1 sent"])
            assert not any(key in details for key in REMOTE_KEYS)
            assert dataset_ids(stub) == set()
    finally:
        server.stop(grace=0)


def test_every_address_of_a_host_is_checked(tmp_path):
    """`localhost` resolves to loopback (v4 and v6): listing the name alone is not enough."""
    policy = SourcePolicy.build([tmp_path], ["https"], ["localhost"])
    with pytest.raises(Exception, match="loopback, link-local or private"):
        resolve_source("https://localhost/data.jsonl", policy, "source")


def test_a_model_folder_outside_the_model_roots_is_refused(trainer_stub, data_root, tmp_path):
    # A link inside the trainer's model roots (its data dir's base_models) to a folder outside them.
    escape = data_root / "base_models" / "escape-link"
    escape.parent.mkdir(parents=True, exist_ok=True)
    escape.unlink(missing_ok=True)
    escape.symlink_to(tmp_path)
    for path in (tmp_path, escape, "/etc", f"local://{tmp_path}"):
        with pytest.raises(grpc.RpcError) as err:
            trainer_stub.RegisterBaseModel(
                trainer_pb2.RegisterBaseModelRequest(name="outside-model", path=str(path)), timeout=30
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "field 'path'" in err.value.details() and "outside the allowed roots" in err.value.details()
    names = [m.name for m in trainer_stub.ListModels(trainer_pb2.ListModelsRequest()).models]
    assert "outside-model" not in names


def test_an_eval_benchmark_path_outside_the_roots_is_refused(tmp_path, outside):
    from services.eval.server import build_server

    nowhere = "127.0.0.1:9"  # the benchmark check comes before any call to another service
    settings = EvalSettings(
        data_dir=tmp_path,
        port=0,
        trainer_address=nowhere,
        data_address=nowhere,
        inference_address=nowhere,
        worker_enabled=False,
    )
    server = build_server(settings)
    try:
        with open_channel(server.address, 10) as channel:
            stub = eval_pb2_grpc.EvalServiceStub(channel)
            for path in (str(outside), f"local://{outside}", f"simplecache::file://{outside}"):
                with pytest.raises(grpc.RpcError) as err:
                    stub.CreateRun(
                        eval_pb2.CreateRunRequest(
                            models=["base"], benchmarks=[eval_pb2.BenchmarkSpec(name="mmlu", path=path)]
                        )
                    )
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "field 'benchmarks[0].path'" in err.value.details()
                assert "SECRET" not in err.value.details()
            assert not stub.ListRuns(eval_pb2.ListRunsRequest()).runs
    finally:
        server.stop(grace=0)
