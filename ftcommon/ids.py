"""Identifiers and content hashes."""

import hashlib
import json
import uuid
from pathlib import Path


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(value: object) -> str:
    """Hash of a JSON-able value, independent of key order: derives ids from inputs."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
