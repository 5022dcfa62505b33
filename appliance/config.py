"""The appliance's one TOML file, validated with pydantic so that every mistake is reported at once.

Relative paths inside the file resolve against the file's folder. Durations accept seconds or
"30s"/"15m"/"24h"/"3d"; sizes accept bytes or "512KiB"/"32MiB". Types are strict: a hand-edited file
that says `true` for a size or "yes" for a switch is a mistake to report, not to coerce.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DEFAULT_CONFIG_PATH = Path("/etc/mdm-appliance/appliance.toml")
CONFIG_ENV = "MDM_APPLIANCE_CONFIG"

# Dotted key paths whose values never leave the process (check-config redacts them).
SECRET_KEYS = {"api.key", "enrollment.scep_challenge", "enrollment.secret", "webhook.hmac_key"}

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "b": 1, "kib": 1024, "kb": 1000, "mib": 1024**2, "mb": 1000**2, "gib": 1024**3, "gb": 1000**3}


_DURATION_HINT = "expected a duration: seconds (a number) or a string like \"30s\", \"15m\", \"24h\", \"3d\""
_SIZE_HINT = "expected a size: bytes (a whole number) or a string like \"512KiB\", \"32MiB\""


def _duration(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(_DURATION_HINT)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
        if not match:
            raise ValueError(_DURATION_HINT)
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


def parse_duration(text: str) -> float:
    """"90", "15m", "24h", "30d" -> seconds, as the config file writes durations (also for API parameters)."""
    seconds = _duration(text)
    if not isinstance(seconds, (int, float)):
        raise ValueError(_DURATION_HINT)
    return float(seconds)


def _size(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(_SIZE_HINT)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        if not match or match.group(2).lower() not in _SIZES:
            raise ValueError(_SIZE_HINT)
        return int(match.group(1)) * _SIZES[match.group(2).lower()]
    return value


def _resolve_path(value: object, info: ValidationInfo) -> object:
    if isinstance(value, Path):  # built in Python (tests), not read from TOML
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected a path (a non-empty string)")
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def _must_exist(path: Path | None) -> Path | None:
    if path is not None and not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path


def _ca_bundle(path: Path | None) -> Path | None:
    """A CA bundle the TLS client will load: checked here, not when the first connection needs it."""
    if path is not None:
        try:
            ssl.create_default_context(cafile=str(path))
        except ssl.SSLError as exc:
            raise ValueError(f"{path}: no usable PEM certificate in it ({exc.reason or exc})") from None
        except OSError as exc:
            raise ValueError(f"{path}: {exc.strerror or exc}") from None
    return path


def _listen(value: str) -> str:
    parse_listen(value)
    return value


Seconds = Annotated[float, BeforeValidator(_duration), Field(gt=0)]
# An age after which something goes (a command expires, history is pruned); 0 keeps it forever. At most
# ten years, so a moment computed from it always fits the database's time format.
Age = Annotated[float, BeforeValidator(_duration), Field(ge=0, le=3650 * 86400)]
Bytes = Annotated[int, BeforeValidator(_size), Field(gt=0)]
ExistingFile = Annotated[Path, BeforeValidator(_resolve_path), AfterValidator(_must_exist)]
CABundle = Annotated[ExistingFile, AfterValidator(_ca_bundle)]
AnyPath = Annotated[Path, BeforeValidator(_resolve_path)]
Listen = Annotated[str, AfterValidator(_listen)]


def parse_listen(value: str) -> tuple[str, int]:
    """'0.0.0.0:8443' / '[::1]:8443' / 'localhost:8443' -> (host, port)."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^\[\]:\s]+):(\d+)", value.strip())
    if not match:
        raise ValueError("expected host:port, e.g. \"0.0.0.0:8443\" or \"[::]:8443\"")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if match.group(1):
        ipaddress.IPv6Address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


class Section(BaseModel):
    # strict: no bool as a number, no "yes" as true, no "365" as 365, no number as a string.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ServerConfig(Section):
    listen: Listen = "0.0.0.0:8443"
    tls: bool = True  # declared before public_url so its validator can see it
    public_url: str = Field(description="The https URL devices use to reach this appliance.")
    tls_cert: ExistingFile | None = None
    tls_key: ExistingFile | None = None
    max_body_size: Bytes = 32 * 1024 * 1024
    shutdown_grace: Seconds = 10.0
    organization: str = "mdm-appliance"

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an absolute URL like \"https://mdm.example.org:8443\"")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        if info.data.get("tls", True) and parts.scheme != "https":
            raise ValueError("must be https:// when tls is on (devices only talk TLS)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> ServerConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither to use a generated certificate")
        return self

    @property
    def public_host(self) -> str:
        return urlsplit(self.public_url).hostname or "localhost"


