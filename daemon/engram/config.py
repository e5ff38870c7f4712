"""Settings: defaults < TOML file < ``ENGRAM_*`` environment < command-line flags.

Every setting is a field of :class:`Settings` (nested sections are their own models), so the
configuration file, the environment and ``engram config show`` all speak about the same keys, and
``schemas/config.json`` is generated from the same model. Nested keys use ``__`` in the
environment: ``server.max_frame_bytes`` is ``ENGRAM_SERVER__MAX_FRAME_BYTES``.

Where things live when nothing says otherwise (see the design brief; :mod:`engram.locations`
works it out, apart from these settings so that clients find the socket without importing them):

========================  ================================  ===================================
run as                    state folder                      socket
========================  ================================  ===================================
systemd system service    ``$STATE_DIRECTORY``              ``$RUNTIME_DIRECTORY/engram.sock``
                          (``/var/lib/engram``)             (``/run/engram/engram.sock``)
user (service or shell)   ``$XDG_STATE_HOME/engram``        ``$XDG_RUNTIME_DIR/engram/engram.sock``
a checkout (make run)     ``./var`` (``--state-dir``)        ``./var/engram.sock``
========================  ================================  ===================================

An explicitly chosen state folder keeps its socket inside it unless ``socket`` is set too.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from engram.audit.settings import AuditSettings
from engram.bus.settings import BusSettings
from engram.errors import ConfigError
from engram.eventloop import EventLoop
from engram.http.settings import HttpSettings
from engram.inference.settings import InferenceSettings
from engram.locations import MAX_UNIX_PATH, default_socket, default_socket_candidates, default_state_dir
from engram.memory.settings import MemorySettings
from engram.observability.settings import LogSettings, TracingSettings
from engram.plugins.settings import PluginSettings
from engram.policy.settings import PolicySettings
from engram.providers.settings import ProvidersSettings
from engram.router.settings import RouterSettings
from engram.server.settings import ServerSettings
from engram.sleep.settings import SleepSettings
from engram.storage.settings import StorageSettings
from engram.tasks.settings import TaskSettings

__all__ = ["MAX_UNIX_PATH", "Settings", "config_file_from_env", "default_socket_candidates", "load_settings"]


class Settings(BaseSettings):
    """The daemon's whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="ENGRAM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    # The configuration file's contents, set on the subclass that one load_settings() call makes.
    _file_data: ClassVar[dict[str, Any]] = {}

    state_dir: Path = Field(default_factory=default_state_dir, description="Where state lives.")
    socket: Path | None = Field(default=None, description="Socket path (default: see the table above).")
    event_loop: EventLoop = Field(
        default="auto",
        description="The event loop: auto (uvloop where installed, else Python's asyncio loop), uvloop, or asyncio. "
        "Read at start.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    bus: BusSettings = Field(default_factory=BusSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    providers: ProvidersSettings = Field(default_factory=ProvidersSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    sleep: SleepSettings = Field(default_factory=SleepSettings)
    tasks: TaskSettings = Field(default_factory=TaskSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)

    @field_validator("state_dir", "socket", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.abspath(value.expanduser()))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags, then environment, then the file: a source of its own, so that it ranks below the
        # environment (pydantic-settings ranks init arguments above everything). No .env: a file
        # in whatever folder the daemon happens to start from must not change its behaviour.
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=cls._file_data))

    @property
    def socket_path(self) -> Path:
        if self.socket is not None:
            return self.socket
        return self.state_dir / "engram.sock"

    @property
    def database_path(self) -> Path:
        return self.state_dir / "engram.db"

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON values, fit to show: the socket resolved, secrets redacted."""
        data, _ = self.redacted_dict()
        return data

    def redacted_dict(self) -> tuple[dict[str, Any], list[str]]:
        """:meth:`public_dict` and the dotted keys whose values it withheld as secrets."""
        data = self.model_dump(mode="json")
        data["socket"] = str(self.socket_path)
        redacted: list[str] = []
        return _redact(data, "", redacted), redacted


def _with_file(file_data: dict[str, Any]) -> type[Settings]:
    """:class:`Settings` with the configuration file's contents as its last source."""
    return type("SettingsWithFile", (Settings,), {"_file_data": file_data})


REDACTED = "<redacted>"

# Provider tables (plugins.providers.<name>) are free-form, so secrets are found by name: the
# last word of the key (api_key, client_secret, access_token, password, ...). Names that merely
# point at a secret (api_key_env) end in another word and stay readable.
_SECRET_KEY = re.compile(
    r"(^|[_-])(key|api_?key|secret|token|password|passwd|passphrase|credentials?|authorization)$", re.IGNORECASE
)
# The password of a URL's user part (https://user:password@host/): base_url settings carry them.
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")


