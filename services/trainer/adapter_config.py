"""The base model an adapter names in its `adapter_config.json`.

PEFT records the folder the base was loaded from, which on the trainer is a path inside this host's artifact
store: meaningless on another machine. The adapter names its base by registry name (a hub id when the base
was registered under one) instead, at training time and again in every export.
"""

import json
from pathlib import Path

ADAPTER_CONFIG = "adapter_config.json"


def name_base_model(adapter_dir: Path, base_model_name: str) -> None:
    path = adapter_dir / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model_name
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
