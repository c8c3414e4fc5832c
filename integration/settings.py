"""Settings: one pydantic-settings class, read from ECGBRIDGE_* environment variables and an
optional config file (``ECGBRIDGE_CONFIG_FILE``, a .env-style file). Built by `get_settings()`,
never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service. Embedded defaults need no server: SQLite inbox, on-disk
    Celery broker, ndjson file sink."""

    model_config = SettingsConfigDict(env_prefix="ECGBRIDGE_", extra="ignore")

    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    mllp_max_frame_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    mllp_idle_timeout_s: float = Field(default=300.0, gt=0)
    #: TLS for the MLLP listener: server certificate chain and key (PEM). Unset: plain TCP.
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    #: CA bundle (PEM) for client certificates: when set, peers must present one (mTLS).
    mllp_tls_client_ca: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    broker_url: str | None = None
    database_url: str | None = None
    fhir_base_url: str | None = None
    fhir_timeout_s: float = Field(default=10.0, gt=0)
    data_dir: Path = Path("./var")
    out_dir: Path = Path("./var/out")
    device: str | None = None
    worker_concurrency: int = Field(default=1, ge=1)
    #: Threads torch uses in each worker process. Scale out with processes (concurrency),
    #: not threads: one thread per process avoids oversubscribing the cores.
    torch_threads: int = Field(default=1, ge=1)
    #: Use the fairness model's per sex x age band MI thresholds (never above the shipped
    #: one; MODEL_CARD.md, fairness) instead of the single shipped threshold.
    fairness_group_thresholds: bool = False
    #: Explanations (attributions, counterfactual, rule, measurements) in every report; the
    #: triage report is written "preliminary" first, so the ED never waits for them.
    explain: bool = True
    #: The ECG on standard paper in DiagnosticReport.presentedForm, as PNG and/or PDF.
    report_png: bool = True
    report_pdf: bool = True
    task_max_retries: int = Field(default=8, ge=0)
    #: How often `serve` looks for accepted-but-unfinished ECGs to queue again.
    reconcile_interval_s: float = Field(default=30.0, gt=0)
    #: An unfinished ECG untouched for this long is queued again. Longer than the task's
    #: hard time limit, so a running analysis is not doubled.
    reconcile_after_s: float = Field(default=300.0, gt=0)
    #: Fairness drift window: the last this many analyses of each subgroup.
    fairness_window: int = Field(default=200, ge=1)
    #: No drift judgement on a subgroup before its window holds this many analyses.
    fairness_min_n: int = Field(default=50, ge=1)
    #: Alert when a subgroup's window positive rate is further than this from its reference.
    fairness_drift_bound: float = Field(default=0.10, gt=0, lt=1)
    #: How often `serve` reads new audit entries into the fairness monitor (seconds).
    fairness_poll_s: float = Field(default=30.0, gt=0)

    @property
    def effective_database_url(self) -> str:
        """The inbox database: ``database_url`` or a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ecgbridge.sqlite3').resolve()}"

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded (kombu filesystem) broker, used when no broker_url is set."""
        return self.data_dir / "broker"


def get_settings() -> Settings:
    """Build settings from the environment (and ``ECGBRIDGE_CONFIG_FILE`` if set)."""
    env_file = os.environ.get("ECGBRIDGE_CONFIG_FILE")
    return Settings(_env_file=env_file)
