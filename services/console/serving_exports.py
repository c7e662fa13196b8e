"""A model's export (TrainerService.ExportModel) as one zip download, streamed: each file's chunks go into
the archive as they arrive (stored, not compressed: weights do not shrink), each file's sha256 is checked
against the one the trainer sends with its last chunk, and a mismatch or a failed stream ends the download
unfinished, so a browser never saves a silently broken archive."""

import hashlib
import io
import zipfile
from collections.abc import Iterator
from typing import IO

import grpc

from finetune.v1 import trainer_pb2
from services.console.peers import ConsoleError, Peers, peer_failed

FORMATS = {"merged": trainer_pb2.EXPORT_FORMAT_MERGED, "adapter": trainer_pb2.EXPORT_FORMAT_ADAPTER}


class _Spool(io.RawIOBase):
    """What the zip writer writes, handed out piece by piece; not seekable, so zipfile streams."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.pieces.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self.pieces)
        self.pieces.clear()
        return out


class ExportServing:
    def __init__(self, peers: Peers, timeout: float) -> None:
        self.peers = peers
        self.timeout = timeout

    def first_chunk(
        self, model: str, export_format: str
    ) -> tuple[Iterator[trainer_pb2.ExportChunk], trainer_pb2.ExportChunk]:
        """The stream and its first chunk: a refusal (unknown model, wrong format) comes back here, before
        the reply starts, so the page can show it."""
        if export_format not in FORMATS:
            raise ConsoleError(f"field 'format': one of {', '.join(FORMATS)}, not {export_format!r}", 400)
        stream = self.peers.trainer.ExportModel(
            trainer_pb2.ExportModelRequest(model=model, format=FORMATS[export_format]), timeout=self.timeout
        )
        try:
            first = next(stream)
        except StopIteration:
            raise ConsoleError(f"the trainer sent no files for {model}", 502, "trainer") from None
        except grpc.RpcError as err:
            raise peer_failed(err, "trainer") from None
        return stream, first

    @staticmethod
    def zipped(
        stream: Iterator[trainer_pb2.ExportChunk], first: trainer_pb2.ExportChunk, folder: str
    ) -> Iterator[bytes]:
        """The archive's bytes; every file sits under `folder`, as `ftctl models export DIR` writes it."""
        spool = _Spool()
        archive = zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED)
        entry: IO[bytes] | None = None
        digest = hashlib.sha256()
        for chunk in _chain(first, stream):
            if entry is None:
                entry = archive.open(zipfile.ZipInfo(f"{folder}/{chunk.path}"), "w", force_zip64=True)
                digest = hashlib.sha256()
            entry.write(chunk.data)
            digest.update(chunk.data)
            if chunk.last:
                entry.close()
                entry = None
                if chunk.sha256 and digest.hexdigest() != chunk.sha256:
                    raise ConsoleError(
                        f"{chunk.path}: the bytes do not match the sha256 the trainer sent", 502
                    )
            yield spool.take()
        archive.close()
        yield spool.take()


def _chain(
    first: trainer_pb2.ExportChunk, rest: Iterator[trainer_pb2.ExportChunk]
) -> Iterator[trainer_pb2.ExportChunk]:
    yield first
    yield from rest
