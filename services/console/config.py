"""The console's settings (env prefix FT_CONSOLE_): where its peers listen and how it keeps sessions."""

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from ftcommon.settings import ServiceAddresses, ServiceSettings, peer_address


def _gateway_url() -> str:
    return ServiceAddresses().gateway_url


class ConsoleSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FT_CONSOLE_", extra="ignore")

    port: int = 8080  # HTTP pages for people
    data_address: str = peer_address("data")
    trainer_address: str = peer_address("trainer")  # TrainerService and RegistryService
    eval_address: str = peer_address("eval")
    gateway_url: str = Field(default_factory=_gateway_url)
    # The playground calls the gateway's chat API with this key (a key with the chat scope).
    gateway_api_key: SecretStr = SecretStr("")
    # The API keys page manages the gateway's keys (/admin/keys) with this admin token (FT_ADMIN_TOKEN).
    gateway_admin_token: SecretStr = SecretStr("")
    rpc_timeout_seconds: float = Field(30.0, gt=0)
    # A live job page holds one WatchJob stream; it is reopened (from the last event) after this long.
    watch_timeout_seconds: float = Field(300.0, gt=0)
    # Uploads larger than this are refused while they stream in (the data service has the same default).
    max_upload_bytes: int = Field(200 * 1024 * 1024, gt=0)
    session_hours: float = Field(12.0, gt=0)
    # Behind TLS (any deployment but loopback) the session cookie must be Secure.
    secure_cookies: bool = False
    page_size: int = Field(20, ge=1, le=200)
