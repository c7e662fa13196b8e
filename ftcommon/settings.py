"""Typed settings shared by every service; each service subclasses them with its own env prefix."""

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The base model a fresh platform registers and serves (`make setup` converts it): the trainer registers
# it, and the CLI's stack and demo name it, so it lives here rather than in one service.
DEFAULT_BASE_MODEL_NAME = "smollm2-135m-instruct"


class TransportSecurity(BaseSettings):
    """How services prove who they are to each other (the same variables for servers and clients).

    A server needs credentials: a shared service token (checked on every call but health), TLS
    certificates (mutual when a client CA is given), or both. Plaintext without a token only under
    FT_INSECURE_LOCAL_DEV=1, which the tests and `ftctl stack up` set."""

    model_config = SettingsConfigDict(env_prefix="FT_", extra="ignore")

    service_token: SecretStr = SecretStr("")
    insecure_local_dev: bool = False
    # PEM files the operator provides. Server: its certificate and key; with tls_ca_file, clients must
    # present a certificate that CA signed. Client: tls_ca_file verifies the server; cert and key are its own.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None

    @property
    def token(self) -> str:
        return self.service_token.get_secret_value()

    @property
    def uses_tls(self) -> bool:
        return self.tls_ca_file is not None or self.tls_cert_file is not None


class ServiceSettings(BaseSettings):
    """What every gRPC service needs. Subclasses set `env_prefix`, e.g. FT_DATA_."""

    model_config = SettingsConfigDict(env_prefix="FT_", extra="ignore")

    data_dir: Path = Path("var")
    # Empty means a SQLite file named after the service under data_dir.
    database_url: str = ""
    # Empty means data_dir/artifacts; an s3:// URL uses an S3-compatible bucket through fsspec.
    artifact_store_url: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0  # 0: no Prometheus endpoint
    max_workers: int = 16
    shutdown_grace_seconds: float = 20.0
    log_level: str = "INFO"
    security: TransportSecurity = Field(default_factory=TransportSecurity)

    def default_sqlite_path(self, service: str) -> Path | None:
        """The SQLite file the service uses when no database_url is set (None when one is)."""
        return None if self.database_url else (self.data_dir / f"{service}.db").resolve()

    def resolved_database_url(self, service: str) -> str:
        sqlite_path = self.default_sqlite_path(service)
        if sqlite_path is None:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{sqlite_path}"

    def resolved_artifact_store_url(self) -> str:
        return self.artifact_store_url or str((self.data_dir / "artifacts").resolve())


class ServiceAddresses(BaseSettings):
    """Where each service listens, for clients (other services and the CLI)."""

    model_config = SettingsConfigDict(env_prefix="FT_", extra="ignore")

    data_address: str = "127.0.0.1:50051"
    trainer_address: str = "127.0.0.1:50052"
    eval_address: str = "127.0.0.1:50053"
    inference_address: str = "127.0.0.1:50054"
    gateway_url: str = "http://127.0.0.1:8000"
    rpc_timeout_seconds: float = Field(30.0, gt=0)


def peer_address(service: Literal["data", "trainer", "eval", "inference"]) -> Any:
    """A settings field for where a peer service listens. Its own variable (e.g. FT_EVAL_DATA_ADDRESS)
    wins; unset, it is the shared FT_DATA_ADDRESS that clients use, so one variable per service suffices."""
    return Field(default_factory=lambda: getattr(ServiceAddresses(), f"{service}_address"))
