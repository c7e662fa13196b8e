"""Which engines are loaded and which one answers which model name.

Models are resolved through RegistryService (ids, names, aliases; served by the trainer), fetched from the
artifact store and verified against the registry's sha256, then loaded and warmed up before any request can
reach them. A thread follows RegistryService.WatchAliases: when the served alias moves (a promotion or a
rollback), the new model loads beside the old one, traffic switches in one assignment, and the old engine is
freed once its last in-flight request has finished. Engines are supervised (services/inference/supervisor.py):
a lost one is rebuilt in place. Engine processes die with the gateway, and those a killed predecessor left
behind are ended before anything loads.
"""

import asyncio
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune.v1 import registry_pb2_grpc, trainer_pb2
from ftcommon.artifacts import ArtifactIntegrityError, ArtifactStore
from ftcommon.errors import NotFound, Unavailable
from ftcommon.logs import log_fields
from services.inference import metrics
from services.inference.config import InferenceSettings
from services.inference.engine import engine_run_dir, load_engine
from services.inference.engine.base import EngineClient, EngineModel, SamplingOptions
from services.inference.engine.process_records import EngineProcessRecords, descendants
from services.inference.supervisor import EngineSupervisor, EngineWatch

logger = logging.getLogger(__name__)

_WATCH_RECONNECT_SECONDS = 2.0
_WATCH_STREAM_SECONDS = 600.0


@dataclass
class ServedModel:
    model_id: str
    name: str
    chat_template: str
    max_context: int
    tokenizer: PreTrainedTokenizerBase
    watch: EngineWatch  # the current engine; the supervisor replaces it when the engine is lost
    loaded_at: int = field(default_factory=lambda: int(time.time()))
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def engine(self) -> EngineClient:
        return self.watch.engine


