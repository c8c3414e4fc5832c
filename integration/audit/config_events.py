"""Configuration events: each start of ``ecgbridge serve`` / ``worker`` audits its settings.

The effective settings (every ``ECGBRIDGE_*`` variable the settings classes read, defaults
included) become one digest per setting and a SHA-256 fingerprint over those digests. When
the fingerprint differs from the last configuration recorded for the same role, the start
appends ``config.changed`` naming the settings that changed; otherwise ``config.loaded`` with
the fingerprint only. No value is ever written: a plain setting is represented by the
SHA-256 of its value, and a secret (a `SecretStr`, a name with key/secret/token/password, a
URL with a password) by an HMAC under the PHI search key, so its digest cannot be guessed
from the log; secrets are listed apart, as changed or not.

`snapshot` and `compare` are pure; `record_start` is the shell (reads the log, appends).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pydantic import SecretBytes, SecretStr
from pydantic_settings import BaseSettings

from integration.audit.events import AuditEvent, EventKind, StoredEvent
from integration.audit.store import SearchQuery

log = logging.getLogger(__name__)

#: Setting names treated as secret whatever their type.
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL)", re.IGNORECASE)
#: Characters of each per-setting digest kept in the log (64 bits: enough to see a change).
DIGEST_CHARS = 16
#: How far back `record_start` looks for the last configuration of its role.
LOOKBACK = 200


@dataclass(frozen=True, slots=True)
class Setting:
    """One effective setting: its environment variable name and value."""

    name: str
    value: object
    secret: bool


@dataclass(frozen=True, slots=True)
class ConfigSnapshot:
    """Digests of the effective settings, by variable name, and the names of the secret
    ones. Holds no value."""

    digests: Mapping[str, str]
    secrets: frozenset[str]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the sorted per-setting digests (hex)."""
        canon = json.dumps(sorted(self.digests.items()), separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def encoded(self) -> str:
        """``NAME=digest;...`` (secrets marked with a ``*``), the form stored in the log."""
        return ";".join(
            f"{'*' if n in self.secrets else ''}{n}={d}" for n, d in sorted(self.digests.items())
        )

    @classmethod
    def decode(cls, text: str) -> ConfigSnapshot:
        digests: dict[str, str] = {}
        secrets: set[str] = set()
        for part in filter(None, text.split(";")):
            name, sep, digest = part.partition("=")
            if not sep or not digest:
                raise ValueError(f"bad configuration digest entry {part!r}")
            if name.startswith("*"):
                name = name[1:]
                secrets.add(name)
            digests[name] = digest
        return cls(digests, frozenset(secrets))


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What differs from the last recorded configuration (None: nothing recorded yet)."""

    changed: tuple[str, ...]
    secrets_changed: tuple[str, ...]
    previous_fingerprint: str | None

    @property
    def any(self) -> bool:
        return bool(self.changed or self.secrets_changed) or self.previous_fingerprint is None


def _plain(value: object) -> object:
    if isinstance(value, (SecretStr, SecretBytes)):
        raw = value.get_secret_value()
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def _url_with_password(value: object) -> bool:
    if not isinstance(value, str) or "://" not in value:
        return False
    try:
        return urlsplit(value).password is not None
    except ValueError:
        return True  # unparseable: treat as secret


def settings_of(sources: Iterable[BaseSettings]) -> list[Setting]:
    """The effective settings of ``sources`` by environment variable name (a name read by
    two classes appears once; the first source wins)."""
    out: dict[str, Setting] = {}
    for src in sources:
        prefix = str(src.model_config.get("env_prefix") or "")
        for field_name, info in type(src).model_fields.items():
            name = f"{prefix}{field_name}".upper()
            if name in out:
                continue
            value = getattr(src, field_name)
            secret = (
                isinstance(value, (SecretStr, SecretBytes))
                or info.annotation in (SecretStr, SecretStr | None)
                or bool(SECRET_NAME.search(field_name))
                or _url_with_password(value)
            )
            out[name] = Setting(name, _plain(value), secret)
    return list(out.values())


def snapshot(settings: Iterable[Setting], *, keyed: Callable[[str], str]) -> ConfigSnapshot:
    """Per-setting digests: the keyed hash ``keyed`` (an HMAC) of name and canonical JSON
    value, for every setting: a plain hash of a short value (a host, a port, a token left in
    a URL's query) could be found by trying values. Secrets are also named as such."""
    digests: dict[str, str] = {}
    secrets: set[str] = set()
    for s in settings:
        text = s.name + "\x00" + json.dumps(s.value, sort_keys=True, default=str)
        if s.secret:
            secrets.add(s.name)
        digests[s.name] = keyed(text)[:DIGEST_CHARS]
    return ConfigSnapshot(digests, frozenset(secrets))


def compare(previous: ConfigSnapshot | None, current: ConfigSnapshot) -> ConfigChange:
    if previous is None:
        return ConfigChange(
            tuple(sorted(n for n in current.digests if n not in current.secrets)),
            tuple(sorted(current.secrets)),
            None,
        )
    names = set(previous.digests) | set(current.digests)
    diff = sorted(n for n in names if previous.digests.get(n) != current.digests.get(n))
    secret = previous.secrets | current.secrets
    return ConfigChange(
        tuple(n for n in diff if n not in secret),
        tuple(n for n in diff if n in secret),
        previous.fingerprint,
    )


def config_event(*, role: str, current: ConfigSnapshot, change: ConfigChange) -> AuditEvent:
    """``config.changed`` (with the digests, for the next comparison) or ``config.loaded``
    (fingerprint only)."""
    actor = f"ecgbridge {role}"
    if not change.any:
        return AuditEvent(
            kind=EventKind.CONFIG_LOADED,
            actor=actor,
            detail={"role": role, "fingerprint": current.fingerprint},
        )
    return AuditEvent(
        kind=EventKind.CONFIG_CHANGED,
        actor=actor,
        detail={
            "role": role,
            "fingerprint": current.fingerprint,
            "previous_fingerprint": change.previous_fingerprint,
            "first_recorded": change.previous_fingerprint is None,
            "changed": ",".join(change.changed),
            "secrets_changed": ",".join(change.secrets_changed),
            "digests": current.encoded(),
        },
    )


def last_recorded(events: Iterable[StoredEvent], *, role: str) -> ConfigSnapshot | None:
    """The configuration in the newest ``config.changed`` of ``role`` among ``events``
    (newest first). A ``config.loaded`` always repeats the one before it."""
    for ev in events:
        if ev.kind is EventKind.CONFIG_CHANGED and ev.detail.get("role") == role:
            digests = ev.detail.get("digests")
            if isinstance(digests, str):
                return ConfigSnapshot.decode(digests)
    return None


class ConfigAuditLog(Protocol):
    """The part of `AuditLog` this module uses."""

    def append(self, event: AuditEvent) -> int: ...
    def search(self, query: SearchQuery) -> list[StoredEvent]: ...
    def patient_key(self, identifier: str) -> str: ...


def effective_sources() -> list[BaseSettings]:
    """Every settings class the service reads, as the environment sets them now."""
    from integration.alerts import get_alert_settings
    from integration.audit.config import get_audit_settings
    from integration.observability import get_observability_settings
    from integration.settings import get_settings
    from integration.smart import get_smart_settings

    return [
        get_settings(),
        get_audit_settings(),
        get_smart_settings(),
        get_alert_settings(),
        get_observability_settings(),
    ]


def record_config(
    audit: ConfigAuditLog, *, role: str, sources: Iterable[BaseSettings]
) -> AuditEvent:
    """Append ``config.changed`` or ``config.loaded`` for a start of ``role``; returns it.
    Raises `AuditError` when the log cannot take it."""
    current = snapshot(settings_of(sources), keyed=audit.patient_key)
    recent = audit.search(
        SearchQuery(kinds=(EventKind.CONFIG_CHANGED.value,), limit=LOOKBACK, newest_first=True)
    )
    change = compare(last_recorded(recent, role=role), current)
    event = config_event(role=role, current=current, change=change)
    index = audit.append(event)
    log.info(
        "%s: %s (audit entry %d, fingerprint %s, %d settings changed)",
        role,
        event.kind.value,
        index,
        current.fingerprint[:16],
        len(change.changed) + len(change.secrets_changed) if change.any else 0,
    )
    return event


def record_start(role: str) -> AuditEvent:
    """`record_config` on the configured audit log with the environment's settings."""
    from integration.audit.log import AuditLog

    audit = AuditLog.from_settings()
    try:
        return record_config(audit, role=role, sources=effective_sources())
    finally:
        audit.close()
