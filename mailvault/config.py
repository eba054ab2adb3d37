"""Read and validate ``mailvault.toml``.

Validation runs against ``schemas/config.schema.json`` so that the file format is documented in
one machine-checkable place; the errors are rewritten into one line naming the file, the key and
the fix, because a nightly job's log is read by someone who did not write the config.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema

from mailvault.errors import ConfigError
from mailvault.resources import json_schema

TlsMode = Literal["implicit", "starttls", "none"]
AuthMode = Literal["auto", "user", "apop", "plain", "xoauth2"]
DeletePolicy = Literal["never", "after-commit"]


@dataclass(frozen=True, kw_only=True)
class AccountConfig:
    """One POP3 account as configured; the password itself is resolved only when needed."""

    name: str
    host: str
    user: str
    port: int
    tls: TlsMode = "implicit"
    auth: AuthMode = "auto"
    delete: DeletePolicy = "never"
    delete_after_days: int = 0
    password_command: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    tls_fingerprint: str | None = None
    timeout: float = 60.0
    max_messages_per_session: int = 0
    allow_plaintext_auth: bool = False
    pipelining: Literal["auto", "off"] = "auto"
    retries: int = 5
    keep_days: int | None = None
    config_path: Path | None = None

    @property
    def has_password_source(self) -> bool:
        return bool(self.password_command or self.password_env or self.password_file)


@dataclass(frozen=True, kw_only=True)
class VaultSettings:
    """Vault-wide settings from the ``[vault]`` table."""

    compression: Literal["zstd", "none"] = "zstd"
    commit_batch_messages: int = 256
    commit_batch_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole parsed configuration file."""

    path: Path
    accounts: dict[str, AccountConfig] = field(default_factory=dict)
    vault: VaultSettings = field(default_factory=VaultSettings)
    retention_keep_days: int | None = None
    # what a message's age counts from: "date" (its Date header, else its first ingest) or
    # "archived" (its first ingest, whatever the header says)
    retention_age_from: Literal["date", "archived"] = "date"
    import_keep_days: dict[str, int] = field(default_factory=dict)  # [imports.NAME] keep_days
    raw: dict[str, Any] = field(default_factory=dict)

    def keep_days_by_label(self) -> dict[str, int]:
        """keep_days per account and per import label (``import --account NAME``)."""
        days = {a.name: a.keep_days for a in self.accounts.values() if a.keep_days is not None}
        return {**days, **self.import_keep_days}

    def account(self, name: str) -> AccountConfig:
        try:
            return self.accounts[name]
        except KeyError:
            known = ", ".join(sorted(self.accounts)) or "none"
            raise ConfigError(
                f"{self.path}: no account named {name!r} (configured: {known}); "
                f"add an [accounts.{name}] table or use one of those names"
            ) from None


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _is_integer(_checker: object, value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # not 110.0, not true


def _is_number(_checker: object, value: object) -> bool:
    return _is_integer(_checker, value) or (isinstance(value, float) and math.isfinite(value))


# TOML has integers and floats apart; JSON Schema would take 110.0 for an integer and nan for a
# number (every comparison with nan is false, so no bound stops it).
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "number": _is_number}
    ),
)
_TYPE_NAMES = {
    "integer": "an integer (no decimal point)",
    "number": "a number",
    "string": 'a string (in "quotes")',
    "boolean": "true or false",
    "object": "a table",
    "array": "an array",
}


def _toml(value: object) -> str:
    """A value as it would be written in TOML, for messages (not Python's repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return repr(value)


def _explain(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into 'key: problem; fix'."""
    key = _key_path(error)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        where = f"in [{key}]" if key != "(top level)" else "at the top level"
        return f"unknown key {', '.join(extra)} {where}; allowed keys are: {allowed}"
    if error.validator == "required":
        return f"[{key}] is missing a required key: {error.message.split(' is ')[0]}"
    if error.validator == "enum":
        choices = " | ".join(_toml(v) for v in error.validator_value)
        return f"{key} = {_toml(error.instance)} is not allowed; use one of: {choices}"
    if error.validator == "type":
        wanted = _TYPE_NAMES.get(str(error.validator_value), str(error.validator_value))
        return f"{key} = {_toml(error.instance)} has the wrong type; it must be {wanted}"
    if error.validator in ("minimum", "exclusiveMinimum", "maximum"):
        bounds = error.schema
        low = bounds.get("minimum", bounds.get("exclusiveMinimum"))
        above = "above" if "exclusiveMinimum" in bounds else "at least"
        wanted = f"{above} {low}" if low is not None else ""
        if "maximum" in bounds:
            wanted += f"{' and ' if wanted else ''}at most {bounds['maximum']}"
        hint = f" ({bounds['description']})" if "description" in bounds else ""
        return f"{key} = {_toml(error.instance)} is out of range; it must be {wanted}{hint}"
    if error.validator == "pattern" and "description" in error.schema:
        return (
            f"{key} = {_toml(error.instance)} is not valid; it must be "
            f"{error.schema['description']}"
        )
    if "propertyNames" in error.schema_path:
        return f'[{key}.""]: an empty name is not allowed; give it a name'
    if error.validator == "minLength" and error.instance == "":
        return f"{key} is empty; give it a value (or remove the key if it is optional)"
    return f"{key}: {error.message}"


