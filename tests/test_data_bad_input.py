"""Every bad input of the data service: a clear INVALID_ARGUMENT naming what is wrong, nothing stored."""

import hashlib
import io
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_fixtures import expect_rejected, jsonl, qa_rows, upload, upload_requests

from finetune.v1 import data_pb2, data_pb2_grpc
from ftcommon.grpc_client import open_channel
from services.data.config import DataSettings
from services.data.server import build_server


def test_malformed_json_array_names_its_line(data_stub, data_root):
    data = b'[\n {"question": "a", "answer": "b"},\n {"question": "c" "answer": "d"}\n]\n'
    expect_rejected(
        data_stub, data_root, lambda: upload(data_stub, data, "rows.json"), mentions=["line 3", "bad JSON"]
    )


def test_malformed_jsonl_line_is_named_in_strict_mode(data_stub, data_root):
    data = jsonl(qa_rows(3)) + b'{"question": "x", "answer": \n' + jsonl(qa_rows(1))
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, data, "rows.jsonl", strict=True),
        mentions=["line 4", "strict mode", "bad JSON"],
    )


def test_csv_missing_column(data_stub, data_root):
    data = b"question,reply\nWhat is it?,A platform.\n"
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, data, "rows.csv"),
        mentions=["'answer'", "question, reply"],
    )


def test_parquet_renamed_jsonl(data_stub, data_root):
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(qa_rows(2)), sink)
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, sink.getvalue(), "rows.jsonl"),
        mentions=["field 'filename'", "rows.jsonl is a Parquet file", "PAR1"],
    )


def test_empty_file(data_stub, data_root):
    expect_rejected(data_stub, data_root, lambda: upload(data_stub, b"", "empty.jsonl"), mentions=["empty"])


def test_file_without_valid_rows(data_stub, data_root):
    data = jsonl([{"question": "a", "answer": ""}, {"question": "", "answer": "b"}])
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, data),
        mentions=["no valid rows", "line 1: empty answer", "line 2: empty question"],
    )


def test_non_utf8_file(data_stub, data_root):
    data = jsonl(qa_rows(2)) + '{"question": "caf\u00e9", "answer": "x"}\n'.encode("latin-1")
    err = expect_rejected(
        data_stub, data_root, lambda: upload(data_stub, data), mentions=["not UTF-8", "line 3"]
    )
    offset = data.index(b"\xe9")
    assert f"byte offset {offset}" in err.details()


def test_row_of_ten_megabytes(data_stub, data_root):
    huge = jsonl([{"question": "big", "answer": "x" * (10 * 1024 * 1024)}])
    expect_rejected(
        data_stub, data_root, lambda: upload(data_stub, huge), mentions=["line 1", "too long", "10,485,"]
    )


def test_field_mapping_naming_a_missing_column(data_stub, data_root):
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, jsonl(qa_rows(2)), field_mapping={"answer": "reply"}),
        mentions=["field 'field_mapping.answer'", "column 'reply' is not in the file"],
    )


def test_path_outside_the_allowed_roots(data_stub, data_root):
    request = data_pb2.RegisterDatasetRequest(source="../../etc/passwd")
    expect_rejected(
        data_stub,
        data_root,
        lambda: data_stub.RegisterDataset(request),
        mentions=["field 'source'", "outside the allowed roots"],
    )


def test_checksum_mismatch(data_stub, data_root):
    data = jsonl(qa_rows(2))

    def requests():
        first, *rest = upload_requests(data, "rows.jsonl")
        first.metadata.sha256 = hashlib.sha256(b"other").hexdigest()
        yield first
        yield from rest

    expect_rejected(
        data_stub, data_root, lambda: data_stub.UploadDataset(requests()), mentions=["field 'sha256'"]
    )


def test_unknown_base_model(data_stub, data_root):
    dataset = upload(data_stub, jsonl(qa_rows(3)))
    with pytest.raises(grpc.RpcError) as err:
        data_stub.PrepareDataset(
            data_pb2.PrepareDatasetRequest(dataset_id=dataset.id, base_model="no-such-model")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "field 'base_model'" in err.value.details() and "no-such-model" in err.value.details()


def test_upload_over_the_limit(trainer_server, tmp_path: Path):
    settings = DataSettings(
        data_dir=tmp_path, port=0, trainer_address=trainer_server.address, max_upload_bytes=1000
    )
    server = build_server(settings)
    try:
        with open_channel(server.address) as channel:
            stub = data_pb2_grpc.DataServiceStub(channel)
            data = jsonl(qa_rows(40))
            assert len(data) > 1000

            def undeclared():
                first, *_ = upload_requests(data, "big.jsonl")
                first.metadata.size_bytes = 0  # a client that does not declare the size is cut off by bytes
                yield first
                for start in range(0, len(data), 300):
                    yield data_pb2.UploadDatasetRequest(chunk=data[start : start + 300])

            expect_rejected(
                stub,
                tmp_path,
                lambda: upload(stub, data, "big.jsonl"),
                mentions=["field 'size_bytes'", "over the limit"],
            )
            expect_rejected(
                stub,
                tmp_path,
                lambda: stub.UploadDataset(undeclared()),
                mentions=["field 'chunk'", "over the limit"],
            )
    finally:
        server.stop(grace=1)


def test_a_file_in_another_encoding_names_the_line_and_the_option(data_stub, data_root):
    data = "question,answer\nWhat is it?,A platform.\nCaf\u00e9?,Yes.\n".encode("cp1252")
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, data, "legacy.csv"),
        mentions=["field 'encoding', line 3", "not UTF-8", "--encoding cp1252"],
    )
    utf16 = "question,answer\nWhat is it?,A platform.\n".encode("utf-16")
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, utf16 + b"\x00\xd8", "odd.csv", encoding="utf-16"),
        mentions=["field 'encoding', line 3", "not utf-16"],
    )
    expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, data, "legacy.csv", encoding="klingon"),
        mentions=["field 'encoding'", "unknown text encoding 'klingon'"],
    )


def test_a_failed_schema_detection_suggests_the_mapping_that_works(data_stub, data_root):
    data = b"q,a\nWhat is it?,A platform.\n"
    err = expect_rejected(
        data_stub,
        data_root,
        lambda: upload(data_stub, data, "qa.csv"),
        mentions=["'question', 'answer'", "(its columns are: q, a)", "--map question=q --map answer=a"],
    )
    assert ("suggested-field-mapping", '{"question": "q", "answer": "a"}') in err.trailing_metadata()
    mapping = {"question": "q", "answer": "a"}
    assert upload(data_stub, data, "qa.csv", field_mapping=mapping).counts.rows_kept == 1
