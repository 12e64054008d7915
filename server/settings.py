"""Server settings: the one place that reads the environment (prefix ``ACTMAX_``)."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server import ServerError


class Settings(BaseSettings):
    """Everything ``actmax serve`` needs; each field is also ``ACTMAX_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ACTMAX_", extra="forbid")

    data_dir: Path = Field(Path("actmax-data"), description="Database and image archive folder.")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///{data_dir}/actmax.sqlite.")
    http_host: str = Field("127.0.0.1", description="REST bind address (loopback unless set).")
    http_port: int = Field(8000, ge=0, le=65535)
    zmq_endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ ROUTER bind endpoint for rigs.")
    token: SecretStr | None = Field(None, description="Bearer token the REST API requires.")
    heartbeat_s: float = Field(2.0, gt=0, description="Seconds between heartbeats, both ways.")
    liveness: int = Field(5, ge=1, description="Missed heartbeats before a rig counts as disconnected.")
    max_message_bytes: int = Field(64 * 2**20, gt=0, description="Largest ZeroMQ message accepted.")
    batch_timeout_s: float = Field(300.0, gt=0, description="Seconds before a batch's missing results time out.")
    device: str = Field("auto", description='Torch device for generators: "auto", "cpu", "cuda", "cuda:1", ...')
    precision: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Generator precision; a half precision is used only for generators whose "
        "images stay within generators.base.PRECISION_TOLERANCE of float32 (checked at load).")

    @model_validator(mode="after")
    def _derive_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'actmax.sqlite'}"
        return self

    def require_token(self) -> str:
        """The API token; a ``ServerError`` saying how to set one if it is missing."""
        if self.token is None or not self.token.get_secret_value():
            raise ServerError(
                "no API token: set ACTMAX_TOKEN (e.g. export ACTMAX_TOKEN=$(python -c "
                "'import secrets; print(secrets.token_urlsafe(32))')) before serving"
            )
        return self.token.get_secret_value()


def new_token() -> str:
    """A fresh random API token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)
