"""Prometheus metrics of the gateway, on the process's default registry beside the gRPC ones."""

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge, Histogram

# Counters start at zero with the process: the usage they report is since then.
COUNTING_SINCE = datetime.now(UTC)

HTTP_REQUESTS = Counter("gateway_http_requests_total", "HTTP requests", ["route", "status"])
HTTP_LATENCY = Histogram(
    "gateway_http_request_seconds",
    "HTTP request latency, to the last byte",
    ["route"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gateway_time_to_first_token_seconds",
    "From admission to the first generated text",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40),
)
GENERATED_TOKENS = Counter("gateway_generated_tokens_total", "Tokens generated", ["model"])
PROMPT_TOKENS = Counter("gateway_prompt_tokens_total", "Prompt tokens processed", ["model"])
QUEUE_DEPTH = Gauge("gateway_queue_depth", "Admitted requests still waiting for their first token")
IN_FLIGHT = Gauge("gateway_requests_in_flight", "Admitted generation requests, running or waiting")
LOADED_MODEL = Gauge(
    "gateway_loaded_model", "1 for each model loaded in an engine", ["model_id", "name", "engine"]
)
# Per API key (admin tokens too): what /admin/keys/usage reports. Keys are few, so the labels stay bounded.
KEY_REQUESTS = Counter("gateway_key_requests_total", "HTTP requests by API key", ["key_id", "outcome"])
KEY_LAST_USED = Gauge(
    "gateway_key_last_used_timestamp_seconds", "When the key last made a request", ["key_id"]
)
KEY_TOKENS = Counter(
    "gateway_key_tokens_total", "Prompt and completion tokens by API key", ["key_id", "kind"]
)


@dataclass
class RequestTokens:
    """The tokens one HTTP request made the engines process. The middleware that knows the request's key
    holds it; generation, which does not, adds to it (through request_tokens_var)."""

    prompt: int = 0
    completion: int = 0


request_tokens_var: ContextVar[RequestTokens | None] = ContextVar("request_tokens", default=None)
REJECTED = Counter("gateway_rejected_total", "Requests refused before generation", ["reason"])
ENGINE_DEATHS = Counter("gateway_engine_deaths_total", "Engines found dead or stalled", ["model", "kind"])
ENGINE_RESTARTS = Counter(
    "gateway_engine_restarts_total", "Attempts to rebuild a lost engine", ["model", "outcome"]
)
GENERATION_TIMEOUTS = Counter(
    "gateway_generation_timeouts_total", "Generations ended by the server-side deadline", ["model"]
)
