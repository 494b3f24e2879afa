"""Domain models: function configuration, async configuration, destinations."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import InvalidConfig

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
RUNTIMES = ("python3.11",)
MAX_ENV_BYTES = 4096


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookDestination(_Strict):
    type: Literal["webhook"]
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$", max_length=2048)]


class QueueDestination(_Strict):
    type: Literal["queue"]
    name: Annotated[str, Field(pattern=QUEUE_NAME_RE.pattern)]


class FunctionDestination(_Strict):
    type: Literal["function"]
    name: Annotated[str, Field(pattern=NAME_RE.pattern)]


Destination = Annotated[
    WebhookDestination | QueueDestination | FunctionDestination, Field(discriminator="type")
]


class AsyncConfig(_Strict):
    task_mode: bool = True
    max_retry_attempts: Annotated[int, Field(ge=0, le=8)] = 2
    max_event_age_s: Annotated[int, Field(ge=1, le=604800)] = 21600
    retry_backoff_s: Annotated[float, Field(gt=0, le=300)] = 1.0
    on_success: Destination | None = None
    on_failure: Destination | None = None


class FunctionConfig(_Strict):
    """A function's configuration: the same keys in the manifest, `config` part and PATCH."""

    handler: Annotated[str, Field(pattern=HANDLER_RE.pattern, max_length=256)] = "main.handler"
    runtime: Literal["python3.11"] = "python3.11"
    memory_mb: Annotated[int, Field(ge=64, le=16384)] = 128
    timeout_s: Annotated[float, Field(gt=0, le=900)] = 30
    max_concurrency: Annotated[int, Field(ge=1, le=1000)] = 10
    env: dict[str, str] = Field(default_factory=dict)
    async_: Annotated[AsyncConfig, Field(alias="async")] = Field(default_factory=AsyncConfig)
    dedicated_queue: bool = False
    paused: bool = False
    # Invocations per second, across every gateway (None: unlimited); over it, 429.
    max_rate: Annotated[float, Field(gt=0, le=100000)] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("env")
    @classmethod
    def _check_env(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not ENV_KEY_RE.fullmatch(key):
                raise ValueError(f"invalid environment variable name {key!r}")
        if sum(len(k) + len(v) for k, v in env.items()) > MAX_ENV_BYTES:
            raise ValueError(f"environment larger than {MAX_ENV_BYTES} bytes")
        return env

    def dump(self) -> dict[str, Any]:
        """The config as the API and the store show it (`async`, not `async_`)."""
        return self.model_dump(by_alias=True, mode="json")


CONFIG_KEYS = frozenset(
    {"handler", "runtime", "memory_mb", "timeout_s", "max_concurrency", "env", "async",
     "dedicated_queue", "paused", "max_rate"}
)
# Manifest-only keys: a cloudpickled callable and the Python that pickled it.
MANIFEST_EXTRA_KEYS = frozenset({"pickle", "python"})


def _first_error(exc: ValidationError) -> InvalidConfig:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    return InvalidConfig(f"invalid config value for {loc or 'config'}: {err['msg']}", field=loc)


def parse_config(data: object) -> FunctionConfig:
    """Validate a full config mapping; unknown keys and bad values name the field."""
    if not isinstance(data, dict):
        raise InvalidConfig("config must be a JSON object", field="config")
    try:
        return FunctionConfig.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise _first_error(exc) from None


def merge_config(current: FunctionConfig, patch: object) -> FunctionConfig:
    """Apply a PATCH: only the keys named change; `async` merges key by key."""
    if not isinstance(patch, dict):
        raise InvalidConfig("config must be a JSON object", field="config")
    merged = current.dump()
    for key, value in patch.items():
        if key == "async" and isinstance(value, dict):
            merged["async"] = {**merged["async"], **value}
        else:
            merged[key] = value
    return parse_config(merged)


def check_name(name: str, what: str = "name") -> str:
    """Function and tenant names: 1-64 of [A-Za-z0-9_-], starting alphanumeric."""
    if not NAME_RE.fullmatch(name):
        raise InvalidConfig(
            f"invalid {what} {name[:80]!r}: use 1-64 characters of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit",
            field=what,
        )
    return name