def _nul_key(table: dict[str, Any], prefix: str = "") -> str | None:
    """The first key whose string value holds a NUL (no path, command or name can)."""
    for key, value in table.items():
        where = f"{prefix}{key}"
        if isinstance(value, dict):
            found = _nul_key(value, where + ".")
            if found is not None:
                return found
        elif isinstance(value, str) and "\0" in value:
            return where
    return None


def parse_config(path: Path, text: str) -> Config:
    """Parse and validate config text; raise ConfigError naming file, key and fix."""
    try:
        raw = tomllib.loads(text.removeprefix("\ufeff"))  # a BOM from a Windows editor
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    nul = _nul_key(raw)
    if nul is not None:
        raise ConfigError(f"{path}: {nul} contains a NUL character (\\u0000); remove it")
    validator = _Validator(json_schema("config.schema.json"))
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError(f"{path}: {_explain(errors[0])}")
    accounts = {
        name: _account(path, name, table) for name, table in raw.get("accounts", {}).items()
    }
    vault_table = raw.get("vault", {})
    imports = {name: int(t["keep_days"]) for name, t in raw.get("imports", {}).items()}
    for name in imports:
        if name in accounts:
            raise ConfigError(
                f"{path}: imports.{name} names an account; set keep_days in [accounts.{name}] "
                "instead (it covers the mail imported with --account too)"
            )
    return Config(
        path=path,
        accounts=accounts,
        vault=VaultSettings(**vault_table),
        retention_keep_days=raw.get("retention", {}).get("keep_days"),
        retention_age_from=raw.get("retention", {}).get("age_from", "date"),
        import_keep_days=imports,
        raw=raw,
    )


# "pop.example.com:995" or "[2001:db8::1]:995"; a bare IPv6 address ("::1") is no host:port
HOST_WITH_PORT = re.compile(r"^(?:([^:\[\]]+)|\[([^\[\]]+)\]):(\d+)$")


def _account(path: Path, name: str, table: dict[str, Any]) -> AccountConfig:
    tls: TlsMode = table.get("tls", "implicit")
    port = table.get("port", 995 if tls == "implicit" else 110)
    sources = [k for k in ("password_command", "password_env", "password_file") if k in table]
    if len(sources) > 1:
        raise ConfigError(
            f"{path}: accounts.{name} sets {' and '.join(sources)}; keep exactly one password source"
        )
    if not sources:
        raise ConfigError(
            f"{path}: accounts.{name} has no password source; "
            "set password_command, password_env or password_file"
        )
    if tls == "none" and not table.get("allow_plaintext_auth", False):
        raise ConfigError(
            f'{path}: accounts.{name} uses tls = "none", which sends the password in clear text; '
            'use tls = "implicit" or "starttls", or set allow_plaintext_auth = true if you mean it'
        )
    host = str(table["host"])
    with_port = HOST_WITH_PORT.match(host)
    if with_port:
        raise ConfigError(
            f"{path}: accounts.{name}.host = {_toml(host)} includes a port; set "
            f"host = {_toml(with_port.group(1) or with_port.group(2))} and "
            f"port = {with_port.group(3)}"
        )
    try:
        host.encode("idna")  # what the socket layer will do with it
    except UnicodeError:
        raise ConfigError(
            f"{path}: accounts.{name}.host = {_toml(host)} is not a valid host name (an empty "
            "label, as in 'pop..example.com', or one over 63 characters); fix the name"
        ) from None
    if tls == "none":
        ignored = [k for k in ("tls_fingerprint", "ca_file") if table.get(k)]
        if ignored:
            raise ConfigError(
                f'{path}: accounts.{name} sets {" and ".join(ignored)} but tls = "none", so '
                f'there is no certificate to check; use tls = "implicit" or "starttls", or '
                f"remove {' and '.join(ignored)}"
            )
    fields = {k: v for k, v in table.items() if k != "port"}
    if fields.get("ca_file") == "":
        fields.pop("ca_file")
    if fields.get("delete_after_days") and fields.get("delete", "never") == "never":
        raise ConfigError(
            f'{path}: accounts.{name} sets delete_after_days but delete = "never"; '
            'set delete = "after-commit" or remove delete_after_days'
        )
    return AccountConfig(name=name, port=port, config_path=path, **fields)


def load_config(path: Path) -> Config:
    """Load ``mailvault.toml`` from disk."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; run `mailvault init` or create it"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: the config file is not UTF-8 (byte {exc.start}); TOML must be UTF-8: save "
            "it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the config file ({exc.strerror or exc}); check its "
            "permissions and that it is a file"
        ) from None
    return parse_config(path, text)