class StorageConfig(Section):
    data_dir: AnyPath = Path("/var/lib/mdm-appliance")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class ApiConfig(Section):
    key: str | None = Field(default=None, min_length=16)
    listen: Listen | None = None
    # After this many wrong keys from one client within key_guess_window, that client gets 429 until
    # the window has passed, even with the right key (0: no limit).
    key_guess_limit: int = Field(default=10, ge=0)
    key_guess_window: Seconds = 600.0


class ApnsConfig(Section):
    url: str = "https://api.push.apple.com"
    ca_file: CABundle | None = None
    expiration: Seconds = 3 * 86400
    timeout: Seconds = 15.0
    max_streams: int = Field(default=100, ge=1, le=1000)
    repush_interval: Seconds = 86400.0
    push_api_deadline: Seconds = 10.0  # /v1/push answers by then; unfinished pushes carry on
    # Pushes failing this long (APNs unreachable, TLS refused, 403) turn /healthz, STATUS=, metrics to error.
    unhealthy_after: Seconds = 300.0

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("expected an https URL like \"https://api.push.apple.com\"")
        return value.rstrip("/")


class IdentityConfig(Section):
    trusted_ca_files: list[ExistingFile] = []
    cert_header: str | None = None
    trusted_proxies: list[str] = []
    clock_skew: Seconds = 300.0

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return value

    @field_validator("trusted_ca_files")
    @classmethod
    def _ca_certificates(cls, value: list[Path]) -> list[Path]:
        from appliance.identity.certificate import load_ca_certificates

        for path in value:
            try:
                load_ca_certificates(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: {exc}") from None
        return value

    @field_validator("cert_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
            raise ValueError("expected an HTTP header name, e.g. \"Client-Cert\" or \"X-SSL-Client-Cert\"")
        return value

    @model_validator(mode="after")
    def _proxies_for_header(self) -> IdentityConfig:
        if self.cert_header and not self.trusted_proxies:
            raise ValueError("cert_header is only read from trusted_proxies: list the proxy addresses too")
        return self


class CheckinConfig(Section):
    user_authenticate: Literal["decline", "accept"] = "decline"


InventoryCommand = Literal["DeviceInformation", "SecurityInfo", "ProfileList", "CertificateList",
                           "InstalledApplicationList"]


class InventoryConfig(Section):
    # Every enrolled device is asked again this often (and once when it enrolls), moved by up to ±jitter.
    interval: Annotated[float, BeforeValidator(_duration), Field(ge=60)] = 86400.0
    jitter: Annotated[float, BeforeValidator(_duration), Field(ge=0)] = 3600.0
    # The commands asked; [] turns scheduled inventory off (answers to commands sent by hand still count).
    commands: list[InventoryCommand] = ["DeviceInformation", "SecurityInfo", "ProfileList", "CertificateList",
                                        "InstalledApplicationList"]

    @field_validator("commands")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a command twice")
        return value

    @model_validator(mode="after")
    def _jitter_below_interval(self) -> InventoryConfig:
        if self.jitter >= self.interval / 2:
            raise ValueError("jitter must be less than half the interval")
        return self


class EnrollmentConfig(Section):
    scep_challenge: str | None = None
    secret: str | None = None
    identity: Literal["scep", "pkcs12"] = "scep"
    one_time_challenge: bool = False
    certificate_validity_days: int = Field(default=365, ge=1, le=3650)
    challenge_ttl: Seconds = 3600.0
    # After this many wrong SCEP challenges from one address within challenge_guess_window, that
    # address's challenges fail until the window has passed (0: no limit).
    challenge_guess_limit: int = Field(default=10, ge=0)
    challenge_guess_window: Seconds = 600.0
    # The same for wrong enrollment-profile secrets (GET /mdm/enroll answers 429 meanwhile).
    secret_guess_limit: int = Field(default=10, ge=0)
    secret_guess_window: Seconds = 600.0
    sign_profile: bool = False
    profile_identifier: str = "org.mdm-appliance.enroll"


class RenewalConfig(Section):
    """Device identities from our CA, and the generated TLS certificate, are renewed before they expire."""

    # Renewal starts when less than this is left, or half the certificate's lifetime, whichever comes later.
    renew_before: Seconds = 30 * 86400.0
    # How often the appliance looks for identities due for renewal and for attempts to retry.
    check_interval: Seconds = 3600.0
    # An attempt not completed by then (NotNow, Error, no answer) is replaced by a new one; the wait
    # doubles from retry_initial up to retry_max.
    retry_initial: Seconds = 3600.0
    retry_max: Seconds = 86400.0

    @model_validator(mode="after")
    def _order(self) -> RenewalConfig:
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must not be shorter than retry_initial")
        return self


class WebhookConfig(Section):
    url: str | None = None
    hmac_key: str | None = None
    timeout: Seconds = 10.0
    # Retries back off from retry_initial, doubling up to retry_max, until the receiver answers 2xx.
    retry_initial: Seconds = 1.0
    retry_max: Seconds = 60.0
    # Trust these CAs for an https receiver instead of the system store (a receiver with a private CA).
    ca_file: CABundle | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http(s) URL")
        return value


class DdmConfig(Section):
    # Served to every DDM enrollment in the com.apple.management.organization-info declaration.
    organization_name: str | None = Field(default=None, min_length=1)  # default: [server] organization
    organization_email: str | None = None
    organization_url: str | None = None
    # Status history per enrollment: raw reports and reported errors kept (the newest).
    status_reports_kept: int = Field(default=10, ge=1, le=1000)
    status_errors_kept: int = Field(default=100, ge=1, le=10000)


class AbmConfig(Section):
    """Apple Business Manager: the DEP API each MDM server entry is synced from."""

    # Apple's Device Assignment service; another URL (http too) only for a test stand-in.
    api_url: str = "https://mdmenrollment.apple.com"
    # Per ABM server name (as made with `abm keypair NAME`): another URL for that server only.
    server_urls: dict[str, str] = {}
    ca_file: CABundle | None = None
    sync_interval: Seconds = 1800.0
    full_fetch_interval: Seconds = 7 * 86400.0
    page_size: int = Field(default=1000, ge=1, le=1000)
    request_timeout: Seconds = 60.0
    # The service failing (unreachable, 5xx): calls are retried after a pause doubling up to this.
    retry_max: Seconds = 1800.0
    # A device's failed assignment is tried again after assign_retry_initial, doubling up to assign_retry_max;
    # a THROTTLED one (Apple's cooldown) after throttled_retry.
    assign_retry_initial: Seconds = 600.0
    assign_retry_max: Seconds = 86400.0
    throttled_retry: Seconds = 86400.0

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("server_urls")
    @classmethod
    def _server_urls(cls, value: dict[str, str]) -> dict[str, str]:
        return {name: _http_url(url) for name, url in value.items()}

    def url_of(self, server: str) -> str:
        return self.server_urls.get(server, self.api_url)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("expected an http(s) URL like \"https://mdmenrollment.apple.com\"")
    return value.rstrip("/")


class SetupCommand(Section):
    """A command sent to an ADE device waiting in Setup Assistant: a Command dictionary, or a plist file."""

    command: dict | None = None
    plist: ExistingFile | None = None

    @model_validator(mode="after")
    def _checked(self) -> SetupCommand:
        from appliance.protocol import catalog, commands
        from appliance.protocol.errors import MessageError

        if (self.command is None) == (self.plist is None):
            raise ValueError("give either command = { RequestType = ... } or plist = \"file.plist\"")
        try:
            if self.command is not None:
                catalog.check(self.command)
                commands.build_command(self.command)
            else:
                commands.parse_command(self.plist.read_bytes())
        except MessageError as exc:
            raise ValueError(str(exc)) from None
        except OSError as exc:
            raise ValueError(f"{self.plist}: {exc.strerror or exc}") from None
        return self


class AdeConfig(Section):
    """Automated Device Enrollment: the profile defined with Apple, and the endpoint devices enroll at."""

    # The profile's url (where devices send their machine info); unset: public_url + "/mdm/ade".
    url: str | None = None
    profile_name: str | None = None
    is_supervised: bool = True
    is_mandatory: bool = True
    is_mdm_removable: bool = False
    await_device_configured: bool = False
    auto_advance_setup: bool = False
    department: str | None = None  # unset: [server] organization
    support_phone_number: str | None = None
    support_email_address: str | None = None
    org_magic: str | None = None
    language: str | None = None
    region: str | None = None
    skip_setup_items: list[str] = []
    setup_commands: list[SetupCommand] = []
    # CA certificates machine info signatures must chain to; unset: the Apple device CAs shipped with it.
    device_ca_files: list[ExistingFile] = []
    require_signed_machine_info: bool = True
    allow_unknown_devices: bool = False

    @field_validator("url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None and (urlsplit(value).scheme != "https" or not urlsplit(value).hostname):
            raise ValueError("devices only send their machine info to an https URL")
        return value

    @field_validator("skip_setup_items")
    @classmethod
    def _panes(cls, value: list[str]) -> list[str]:
        from appliance.protocol.dep import SKIP_SETUP_ITEMS

        unknown = [item for item in value if item not in SKIP_SETUP_ITEMS]
        if unknown:
            hints = [f"{item!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
                item, SKIP_SETUP_ITEMS, n=1)) else "") for item in unknown]
            raise ValueError(f"unknown Setup Assistant pane {', '.join(hints)}")
        return value

    @field_validator("device_ca_files")
    @classmethod
    def _ca_certificates(cls, value: list[Path]) -> list[Path]:
        from cryptography import x509

        for path in value:
            try:
                x509.load_pem_x509_certificates(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{path}: no PEM certificate in it ({exc})") from None
        return value


class QueueConfig(Section):
    # A command the API queues without ?ttl= expires this long after it was queued if no device took it
    # to a final status by then (0: never). Commands the appliance queues itself (DDM, inventory) do not expire.
    command_ttl: Age = 30 * 86400.0
    # A device with a pending command NotNow'd more than this many times is listed as stuck.
    not_now_threshold: int = Field(default=10, ge=1, le=1_000_000)


class RetentionConfig(Section):
    # How often the retention worker prunes what is older than the ages below and gives the space back.
    interval: Annotated[float, BeforeValidator(_duration), Field(ge=60)] = 3600.0
    # Ages after which rows are deleted (0: kept forever). Command bodies go with their last result,
    # once no queue row or result names them and they are older than `results`.
    results: Age = 90 * 86400.0
    stray_reports: Age = 30 * 86400.0
    inventory_history: Age = 365 * 86400.0
    ddm_status_history: Age = 90 * 86400.0


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"


class Config(Section):
    server: ServerConfig
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    apns: ApnsConfig = ApnsConfig()
    identity: IdentityConfig = IdentityConfig()
    checkin: CheckinConfig = CheckinConfig()
    enrollment: EnrollmentConfig = EnrollmentConfig()
    renewal: RenewalConfig = RenewalConfig()
    inventory: InventoryConfig = InventoryConfig()
    webhook: WebhookConfig = WebhookConfig()
    ddm: DdmConfig = DdmConfig()
    abm: AbmConfig = AbmConfig()
    ade: AdeConfig = AdeConfig()
    queue: QueueConfig = QueueConfig()
    retention: RetentionConfig = RetentionConfig()
    logging: LoggingConfig = LoggingConfig()

    # Where the file was read from (not a TOML key).
    source: Path | None = Field(default=None, exclude=True)

    @property
    def data_dir(self) -> Path:
        return self.storage.data_dir


class ConfigError(Exception):
    """Every problem found in a config file, each as 'key.path: what is expected'."""

    def __init__(self, path: Path | None, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(problems))


def default_config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


# Wrong TOML types, in the operator's words (pydantic's say "valid integer" for `true` too).
_EXPECTED = {
    "bool_type": "expected true or false",
    "int_type": "expected a whole number",
    "float_type": "expected a number",
    "string_type": "expected a string (in quotes)",
    "list_type": "expected a list, e.g. [\"a\", \"b\"]",
    "model_type": "expected a table of keys",
    "dict_type": "expected a table of keys",
}


def _describe(error: dict) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "missing":
        return f"{loc}: required key is missing"
    message = _EXPECTED.get(kind) or error["msg"]
    if kind == "literal_error":
        message = f"expected one of {error['ctx']['expected']}"
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if loc in SECRET_KEYS:  # a wrong secret is still a secret: never echo it
        return f"{loc}: {message}"
    if "input" in error and not isinstance(error["input"], dict):
        return f"{loc}: {message} (got {_toml_value(error['input'])})"
    return f"{loc}: {message}"


def parse_config(data: dict, base_dir: Path | None = None, source: Path | None = None) -> Config:
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, [_describe(e) for e in exc.errors()]) from None
    return config.model_copy(update={"source": source})


def load_config(path: Path | str | None = None) -> Config:
    path = Path(path) if path is not None else default_config_path()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    return parse_config(data, base_dir=path.resolve().parent, source=path)


def redacted_toml(config: Config) -> str:
    """The effective config as TOML, secrets replaced by "(redacted)"."""
    lines: list[str] = []
    for section, model in config:
        if not isinstance(model, BaseModel):
            continue
        lines.append(f"[{section}]")
        for key, value in model.model_dump().items():
            if value is None:
                lines.append(f"# {key} = (not set)")
                continue
            if f"{section}.{key}" in SECRET_KEYS:
                value = "(redacted)"
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
