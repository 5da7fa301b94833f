"""The one typed settings object, read from the environment once.

With nothing set, every value points at the embedded default: SQLite, a filesystem broker and
local storage in a data directory, so the product runs with no server installed.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.providers.base import ProviderSettings
from orchestrator.providers.registry import PROVIDERS

if TYPE_CHECKING:
    from orchestrator.catalog_source import SourcePolicy
    from orchestrator.pricing import Price


# Which settings (and so which environment variables) configure each provider account. The
# names predate ProviderSettings and stay: FAL_KEY, ORCH_FAL_QUEUE_URL, RUNWARE_API_KEY, ...
_PROVIDER_FIELDS: Mapping[str, Mapping[str, str]] = {
    "fal": {"api_key": "fal_key", "base_url": "fal_queue_url", "max_in_flight": "fal_max_in_flight",
            "rate_per_second": "fal_rate_per_second", "signing_keys_url": "fal_jwks_url",
            "account_id": "fal_user_id", "pricing_url": "fal_api_url"},
    "runware": {"api_key": "runware_api_key", "base_url": "runware_api_url",
                "max_in_flight": "runware_max_in_flight", "rate_per_second": "runware_rate_per_second"},
}


class Settings(BaseSettings):
    """Everything configurable, with its environment variable name."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", extra="ignore", populate_by_name=True)

    data_dir: Path = Path(".orchestrator")
    database_url: str = ""
    broker_url: str = ""
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    api_url: str = "http://127.0.0.1:8000"
    secret_key: SecretStr = SecretStr("")
    log_json: bool = False
    log_level: str = "INFO"

    fal_key: SecretStr = Field(default=SecretStr(""), validation_alias="FAL_KEY")
    runware_api_key: SecretStr = Field(default=SecretStr(""), validation_alias="RUNWARE_API_KEY")
    fal_queue_url: str = "https://queue.fal.run"
    runware_api_url: str = "https://api.runware.ai/v1"
    fal_jwks_url: str = "https://rest.fal.ai/.well-known/jwks.json"
    fal_api_url: str = "https://api.fal.ai"  # Platform API (prices), read by `orchestrator prices sync`
    fal_user_id: str = ""

    fal_max_in_flight: int = Field(default=2, ge=1)
    fal_rate_per_second: float = Field(default=10.0, gt=0)
    runware_max_in_flight: int = Field(default=4, ge=1)
    runware_rate_per_second: float = Field(default=10.0, gt=0)

    max_items_per_batch: int = Field(default=100_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_attempts: int = Field(default=5, ge=1)
    callback_timeout_seconds: int = Field(default=600, ge=5)
    # A fal submit whose answer was lost has no request id to poll, and fal retries its webhook
    # for about 2 h (providers/fal.md): "wait" resubmits only after this window, when no callback
    # can come any more; "resubmit" resubmits after callback_timeout_seconds and may pay twice.
    unknown_outcome_policy: Literal["wait", "resubmit"] = "wait"
    unknown_outcome_window_seconds: int = Field(default=7800, ge=5)
    download_max_bytes: int = Field(default=40 * 1024 * 1024, ge=1024)
    download_allowed_hosts: str = "fal.media,*.fal.media,im.runware.ai,*.runware.ai"
    # Catalog sources read at each schedule firing (orchestrator.catalog_source).
    source_allow_private: bool = False
    # Loopback/private destinations are refused unless these are set (local development, sandboxes).
    callback_allow_private: bool = False
    download_allow_private: bool = False
    source_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    source_timeout_seconds: float = Field(default=30.0, gt=0)

    # Pacing of retries, polling and the sweep; tests shrink these.
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    poll_after_seconds: float = Field(default=60.0, gt=0)
    poll_interval_seconds: float = Field(default=30.0, gt=0)
    claim_stale_seconds: float = Field(default=60.0, gt=0)
    storing_stale_seconds: float = Field(default=300.0, gt=0)
    sweep_interval_seconds: float = Field(default=10.0, gt=0)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    store_concurrency: int = Field(default=4, ge=1)
    # Runware PUTs a single-image job's image into S3-compatible storage itself (workers.direct_upload);
    # its PUT follows the webhook by a few seconds, so the store step waits this long before it
    # downloads the image instead.
    direct_upload: bool = True
    direct_upload_wait_seconds: float = Field(default=10.0, ge=0)
    # Price overrides (JSON or a JSON file's path, see orchestrator.pricing) and how often jobs
    # held by a budget cap are looked at again (a finished or failed job may have freed budget).
    prices: str = ""
    budget_recheck_seconds: float = Field(default=15.0, gt=0)
    worker_concurrency: int = Field(default=4, ge=1)

    @field_validator("prices")
    @classmethod
    def _valid_prices(cls, value: str) -> str:
        _price_table(value)  # a bad override stops start-up with a message naming the model
        return value

    def price_table(self) -> Mapping[str, Price]:
        """The price table with ORCH_PRICES applied."""
        return _price_table(self.prices)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The settings a child process started with `env` will read (its ORCH_* entries win)."""
        # Keyword arguments rather than model_validate(): some pydantic-settings versions skip the
        # environment there, and FAL_KEY / RUNWARE_API_KEY still come from os.environ.
        overrides: dict[str, Any] = {k.removeprefix("ORCH_").lower(): v for k, v in env.items()
                                     if k.startswith("ORCH_")}
        return cls(**overrides)

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite inside the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'orchestrator.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL; the embedded default is Kombu's filesystem transport."""
        return self.broker_url or "filesystem://"

    @property
    def resolved_storage_url(self) -> str:
        """The storage URL, defaulting to a directory inside the data directory."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "storage").resolve().as_uri()

    @property
    def is_embedded(self) -> bool:
        """True when the database is the embedded SQLite default."""
        return self.resolved_database_url.startswith("sqlite")

    def resolved_secret_key(self) -> str:
        """The signing secret; the embedded default keeps a generated one in the data dir."""
        value = self.secret_key.get_secret_value()
        if value:
            return value
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        path.write_text(value)
        path.chmod(0o600)
        return value

    def allowed_hosts(self) -> tuple[str, ...]:
        """Hosts the store step may download from: the providers' CDNs and their API hosts."""
        hosts = [h.strip() for h in self.download_allowed_hosts.split(",") if h.strip()]
        for url in (self.provider(p).base_url for p in PROVIDERS):
            parts = urlsplit(url)
            if parts.hostname:
                hosts.append(parts.netloc.rsplit("@", 1)[-1])
        return tuple(dict.fromkeys(hosts))

    def source_policy(self) -> SourcePolicy:
        """The limits on reading catalog sources."""
        from orchestrator.catalog_source import SourcePolicy

        return SourcePolicy(max_bytes=self.source_max_bytes, timeout=self.source_timeout_seconds,
                            allow_private=self.source_allow_private, max_rows=self.max_items_per_batch)

    def provider(self, name: str) -> ProviderSettings:
        """One provider account's settings: key, base URL, limits and its extras."""
        fields = _PROVIDER_FIELDS.get(name)
        if fields is None:
            raise ValueError(f"unknown provider {name!r}; expected one of {', '.join(PROVIDERS)}")
        values = {attr: getattr(self, field) for attr, field in fields.items()}
        return ProviderSettings(name=name, **{**values, "api_key": values["api_key"].get_secret_value()})

    def provider_limits(self, provider: str) -> tuple[int, float]:
        """(max in flight, requests per second) for a provider account."""
        account = self.provider(provider)
        return account.max_in_flight, account.rate_per_second

    def secrets(self) -> tuple[str, ...]:
        """Every configured secret value, for redaction."""
        values = (self.secret_key.get_secret_value(), *(self.provider(p).api_key for p in PROVIDERS))
        found = [v for v in values if v]
        # Passwords inside connection URLs (Postgres, Redis, S3-style storage) are secrets too.
        for url in (self.database_url, self.broker_url, self.storage_url):
            try:
                password = urlsplit(url).password
            except ValueError:
                password = None
            if password:
                found += [password, unquote(password), quote(password, safe="")]
        return tuple(dict.fromkeys(found))


@lru_cache(maxsize=8)
def _price_table(setting: str) -> Mapping[str, Price]:
    from orchestrator.pricing import load_prices

    return load_prices(setting)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings from the environment once per process."""
    return Settings()
