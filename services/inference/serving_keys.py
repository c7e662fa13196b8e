"""/admin/keys: API keys created, listed and revoked over HTTP, so no client opens the gateway's database."""

from datetime import UTC, datetime

from prometheus_client import Counter

from services.inference import metrics
from services.inference.auth import ApiKey, KeyStore
from services.inference.protocol import (
    ApiKeyCreateRequest,
    ApiKeyInfo,
    ApiKeyList,
    ApiKeyUsage,
    ApiKeyUsageList,
    CreatedApiKey,
)


class KeyAdministration:
    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    def create(self, request: ApiKeyCreateRequest) -> CreatedApiKey:
        key, secret = self.keys.create(
            request.name, request.rate_limit_per_minute, tuple(request.scopes), request.project
        )
        return CreatedApiKey(**_info(key).model_dump(), secret=secret)

    def list(self) -> ApiKeyList:
        return ApiKeyList(data=[_info(key) for key in self.keys.list()])

    def revoke(self, key_id: str) -> ApiKeyInfo:
        return _info(self.keys.revoke(key_id))

    def usage(self) -> ApiKeyUsageList:
        """Requests and tokens per key from the gateway's own Prometheus counters (this process, since it
        started)."""
        counts = _totals_by_key(metrics.KEY_REQUESTS, "outcome")
        tokens = _totals_by_key(metrics.KEY_TOKENS, "kind")
        last_used = {
            sample.labels["key_id"]: sample.value
            for family in metrics.KEY_LAST_USED.collect()
            for sample in family.samples
        }
        rows = [
            ApiKeyUsage(
                key_id=key_id,
                requests=int(sum(outcomes.values())),
                failed=int(outcomes.get("failed", 0)),
                prompt_tokens=int(tokens.get(key_id, {}).get("prompt", 0)),
                completion_tokens=int(tokens.get(key_id, {}).get("completion", 0)),
                last_used_at=datetime.fromtimestamp(last_used[key_id], UTC) if key_id in last_used else None,
            )
            for key_id, outcomes in sorted(counts.items())
        ]
        return ApiKeyUsageList(since=metrics.COUNTING_SINCE, data=rows)


def _totals_by_key(counter: Counter, label: str) -> dict[str, dict[str, float]]:
    """A per-key counter's totals: key id -> the other label's value -> count."""
    totals: dict[str, dict[str, float]] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals.setdefault(sample.labels["key_id"], {})[sample.labels[label]] = sample.value
    return totals


def _info(key: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        rate_limit_per_minute=key.rate_limit_per_minute,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        scopes=list(key.scopes),
        project=key.project,
    )
