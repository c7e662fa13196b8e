"""API keys through the gateway's admin HTTP API (/admin/keys) with the console's admin token: list,
create (the secret comes back once and is shown once), revoke, and requests per key from the gateway's
own counters. A refusal becomes the gateway's message and the request id it logged."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from pydantic import Field

from ftcommon.interceptors import REQUEST_ID_HEADER
from ftcommon.logs import request_id_var
from services.console.forms import FormModel
from services.console.peers import ConsoleError

SERVICE = "gateway"
SCOPES = ("chat", "fine-tune", "admin")


class KeyForm(FormModel):
    name: str = Field(min_length=1, max_length=200)
    project: str = Field("", max_length=200)
    rate_limit_per_minute: int | None = Field(None, ge=1)  # empty: the gateway's default
    scopes: list[str] = Field(default_factory=lambda: ["chat"], min_length=1)

    def body(self) -> dict[str, Any]:
        unknown = sorted(set(self.scopes) - set(SCOPES))
        if unknown:
            raise ConsoleError(f"field 'scopes': unknown scope {', '.join(unknown)}", 400)
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class KeyRow:
    key: dict[str, Any]  # the gateway's ApiKeyInfo
    requests: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    last_used_at: datetime | None


@dataclass(frozen=True)
class KeyListing:
    rows: list[KeyRow]
    usage_since: datetime | None


class KeysServing:
    def __init__(self, gateway_url: str, admin_token: str, timeout: float) -> None:
        self.gateway_url = gateway_url.rstrip("/")
        self.admin_token = admin_token
        self.timeout = timeout

    @property
    def configured(self) -> bool:
        return bool(self.admin_token)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        request_id = request_id_var.get() or ""
        headers = {REQUEST_ID_HEADER: request_id, "Authorization": f"Bearer {self.admin_token}"}
        try:
            reply = httpx.request(
                method, f"{self.gateway_url}{path}", json=body, headers=headers, timeout=self.timeout
            )
        except httpx.HTTPError as err:
            raise ConsoleError(
                f"the gateway at {self.gateway_url} is unreachable: {type(err).__name__}", 503, SERVICE
            ) from None
        if reply.status_code >= 400:
            raise ConsoleError(_message(reply), reply.status_code, SERVICE, str(reply.status_code))
        return reply.json()

    def listing(self) -> KeyListing:
        keys = self._call("GET", "/admin/keys")["data"]
        usage = self._call("GET", "/admin/keys/usage")
        by_key = {row["key_id"]: row for row in usage["data"]}
        rows = []
        for key in sorted(keys, key=lambda k: (k["revoked_at"] is not None, k["created_at"])):
            counted = by_key.get(key["id"], {})
            last_used = counted.get("last_used_at")
            rows.append(
                KeyRow(
                    key=key,
                    requests=int(counted.get("requests", 0)),
                    failed=int(counted.get("failed", 0)),
                    prompt_tokens=int(counted.get("prompt_tokens", 0)),
                    completion_tokens=int(counted.get("completion_tokens", 0)),
                    last_used_at=datetime.fromisoformat(last_used) if last_used else None,
                )
            )
        return KeyListing(rows, datetime.fromisoformat(usage["since"]))

    def create(self, form: KeyForm) -> dict[str, Any]:
        return self._call("POST", "/admin/keys", form.body())

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._call("POST", f"/admin/keys/{key_id}/revoke")


def _message(reply: httpx.Response) -> str:
    try:
        error = reply.json()["error"]
        return str(error["message"] if isinstance(error, dict) else error)
    except (ValueError, KeyError, TypeError):
        return reply.text[:300] or f"HTTP {reply.status_code}"
