"""Datasets through DataService: pages of the list, uploads streamed in chunks, the validation report,
and prepare requests built from their spec (PrepareSpec)."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from finetune.v1 import common_pb2, data_pb2
from ftcommon.specs.prepare import PrepareSpec
from services.console.peers import ConsoleError, Peers, call

UPLOAD_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class DatasetPage:
    datasets: list[data_pb2.Dataset]
    next_page_token: str


@dataclass(frozen=True)
class DatasetReport:
    dataset: data_pb2.Dataset
    report: data_pb2.ValidationReport
    preview: data_pb2.PreviewDatasetResponse
    versions: list[data_pb2.PreparedVersion]


class DatasetsServing:
    def __init__(self, peers: Peers, page_size: int, max_upload_bytes: int) -> None:
        self.peers = peers
        self.page_size = page_size
        self.max_upload_bytes = max_upload_bytes

    def page(self, page_token: str) -> DatasetPage:
        reply = call(
            "data service",
            self.peers.data.ListDatasets,
            data_pb2.ListDatasetsRequest(
                page=common_pb2.PageRequest(page_size=self.page_size, page_token=page_token)
            ),
        )
        return DatasetPage(list(reply.datasets), reply.next_page_token)

    def upload(self, filename: str, name: str, source: BinaryIO) -> data_pb2.Dataset:
        def requests() -> Iterator[data_pb2.UploadDatasetRequest]:
            options = data_pb2.IngestOptions(name=name or filename)
            yield data_pb2.UploadDatasetRequest(
                metadata=data_pb2.UploadMetadata(options=options, filename=filename)
            )
            sent = 0
            while chunk := source.read(UPLOAD_CHUNK_BYTES):
                sent += len(chunk)
                if sent > self.max_upload_bytes:
                    raise ConsoleError(
                        f"the file is over the upload limit of {self.max_upload_bytes:,} bytes", 413
                    )
                yield data_pb2.UploadDatasetRequest(chunk=chunk)

        return call("data service", self.peers.data.UploadDataset, requests(), timeout=600)

    def report(self, dataset_id: str) -> DatasetReport:
        dataset = call("data service", self.peers.data.GetDataset, data_pb2.GetDatasetRequest(id=dataset_id))
        report = call(
            "data service", self.peers.data.GetValidationReport, data_pb2.GetDatasetRequest(id=dataset_id)
        )
        preview = call(
            "data service",
            self.peers.data.PreviewDataset,
            data_pb2.PreviewDatasetRequest(id=dataset_id, limit=5),
        )
        versions = call(
            "data service",
            self.peers.data.ListPreparedVersions,
            data_pb2.ListPreparedVersionsRequest(dataset_id=dataset_id),
        )
        return DatasetReport(dataset, report, preview, list(versions.versions))

    def prepare(self, spec: PrepareSpec) -> data_pb2.PrepareJob:
        return call("data service", self.peers.data.PrepareDataset, spec.to_request())
