"""The playground's "save as training row": an exchange a person liked (or corrected) becomes a row of a
dataset. Datasets are immutable, so saving makes a new version: the kept rows of the chosen dataset, read
back through DataService.PreviewDataset page by page, plus the new exchange, uploaded as a JSONL file of
{"messages": [...]} rows through DataService.UploadDataset under the same name. The data service validates
it like any upload (a duplicate of an existing row shows in the new version's report); the old dataset and
everything prepared from it stay as they were."""

import io
import json
from collections.abc import Iterator

from pydantic import BaseModel, Field, model_validator

from finetune.v1 import data_pb2
from services.console.peers import ConsoleError, Peers, call
from services.console.serving_datasets import DatasetsServing
from services.console.serving_playground import ChatMessage

PREVIEW_PAGE = 500  # the most rows PreviewDataset returns at once
SERVICE = "data service"


class TrainingRow(BaseModel):
    """A conversation ending with the answer to train on, for an existing dataset or a new one."""

    dataset_id: str = ""  # empty: a new dataset named `name`
    name: str = Field("", max_length=200)
    messages: list[ChatMessage] = Field(min_length=2)

    @model_validator(mode="after")
    def _an_exchange(self) -> "TrainingRow":
        roles = [message.role for message in self.messages]
        if roles[-1] != "assistant" or "user" not in roles:
            raise ValueError("messages: a user's question and the assistant's answer, the answer last")
        if not self.messages[-1].content.strip():
            raise ValueError("messages: the answer is empty")
        if not self.dataset_id and not self.name.strip():
            raise ValueError("choose a dataset, or name a new one")
        return self


class TrainingRowSaver:
    def __init__(self, datasets: DatasetsServing, peers: Peers) -> None:
        self.datasets = datasets
        self.peers = peers

    def _kept_rows(self, dataset_id: str) -> Iterator[data_pb2.Conversation]:
        offset = 0
        while True:
            page = call(
                SERVICE,
                self.peers.data.PreviewDataset,
                data_pb2.PreviewDatasetRequest(id=dataset_id, offset=offset, limit=PREVIEW_PAGE),
            )
            yield from page.rows
            offset += len(page.rows)
            if not page.rows or offset >= page.total:
                return

    def save(self, row: TrainingRow) -> data_pb2.Dataset:
        lines: list[str] = []
        name = row.name.strip()
        if row.dataset_id:
            source = call(SERVICE, self.peers.data.GetDataset, data_pb2.GetDatasetRequest(id=row.dataset_id))
            name = name or source.name
            for kept in self._kept_rows(row.dataset_id):
                if getattr(kept, "rejected", ""):
                    raise ConsoleError(
                        f"dataset {row.dataset_id} holds preference pairs: a chat row cannot join it", 400
                    )
                messages = [{"role": m.role, "content": m.content} for m in kept.messages]
                lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
        lines.append(json.dumps({"messages": [m.model_dump() for m in row.messages]}, ensure_ascii=False))
        payload = io.BytesIO(("\n".join(lines) + "\n").encode())
        return self.datasets.upload(f"{name}.jsonl", name, payload)