class Lease:
    """Keeps a served model's engine alive while a request uses it; release() is idempotent."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self._released = False
        served.in_flight += 1
        served.idle.clear()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self.served.in_flight -= 1
        if self.served.in_flight == 0:
            self.served.idle.set()


class ModelManager:
    def __init__(
        self,
        settings: InferenceSettings,
        registry: registry_pb2_grpc.RegistryServiceStub,
        store: ArtifactStore,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.store = store
        self.default: ServedModel | None = None
        self._loaded: OrderedDict[str, ServedModel] = OrderedDict()  # model id -> model, least recent first
        self._aliases: dict[str, str] = {}  # alias -> model id, as WatchAliases reports them
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_call: grpc.Future | None = None
        self._stopping = threading.Event()
        self._process_records = EngineProcessRecords(engine_run_dir(settings))
        self.supervisor = EngineSupervisor(settings, self._rebuild_engine, self.served_models)
        self._supervision: asyncio.Task | None = None

    # Life cycle

    async def start(self) -> None:
        """Ends engines a killed predecessor left running, loads the default model, then follows alias
        changes and supervises the engines."""
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._process_records.end_leftovers)
        self._supervision = self._loop.create_task(self.supervisor.run())
        threading.Thread(target=self._watch_aliases, name="alias-watch", daemon=True).start()
        await self._load_default()

    async def _load_default(self) -> None:
        """A fresh install may have nothing registered yet: the gateway then starts unready, and the first
        request or the alias being set loads the model."""
        try:
            self.default = await self._get_or_load(await self._resolve_default())
        except NotFound as err:
            log_fields(logger, logging.WARNING, "nothing to serve yet", reason=err.message)

    async def stop(self) -> None:
        self._stopping.set()
        if self._watch_call is not None:
            self._watch_call.cancel()
        if self._supervision is not None:
            self._supervision.cancel()
        await self.supervisor.stop()
        for served in list(self._loaded.values()):
            await served.engine.shutdown()
            self._forget(served)
        self._loaded.clear()
        self.default = None
        self._process_records.remove()

    @property
    def ready(self) -> bool:
        return self.default is not None

    def served_models(self) -> list[ServedModel]:
        return list(self._loaded.values())

    # Requests

    async def lease(self, ref: str | None) -> Lease:
        """The model a request names (empty: the default), loading it on first use."""
        served = await self._find(ref)
        self.supervisor.check_serving(served)
        self._loaded.move_to_end(served.model_id, last=True)
        return Lease(served)

    async def _find(self, ref: str | None) -> ServedModel:
        if not ref or ref == self.settings.model:
            if self.default is None:
                await self._load_default()
            if self.default is None:
                raise Unavailable("no model is loaded yet")
            return self.default
        for served in self._loaded.values():
            if ref in (served.model_id, served.name):
                return served
        alias_target = self._aliases.get(ref)
        if alias_target in self._loaded:
            return self._loaded[alias_target]
        record = await self._get_model(ref)
        return await self._get_or_load(record)

    # Loading

    async def _resolve_default(self) -> trainer_pb2.Model:
        try:
            return await self._get_model(self.settings.model)
        except NotFound:
            log_fields(
                logger,
                logging.INFO,
                "served alias not set; serving the fallback model",
                alias=self.settings.model,
                fallback=self.settings.fallback_model,
            )
            return await self._get_model(self.settings.fallback_model)

    async def _get_model(self, ref: str) -> trainer_pb2.Model:
        try:
            return await asyncio.to_thread(
                self.registry.GetModel,
                trainer_pb2.GetModelRequest(name=ref),
                timeout=self.settings.rpc_timeout_seconds,
            )
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise NotFound(f"the model '{ref}' does not exist", field="model") from None
            raise Unavailable(f"the model registry is unreachable: {err.code().name}") from None

    async def _get_or_load(self, record: trainer_pb2.Model) -> ServedModel:
        lock = self._load_locks.setdefault(record.id, asyncio.Lock())
        async with lock:
            if record.id in self._loaded:
                return self._loaded[record.id]
            served = await self._load(record)
            self._loaded[record.id] = served
            self._evict_beyond_capacity()
            return served

    async def _load(self, record: trainer_pb2.Model) -> ServedModel:
        log_fields(logger, logging.INFO, "loading model", model_id=record.id, model_name=record.name)
        folder = await asyncio.to_thread(self._fetch_verified, record)
        tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, folder)
        max_context = record.max_context
        if self.settings.max_model_len:
            max_context = min(max_context, self.settings.max_model_len)
        engine_model = EngineModel(
            model_id=record.id,
            name=record.name,
            folder=folder,
            max_context=max_context,
            stop_token_ids=_stop_token_ids(tokenizer, record.eos_token, folder),
        )
        watch = await self._start_engine(engine_model, tokenizer)
        metrics.LOADED_MODEL.labels(record.id, record.name, watch.engine.name).set(1)
        log_fields(
            logger,
            logging.INFO,
            "model loaded",
            model_id=record.id,
            engine=watch.engine.name,
            dtype=watch.engine.dtype,
        )
        return ServedModel(record.id, record.name, record.chat_template, max_context, tokenizer, watch)

    async def _start_engine(
        self, engine_model: EngineModel, tokenizer: PreTrainedTokenizerBase
    ) -> EngineWatch:
        """A warmed-up engine whose processes die with the gateway and are on record for its successor."""
        started = time.monotonic()
        before = await asyncio.to_thread(descendants, os.getpid())
        engine = await load_engine(self.settings, engine_model)
        try:
            await _warm_up(engine, tokenizer)
        except Exception:
            await engine.shutdown()
            raise
        engine_processes = await asyncio.to_thread(descendants, os.getpid())
        self._process_records.record(engine_model.model_id, engine_processes - before)
        return EngineWatch(engine, engine_model.name, time.monotonic() - started)

    async def _rebuild_engine(self, served: ServedModel) -> EngineWatch:
        """A new engine for a model whose engine was lost, from the same verified folder."""
        watch = await self._start_engine(served.engine.model, served.tokenizer)
        if self._loaded.get(served.model_id) is not served:  # retired or stopped while it loaded
            await watch.engine.shutdown()
            self._process_records.forget(served.model_id)
        return watch

    def _fetch_verified(self, record: trainer_pb2.Model) -> Path:
        if self.store.manifest(record.artifact.uri)["sha256"] != record.artifact.sha256:
            raise ArtifactIntegrityError(f"{record.artifact.uri} is not the tree the registry recorded")
        return self.store.local_dir(record.artifact.uri, verify=True)

    # Retiring

    def _evict_beyond_capacity(self) -> None:
        while len(self._loaded) > self.settings.max_loaded_models:
            victim = next((m for m in self._loaded.values() if m is not self.default), None)
            if victim is None:
                return
            self._retire(victim)

    def _retire(self, served: ServedModel) -> None:
        """No new request finds it from now on; its engine stops after the last one in flight."""
        self._loaded.pop(served.model_id, None)

        async def drain_then_stop() -> None:
            if served.in_flight:
                await served.idle.wait()
            await served.engine.shutdown()
            self._forget(served)
            self._process_records.forget(served.model_id)
            log_fields(logger, logging.INFO, "model unloaded", model_id=served.model_id)

        task = asyncio.get_running_loop().create_task(drain_then_stop())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @staticmethod
    def _forget(served: ServedModel) -> None:
        try:
            metrics.LOADED_MODEL.remove(served.model_id, served.name, served.engine.name)
        except KeyError:
            pass

    def unload(self, model_id: str) -> None:
        """Stops serving a model deleted from the registry: its aliases are forgotten, and its engine stops
        once the requests in flight have finished. Runs on the event loop."""
        for alias in [name for name, target in self._aliases.items() if target == model_id]:
            del self._aliases[alias]
        served = self._loaded.get(model_id)
        if served is not None and served is not self.default:
            self._retire(served)

    # Alias following

    def _watch_aliases(self) -> None:
        """Runs in its own thread: the stream is a blocking gRPC iterator. Reconnects until stopped."""
        while not self._stopping.is_set():
            try:
                self._watch_call = self.registry.WatchAliases(
                    trainer_pb2.WatchAliasesRequest(), timeout=_WATCH_STREAM_SECONDS
                )
                for alias in self._watch_call:
                    future = asyncio.run_coroutine_threadsafe(self._on_alias(alias), self._loop)
                    future.result()
            except grpc.RpcError as err:
                if self._stopping.is_set():
                    return
                if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    log_fields(logger, logging.WARNING, "alias watch interrupted", code=err.code().name)
            except Exception:
                logger.exception("switching to a new model failed; still serving the previous one")
            self._stopping.wait(_WATCH_RECONNECT_SECONDS)

    async def _on_alias(self, alias: trainer_pb2.Alias) -> None:
        self._aliases[alias.alias] = alias.model_id
        if alias.alias != self.settings.model:
            return
        if self.default is not None and alias.model_id == self.default.model_id:
            return
        record = await self._get_model(alias.model_id)
        replacement = await self._get_or_load(record)
        previous, self.default = self.default, replacement
        if previous is replacement:  # the start-up load got there first while this one awaited
            return
        log_fields(
            logger,
            logging.INFO,
            "switched served model",
            alias=alias.alias,
            model_id=replacement.model_id,
            previous=previous.model_id if previous else "",
        )
        if previous is not None and previous.model_id in self._loaded:
            self._retire(previous)


def _stop_token_ids(tokenizer: PreTrainedTokenizerBase, eos_token: str, folder: Path) -> tuple[int, ...]:
    """The registry's end-of-turn token first, then any other eos id the folder's generation config names."""
    ids = [tokenizer.convert_tokens_to_ids(eos_token or tokenizer.eos_token)]
    generation_config = folder / "generation_config.json"
    if generation_config.exists():
        configured = json.loads(generation_config.read_text()).get("eos_token_id")
        for token_id in configured if isinstance(configured, list) else [configured]:
            if isinstance(token_id, int) and token_id not in ids:
                ids.append(token_id)
    return tuple(ids)


async def _warm_up(engine: EngineClient, tokenizer: PreTrainedTokenizerBase) -> None:
    """One token through the whole path, so the first real request is not the one that finds a broken
    engine (or pays the first forward pass's set-up)."""
    prompt = tokenizer("Hello", add_special_tokens=False)["input_ids"]
    async for _ in engine.generate(prompt, SamplingOptions(max_tokens=1, temperature=0.0), "warm-up"):
        pass
