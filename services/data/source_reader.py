"""RegisterDataset's read: the source confined by the operator's policy first, then its bytes, up to the
upload limit. Remote failures say what went wrong (status, error kind), never what the server sent."""

from pathlib import PurePosixPath
from urllib.parse import urlsplit

import fsspec
import httpx

from ftcommon.errors import InvalidArgument
from ftcommon.sources import Source, resolve_source
from services.data.config import DataSettings

FIELD = "source"


def read_source(text: str, settings: DataSettings) -> tuple[Source, bytes, str]:
    """The resolved source, its bytes and a file name for format detection."""
    source = resolve_source(text, settings.source_policy(), FIELD)
    limit = settings.max_upload_bytes
    if source.is_local:
        data = _read_local(text, source, limit)
        return source, data, source.path.name
    if source.protocol == "s3":
        data = _read_s3(source, limit)
    else:
        data = _read_http(source, limit, settings.source_timeout_seconds)
    return source, data, PurePosixPath(urlsplit(source.location).path).name


def _read_local(text: str, source: Source, limit: int) -> bytes:
    path = source.path
    if not path.is_file():
        raise InvalidArgument(f"{text} is not a file", field=FIELD)
    size = path.stat().st_size
    if size > limit:
        raise InvalidArgument(f"{text} is {size:,} bytes, over the limit of {limit:,}", field=FIELD)
    return path.read_bytes()


def _read_http(source: Source, limit: int, timeout: float) -> bytes:
    # No redirects (a redirect could lead to a host nobody checked) and no proxy from the environment
    # (the address checked must be the one contacted).
    received = bytearray()
    try:
        with httpx.stream(
            "GET", source.location, follow_redirects=False, trust_env=False, timeout=timeout
        ) as response:
            if response.status_code != 200:
                hint = " (redirects are not followed)" if response.is_redirect else ""
                raise InvalidArgument(
                    f"{source.location} answered HTTP {response.status_code}{hint}", field=FIELD
                )
            for chunk in response.iter_bytes():
                received += chunk
                if len(received) > limit:
                    raise InvalidArgument(
                        f"{source.location} is over the limit of {limit:,} bytes", field=FIELD
                    )
    except httpx.HTTPError as exc:
        raise InvalidArgument(f"cannot fetch {source.location}: {type(exc).__name__}", field=FIELD) from None
    return bytes(received)


def _read_s3(source: Source, limit: int) -> bytes:
    try:
        with fsspec.open(source.location, "rb") as handle:
            data = handle.read(limit + 1)
    except (OSError, ValueError, ImportError) as exc:
        raise InvalidArgument(f"cannot read {source.location}: {type(exc).__name__}", field=FIELD) from None
    if len(data) > limit:
        raise InvalidArgument(f"{source.location} is over the limit of {limit:,} bytes", field=FIELD)
    return data
