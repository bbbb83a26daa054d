"""Settings, read from the environment (`SEALGUARD_*`) — passed explicitly, never a module singleton."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything a sealguard process needs to know about where things are.

    Each field maps to an environment variable: ``kafka`` ↔ ``SEALGUARD_KAFKA`` and so on.
    """

    model_config = SettingsConfigDict(env_prefix="SEALGUARD_", extra="ignore")

    # Where runtime state lives (SQLite file, MLflow store, media blobs, logs, models).
    state_dir: Path = REPO_ROOT / "data" / "state"

    # Stream. Unset → an embedded Tansu broker is started by `up` and the test fixtures.
    kafka: str | None = None
    partitions: int = Field(default=4, ge=1, le=1024)
    signals_topic: str = "sg.signals.v1"
    inbound_topic: str = "sg.signals.inbound.v1"  # signals re-keyed by the counterpart account
    enforcement_topic: str = "sg.enforcement.v1"
    scores_topic: str = "sg.scores.v1"
    net_topic: str = "sg.net.v1"  # registrations keyed by net_bucket, read whole by every detection worker ("" = off)
    broker_port: int = 0  # 0 → a free port

    # Database. Unset → a SQLite file (WAL) under state_dir.
    db_url: str | None = None

    # Relay.
    relay_host: str = "127.0.0.1"
    relay_port: int = 0
    # The sockets and the common 1:1 path in C (relay/server/plane.py); 0 → the asyncio data plane.
    relay_native: bool = True
    node_id: str = "relay-1"
    # Salt for net_bucket hashing; a deployment sets its own secret.
    net_salt: str = "sealguard-dev-salt"

    # Control plane.
    api_host: str = "127.0.0.1"
    api_port: int = 0
    console_port: int = 0
    token_ttl_s: int = 8 * 3600

    # Models.
    mlflow_uri: str | None = None

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{self.state_dir / 'sealguard.db'}"

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def topics(self) -> list[str]:
        return [self.signals_topic, self.inbound_topic, self.enforcement_topic, self.scores_topic]

    def ensure_state_dir(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir
