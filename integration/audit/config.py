"""Audit settings (ECGBRIDGE_* variables), read by their own pydantic-settings class until
they move into `integration.settings.Settings`. Built by `get_audit_settings()`.

Keys: outside the development environment, missing keys are an error; in development the
signing key and the PHI key file are generated once under ``$DATA_DIR/keys`` (mode 0600).
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from integration.audit.crypto import PhiKeyRing
from integration.audit.errors import AuditKeyError
from integration.audit.signing import HeadSigner, public_key_from_raw

log = logging.getLogger(__name__)

SIX_YEARS_DAYS = 2192  # 6 x 365.25, rounded up


class AuditSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECGBRIDGE_", extra="ignore")

    environment: str = "development"
    database_url: str | None = None
    data_dir: Path = Path("./var")
    audit_key_file: Path | None = None
    audit_trusted_public_keys: str = ""
    phi_keys: SecretStr | None = None
    phi_search_key: SecretStr | None = None
    phi_key_file: Path | None = None
    audit_retention_days: int = Field(default=SIX_YEARS_DAYS, ge=SIX_YEARS_DAYS - 2)
    audit_archive_dir: Path | None = None
    audit_head_interval: int = Field(default=256, ge=1)
    audit_head_max_age_s: float = Field(default=60.0, gt=0)
    audit_sqlite_synchronous: str = Field(default="NORMAL", pattern="^(?i)(NORMAL|FULL|EXTRA)$")
    audit_pg_synchronous_commit: bool = True
    audit_reviewer_tokens: SecretStr | None = None

    @property
    def development(self) -> bool:
        return self.environment.lower() in ("development", "dev", "test")

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ecgbridge.sqlite3').resolve()}"

    @property
    def key_file(self) -> Path:
        return self.audit_key_file or self.data_dir / "keys" / "audit-ed25519.pem"

    @property
    def archive_dir(self) -> Path:
        return self.audit_archive_dir or self.data_dir / "audit-archive"

    def reviewer_tokens(self) -> dict[str, str]:
        """``"TOKEN=name,TOKEN=name"`` -> {token: reviewer name}."""
        if self.audit_reviewer_tokens is None:
            return {}
        out: dict[str, str] = {}
        for part in self.audit_reviewer_tokens.get_secret_value().split(","):
            token, _, name = part.strip().partition("=")
            if token:
                out[token] = name or "reviewer"
        return out


def get_audit_settings() -> AuditSettings:
    return AuditSettings(_env_file=os.environ.get("ECGBRIDGE_CONFIG_FILE"))


def load_signer(settings: AuditSettings) -> HeadSigner:
    path = settings.key_file
    if path.exists():
        return HeadSigner.load(path)
    if not settings.development:
        raise AuditKeyError(
            f"no audit signing key at {path}: set ECGBRIDGE_AUDIT_KEY_FILE to an Ed25519 "
            "PEM key (openssl genpkey -algorithm ed25519)"
        )
    signer = HeadSigner.generate()
    try:
        signer.save(path)
    except FileExistsError:  # another process generated it first: use theirs
        return HeadSigner.load(path)
    log.warning("generated a development audit signing key at %s (key %s)", path, signer.key_id)
    return signer


def trusted_keys(settings: AuditSettings) -> list[bytes]:
    """Raw public keys of retired signing keys that verification still trusts."""
    out: list[bytes] = []
    for part in filter(None, (p.strip() for p in settings.audit_trusted_public_keys.split(","))):
        raw = base64.b64decode(part)
        public_key_from_raw(raw)
        out.append(raw)
    return out


def load_phi_keys(settings: AuditSettings) -> PhiKeyRing:
    if settings.phi_keys is not None:
        if settings.phi_search_key is None:
            raise AuditKeyError("ECGBRIDGE_PHI_KEYS needs ECGBRIDGE_PHI_SEARCH_KEY too")
        return PhiKeyRing.parse(
            settings.phi_keys.get_secret_value(), settings.phi_search_key.get_secret_value()
        )
    path = settings.phi_key_file or settings.data_dir / "keys" / "phi-keys.json"
    if path.exists():
        return PhiKeyRing.load(path)
    if not settings.development:
        raise AuditKeyError(
            f"no PHI keys: set ECGBRIDGE_PHI_KEYS and ECGBRIDGE_PHI_SEARCH_KEY, or "
            f"ECGBRIDGE_PHI_KEY_FILE (missing: {path})"
        )
    ring = PhiKeyRing.generate()
    try:
        ring.save(path)
    except FileExistsError:  # another process generated it first: use theirs
        return PhiKeyRing.load(path)
    log.warning("generated development PHI keys at %s", path)
    return ring
