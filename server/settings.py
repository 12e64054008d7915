"""Server settings: the one place that reads the environment (prefix ``ACTMAX_``)."""

from __future__ import annotations

import difflib
import ipaddress
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rig_client.connection import check_endpoint
from rig_client.protocol import WELCOME_HEARTBEAT_MS, WELCOME_LIVENESS, WELCOME_MAX_MESSAGE_BYTES
from server import ServerError


MIN_EXPOSED_TOKEN = 32  # characters of ACTMAX_TOKEN when REST listens off loopback


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost. An empty host is not: a socket bound to "" listens on every interface."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host or interface name: assume it is reachable


class Settings(BaseSettings):
    """Everything ``actmax serve`` needs; each field is also ``ACTMAX_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="ACTMAX_", extra="forbid", allow_inf_nan=False)

    data_dir: Path = Field(Path("actmax-data"), description="Database and image archive folder.")
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///{data_dir}/actmax.sqlite.")
    http_host: str = Field("127.0.0.1", description="REST bind address (loopback unless set).")
    http_port: int = Field(8000, ge=0, le=65535)
    zmq_endpoint: str = Field("tcp://127.0.0.1:5555", description="ZeroMQ ROUTER bind endpoint for rigs.")
    token: SecretStr | None = Field(None, description="Bearer token the REST API requires.")
    heartbeat_s: float = Field(2.0, ge=WELCOME_HEARTBEAT_MS[0] / 1000, le=WELCOME_HEARTBEAT_MS[1] / 1000,
                               description="Seconds between heartbeats, both ways.")
    liveness: int = Field(5, ge=WELCOME_LIVENESS[0], le=WELCOME_LIVENESS[1],
                          description="Missed heartbeats before a rig counts as disconnected.")
    max_message_bytes: int = Field(64 * 2**20, ge=WELCOME_MAX_MESSAGE_BYTES[0], le=WELCOME_MAX_MESSAGE_BYTES[1],
                                   description="Largest ZeroMQ message accepted.")
    batch_timeout_s: float = Field(300.0, gt=0, description="Seconds without results, while the rig is connected, "
                                   "before a batch's missing results time out.")
    weights_dir: Path | None = Field(
        None, description="Generator weights folder: weights of generator NAME in WEIGHTS_DIR/NAME/.")
    device: str = Field("auto", description='Torch device for generators: "auto", "cpu", "cuda", "cuda:1", ...')
    precision: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="Generator precision; a half precision is used only for generators whose "
        "images of 8 prior codes stay within generators.base.PRECISION_TOLERANCE of float32 (checked at load).")
    render_chunk: int = Field(
        64, ge=1, description="Images rendered per compute job. A larger generation is rendered in chunks, "
        "with other threads' steps and the rigs' results handled in between, so it freezes no other session.")
    max_body_bytes: int = Field(2**20, ge=1024, description="Largest REST request body; larger ones get 413 unread.")
    http_max_connections: int = Field(
        512, ge=1, description="REST connections open at once (at most half the open-file limit); one more gets 503 "
        "and is closed before its request is read.")
    http_request_timeout_s: float = Field(
        20.0, gt=0, description="Seconds a REST connection has to send each request in full (headers and body); "
        "one still sending then is closed.")
    max_active_threads: int = Field(
        128, ge=1, description="Threads not ended (running, waiting for their rig, blocked or paused) on the server; "
        "a session or thread over it is refused (422).")
    keys_dir: Path | None = Field(None, description="CURVE keys (`actmax keys`); default {data_dir}/keys.")

    @field_validator("database_url")
    @classmethod
    def _an_sqlite_url(cls, url: str) -> str:
        """The store is an SQLite file (the engine's step runs on the sqlite3 driver): say so at once, not with a
        traceback from SQLAlchemy or a missing database driver."""
        if url and not url.startswith("sqlite:///"):
            raise ValueError(f"{url!r}: actmax keeps its data in an SQLite file: give sqlite:///PATH, or leave it unset "
                             "for {data_dir}/actmax.sqlite")
        return url

    @field_validator("zmq_endpoint")
    @classmethod
    def _bindable(cls, endpoint: str) -> str:
        """An endpoint the rigs' socket can bind: a port out of range wrapped round to another one unsaid."""
        return check_endpoint(endpoint, bind=True)

    @field_validator("weights_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """An empty ACTMAX_WEIGHTS_DIR is unset, not the working directory."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _derive_database_url(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'actmax.sqlite'}"
        if self.keys_dir is None:
            self.keys_dir = self.data_dir / "keys"
        return self

    def check_exposure(self, curve: bool) -> None:
        """Refuse to serve off loopback without CURVE on the rigs' socket or with a short token."""
        endpoint = urlsplit(self.zmq_endpoint)  # ZeroMQ's ipc:// and inproc:// have no host and are local
        if not curve and endpoint.scheme not in ("ipc", "inproc") and not _is_loopback(endpoint.hostname or ""):
            raise ServerError(
                f"the rigs' endpoint {self.zmq_endpoint} is off loopback without CURVE keys; run "
                f"`actmax keys init` and `actmax keys rig NAME` (keys in {self.keys_dir}) or bind "
                "tcp://127.0.0.1")
        token = self.require_token()
        if len(token) < MIN_EXPOSED_TOKEN and not _is_loopback(self.http_host):
            raise ServerError(
                f"ACTMAX_TOKEN has {len(token)} characters; off loopback ({self.http_host or 'every interface'}) it "
                f"needs at least {MIN_EXPOSED_TOKEN}: python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'")

    def require_token(self) -> str:
        """The API token; a ``ServerError`` saying how to set one if it is missing or unusable."""
        if self.token is None or not self.token.get_secret_value():
            raise ServerError(
                "no API token: set ACTMAX_TOKEN (e.g. export ACTMAX_TOKEN=$(python -c "
                "'import secrets; print(secrets.token_urlsafe(32))')) before serving"
            )
        return check_token(self.token.get_secret_value())


def load_settings(flags: dict[str, tuple[str, object]] | None = None) -> Settings:
    """The environment's settings with the command line's over them (``flags``: field -> (flag, value), a None
    value unset); a bad value is a ``ServerError`` that names its flag or ``ACTMAX_`` variable."""
    given = {field: given for field, given in (flags or {}).items() if given[1] is not None}
    try:
        return Settings(**{field: value for field, (_, value) in given.items()})
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else ""
            source = given[field][0] if field in given else f"ACTMAX_{field.upper()}"
            message = problem["msg"].removeprefix("Value error, ")  # pydantic's prefix to a validator's words
            problems.append(f"{source}: {message}" if field else message)
        raise ServerError(f"bad setting: {'; '.join(problems)}") from None


CLIENT_VARIABLES = frozenset({"ACTMAX_URL"})  # read by `actmax session|thread`, not by the server


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """What to say of each ``ACTMAX_`` variable in ``environ`` that nothing reads (a misspelt name would be
    ignored silently), with the name meant when one is close."""
    known = {f"ACTMAX_{name.upper()}" for name in Settings.model_fields} | CLIENT_VARIABLES
    said = []
    for name in sorted(environ):
        if name.upper().startswith("ACTMAX_") and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
            said.append(f"{name}{f' (did you mean {close[0]}?)' if close else ''}")
    return said


def check_token(token: str) -> str:
    """``token`` if an HTTP header can carry it (visible ASCII, no spaces); else a ``ServerError`` that does
    not print it."""
    if not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ServerError("ACTMAX_TOKEN holds a space, a line break or a non-ASCII character, which no HTTP "
                          "header can carry (a newline read from a file?); set it to the token alone")
    return token


def new_token() -> str:
    """A fresh random API token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)