def _redact(value: Any, where: str, redacted: list[str]) -> Any:
    """``value`` with secret-named entries replaced by :data:`REDACTED`, noting each key."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if item is not None and _SECRET_KEY.search(str(key)):
                out[key] = REDACTED
                redacted.append(path)
            else:
                out[key] = _redact(item, path, redacted)
        return out
    if isinstance(value, list):
        return [_redact(item, f"{where}[{index}]", redacted) for index, item in enumerate(value)]
    if isinstance(value, str) and _URL_PASSWORD.search(value):
        redacted.append(where)
        return _URL_PASSWORD.sub(rf"\1{REDACTED}@", value)
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid UTF-8 (byte {exc.start}), as TOML must be") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None


def _where(loc: tuple[Any, ...], file_data: dict[str, Any], config_file: Path | None) -> str:
    """Say which source supplied the invalid key, so the user knows what to edit."""
    env_name = "ENGRAM_" + "__".join(str(part).upper() for part in loc)
    if env_name in os.environ:
        return f" (from environment variable {env_name})"
    node: Any = file_data
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    return f" (from {config_file})" if config_file else ""


# ENGRAM_* variables that are no setting but are read all the same.
_ENVIRONMENT_NOT_SETTINGS = frozenset({"ENGRAM_CONFIG"})


def _unknown_environment() -> list[tuple[str, str]]:
    """A problem for each ``ENGRAM_*`` variable that names no setting, as unknown TOML keys are.

    pydantic-settings reads only the variables its fields ask for, so a misspelt top-level name
    (``ENGRAM_SEVRER__MAX_INFLIGHT``) would be dropped without a word; deeper names are checked by
    the sections themselves, which forbid unknown keys. Names match case-insensitively, as
    pydantic-settings reads them.
    """
    problems = []
    for name in os.environ:
        upper = name.upper()
        if not upper.startswith("ENGRAM_") or upper in _ENVIRONMENT_NOT_SETTINGS:
            continue
        top = upper.removeprefix("ENGRAM_").split("__")[0].lower()
        if top not in Settings.model_fields:
            problems.append((name, "unknown environment variable: no setting of that name"))
    return problems


def _unparsable_environment(field: str) -> ConfigError:
    """The variables that feed ``field`` hold a value pydantic-settings could not parse as JSON."""
    prefix = f"ENGRAM_{field.upper()}"
    names = sorted(
        name for name in os.environ if name.upper() == prefix or name.upper().startswith(prefix + "__")
    )
    return ConfigError(
        "invalid configuration:",
        [(name, "not valid JSON (lists and tables in the environment are JSON)") for name in names]
        or [(field, "a value from the environment cannot be parsed")],
    )


def _field_named_in(error: SettingsError) -> str:
    """The field of ``error parsing value for field "plugins" from source ...``."""
    match = re.search(r'field "([^"]+)"', str(error))
    return match.group(1) if match else "(unknown)"


def config_file_from_env() -> Path | None:
    value = os.environ.get("ENGRAM_CONFIG")
    return Path(value) if value else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the effective settings, or raise :class:`ConfigError` naming every bad key.

    ``overrides`` are command-line flags (``None`` means "not given"); ``config_file`` falls back
    to ``$ENGRAM_CONFIG``.
    """
    config_file = config_file or config_file_from_env()
    file_data = _read_toml(config_file) if config_file else {}
    flags = {key: value for key, value in overrides.items() if value is not None}
    unknown = _unknown_environment()
    try:
        loaded = _with_file(file_data)(**flags)
    except SettingsError as exc:
        raise _unparsable_environment(_field_named_in(exc)) from None
    except ValidationError as exc:
        problems = list(unknown)
        for error in exc.errors():
            loc = tuple(part for part in error["loc"] if part != "__root__")
            key = ".".join(str(part) for part in loc) or "(top level)"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown setting"
            problems.append((key, message + _where(loc, file_data, config_file)))
        raise ConfigError("invalid configuration:", problems) from None
    # The same values as a plain Settings (validated above already), not the per-load subclass.
    settings = Settings.model_construct(_fields_set=loaded.model_fields_set, **dict(loaded))
    if unknown:
        raise ConfigError("invalid configuration:", unknown)
    chosen = "state_dir" in flags or "state_dir" in file_data or "ENGRAM_STATE_DIR" in os.environ
    if settings.socket is None:
        settings.socket = default_socket(chosen, settings.state_dir)
    if len(os.fsencode(str(settings.socket))) > MAX_UNIX_PATH:
        raise ConfigError(
            "invalid configuration:",
            [("socket", f"path {settings.socket} is longer than {MAX_UNIX_PATH} bytes, the limit of Unix sockets")],
        )
    return settings
