"""Configuration events: config.changed names what changed (never a value, secrets only as
changed), config.loaded carries the fingerprint only. Unit tests on the in-memory log and
the real stores; `test_serve_start_records_config_events` starts `ecgbridge serve` itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from integration.alerts import AlertSettings
from integration.audit import AuditLog, EventKind, SearchQuery
from integration.audit.config import AuditSettings
from integration.audit.config_events import (
    ConfigSnapshot,
    compare,
    record_config,
    settings_of,
    snapshot,
)
from integration.settings import Settings
from tests.support.processes import EcgbridgeServe, ecgbridge_env, free_port

WEBHOOK_SECRET = "s3cret-webhook-value-1"
DB_PASSWORD = "pg-pass-0427"


def _sources(*, window: int = 200, secret: str = WEBHOOK_SECRET) -> list[BaseSettings]:
    return [
        Settings(_env_file=None, fairness_window=window),
        AlertSettings(webhook_secret=SecretStr(secret), webhook_url="http://127.0.0.1:9/hook"),
    ]


def _keyed(text: str) -> str:
    import hashlib
    import hmac

    return hmac.new(b"k" * 32, text.encode(), hashlib.sha256).hexdigest()


def test_snapshot_names_changes_and_hides_values() -> None:
    a = snapshot(settings_of(_sources()), keyed=_keyed)
    b = snapshot(settings_of(_sources(window=300)), keyed=_keyed)
    c = snapshot(settings_of(_sources(secret="other")), keyed=_keyed)
    assert a.fingerprint == snapshot(settings_of(_sources()), keyed=_keyed).fingerprint
    assert a.fingerprint != b.fingerprint != c.fingerprint
    ab = compare(a, b)
    assert ab.changed == ("ECGBRIDGE_FAIRNESS_WINDOW",) and ab.secrets_changed == ()
    ac = compare(a, c)
    assert ac.changed == () and ac.secrets_changed == ("ECGBRIDGE_ALERT_WEBHOOK_SECRET",)
    assert "ECGBRIDGE_ALERT_WEBHOOK_SECRET" in a.secrets
    assert "ECGBRIDGE_FAIRNESS_WINDOW" not in a.secrets
    assert not compare(a, a).any
    assert ConfigSnapshot.decode(a.encoded()) == a
    assert WEBHOOK_SECRET not in a.encoded()


def test_every_digest_is_keyed_so_short_values_cannot_be_guessed() -> None:
    """A port or a host has few possible values: a plain hash would give it away."""
    import hashlib

    a = snapshot(settings_of(_sources()), keyed=_keyed)
    window = next(s for s in settings_of(_sources()) if s.name == "ECGBRIDGE_FAIRNESS_WINDOW")
    text = window.name + "\x00" + json.dumps(window.value, sort_keys=True, default=str)
    assert a.digests[window.name] != hashlib.sha256(text.encode()).hexdigest()[:16]
    other_key = snapshot(settings_of(_sources()), keyed=lambda t: _keyed("other" + t))
    assert other_key.digests[window.name] != a.digests[window.name]


def test_url_with_password_is_secret() -> None:
    url = f"postgresql://ecg:{DB_PASSWORD}@db.example/ecg"
    [s] = [
        s for s in settings_of([Settings(_env_file=None, database_url=url)]) if "DATABASE" in s.name
    ]
    assert s.secret
    snap = snapshot([s], keyed=_keyed)
    assert snap.secrets == {"ECGBRIDGE_DATABASE_URL"} and DB_PASSWORD not in snap.encoded()


def test_bad_digest_text_is_refused() -> None:
    with pytest.raises(ValueError, match="bad configuration digest entry 'NAME'"):
        ConfigSnapshot.decode("NAME")


def _config_events(log: AuditLog) -> list[tuple[str, dict[str, object]]]:
    kinds = (EventKind.CONFIG_CHANGED.value, EventKind.CONFIG_LOADED.value)
    found = log.search(SearchQuery(kinds=kinds, newest_first=False))
    return [(e.kind.value, dict(e.detail)) for e in found]


def test_record_config_changed_then_loaded(sql_log: AuditLog) -> None:
    for sources, role in (
        (_sources(), "serve"),
        (_sources(), "serve"),  # same: loaded
        (_sources(window=300, secret="rotated"), "serve"),
        (_sources(), "worker"),  # a role of its own: first recorded
        (_sources(window=300, secret="rotated"), "serve"),  # loaded again
    ):
        record_config(sql_log, role=role, sources=sources)
    events = _config_events(sql_log)
    assert [k for k, _ in events] == [
        "config.changed",
        "config.loaded",
        "config.changed",
        "config.changed",
        "config.loaded",
    ]
    first, loaded, changed, worker, again = (d for _, d in events)
    assert first["first_recorded"] is True and first["role"] == "serve"
    assert set(loaded) == {"role", "fingerprint"} and loaded["fingerprint"] == first["fingerprint"]
    assert changed["changed"] == "ECGBRIDGE_FAIRNESS_WINDOW"
    assert changed["secrets_changed"] == "ECGBRIDGE_ALERT_WEBHOOK_SECRET"
    assert changed["previous_fingerprint"] == first["fingerprint"]
    assert worker["role"] == "worker" and worker["first_recorded"] is True
    assert again["fingerprint"] == changed["fingerprint"]
    assert sql_log.verify().ok
    stored = b"".join(e for _, e, _ in sql_log.store.stream())
    for value in (WEBHOOK_SECRET.encode(), b"rotated"):
        assert value not in stored


@pytest.mark.e2e
def test_serve_start_records_config_events(tmp_path: Path) -> None:
    """Three real starts of `ecgbridge serve` on one data dir: the first records the
    configuration, the second (another fairness window and alert secret) one config.changed
    naming them, the third (same as the second) config.loaded."""
    data = tmp_path / "var"
    ports = {"mllp_port": str(free_port()), "http_port": str(free_port())}
    base = {"data_dir": str(data), "out_dir": str(data / "out"), **ports}
    envs = [
        ecgbridge_env(**base, fairness_window="200", alert_webhook_secret=WEBHOOK_SECRET),
        ecgbridge_env(**base, fairness_window="300", alert_webhook_secret="rotated-secret"),
        ecgbridge_env(**base, fairness_window="300", alert_webhook_secret="rotated-secret"),
    ]
    for i, env in enumerate(envs):
        with EcgbridgeServe(env, tmp_path / f"serve-{i}.log"):
            pass
    log = AuditLog.from_settings(AuditSettings(data_dir=data))
    try:
        events = _config_events(log)
        assert [k for k, _ in events] == ["config.changed", "config.changed", "config.loaded"]
        _, changed, loaded = (d for _, d in events)
        assert changed["changed"] == "ECGBRIDGE_FAIRNESS_WINDOW"
        assert changed["secrets_changed"] == "ECGBRIDGE_ALERT_WEBHOOK_SECRET"
        assert loaded == {"role": "serve", "fingerprint": changed["fingerprint"]}
        assert log.verify().ok
    finally:
        log.close()
    logs = "".join((tmp_path / f"serve-{i}.log").read_text() for i in range(3))
    assert "config.changed" in logs and WEBHOOK_SECRET not in logs
    assert WEBHOOK_SECRET not in json.dumps([d for _, d in events])
