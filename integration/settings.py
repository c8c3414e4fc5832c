"""Settings: one pydantic-settings class, read from ECGBRIDGE_* environment variables and an
optional config file (``ECGBRIDGE_CONFIG_FILE``, a .env-style file). Built by `get_settings()`,
never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

WritebackMode = Literal["put", "transaction", "hl7v2", "ndjson"]
DeviceSetting = Literal["auto", "cpu", "cuda"]
DEVICE_SETTINGS: tuple[DeviceSetting, ...] = ("auto", "cpu", "cuda")
WRITEBACK_MODES: tuple[WritebackMode, ...] = ("put", "transaction", "hl7v2", "ndjson")


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
    #: FHIR Subscriptions (R4 backport, rest-hook): the SubscriptionTopic canonical URLs whose
    #: notifications ``POST /fhir/subscription-notification`` accepts, comma-separated.
    #: Empty: every notification is refused (422, unknown topic).
    subscription_topics: str = ""
    #: The EHR FHIR base the notified Observations (and their Patients) are read from; only
    #: references within it are fetched. Unset: ``fhir_base_url``.
    ehr_fhir_base_url: str | None = None
    data_dir: Path = Path("./var")
    out_dir: Path = Path("./var/out")
    #: Inference device: ``auto`` (``cuda`` when torch sees a CUDA device, else ``cpu``),
    #: ``cpu`` or ``cuda`` (the worker refuses to start when there is none).
    device: DeviceSetting = "auto"
    #: Dynamic batching in the worker (`inference.batching`): at most this many ECGs per
    #: model call. Unset: 32 on cuda, 1 (no batching) on cpu. Above 1, or on cuda, the
    #: worker runs a thread pool of this many task threads sharing one model.
    batch_max: int | None = Field(default=None, ge=1, le=1024)
    #: How long the first ECG of a batch waits for others (ms). Unset: 10 on cuda, 0 on cpu.
    batch_wait_ms: float | None = Field(default=None, ge=0, le=1000)
    #: Prefork worker processes (cpu without batching; see ``batch_max`` otherwise).
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
    #: Where reports go (`integration.writeback`): ``put`` (a PUT per resource to
    #: ``fhir_base_url``), ``transaction`` (one transaction Bundle to it), ``hl7v2`` (an
    #: ORU^R01 result message over MLLP to ``v2_result_host``), ``ndjson`` (files in
    #: ``out_dir``). Unset: ``put`` with a FHIR base URL, else ``ndjson``.
    writeback_mode: WritebackMode | None = None
    #: The model card written (once per model version, as a DocumentReference beside the
    #: model's Device) by the FHIR and ndjson modes. Unset: MODEL_CARD.md next to the
    #: packages, else only its published url (`integration.writeback.load_model_card`).
    model_card_path: Path | None = None
    #: The EHR's (or interface engine's) MLLP listener for ``hl7v2`` write-back.
    v2_result_host: str | None = None
    v2_result_port: int = Field(default=2575, ge=1, le=65535)
    #: Seconds to wait for the connection and for each ACK.
    v2_result_timeout_s: float = Field(default=10.0, gt=0)
    #: TLS to the result listener: CA bundle (PEM) that signs its certificate. Unset: plain TCP.
    v2_result_tls_ca: Path | None = None
    #: Client certificate chain and key (PEM), for listeners that require mTLS.
    v2_result_tls_cert: Path | None = None
    v2_result_tls_key: Path | None = None
    #: MSH-5 / MSH-6 of the result messages (how the interface engine routes them).
    v2_result_receiving_application: str = ""
    v2_result_receiving_facility: str = ""
    #: Enhanced-mode application ACKs (MSH-16 AL/ER/SU, `integration.app_ack`): where each
    #: sender listens for them, ``SENDER=host:port`` comma-separated, SENDER being
    #: MSH-3^MSH-4 (namespace ids, e.g. ``ECGCART^WARD``) or ``*`` for any other sender.
    #: A sender without one: its application ACKs are skipped (logged once, audited).
    app_ack_endpoints: str = ""
    #: Seconds to wait for the connection and for each ACK of an application ACK.
    app_ack_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("app_ack_endpoints")
    @classmethod
    def _endpoints_parse(cls, value: str) -> str:
        if value.strip():
            from integration.app_ack import parse_endpoints

            parse_endpoints(value)  # ValueError naming the bad entry
        return value

    @field_validator("device", mode="before")
    @classmethod
    def _known_device(cls, value: object) -> object:
        if value is None or value == "":
            return "auto"
        device = str(value).strip().lower()
        if device not in DEVICE_SETTINGS:
            raise ValueError(
                f"ECGBRIDGE_DEVICE={value!r} is not a device; "
                f"use one of {', '.join(DEVICE_SETTINGS)}"
            )
        return device

    @field_validator("writeback_mode", mode="before")
    @classmethod
    def _known_mode(cls, value: object) -> object:
        if value is None or value == "":
            return None
        mode = str(value).strip().lower()
        if mode not in WRITEBACK_MODES:
            raise ValueError(
                f"ECGBRIDGE_WRITEBACK_MODE={value!r} is not a write-back mode; "
                f"use one of {', '.join(WRITEBACK_MODES)}"
            )
        return mode

    @model_validator(mode="after")
    def _writeback_target(self) -> Self:
        mode = self.effective_writeback_mode
        if mode in ("put", "transaction") and not self.fhir_base_url:
            raise ValueError(
                f"ECGBRIDGE_WRITEBACK_MODE={mode} needs ECGBRIDGE_FHIR_BASE_URL "
                "(the EHR's FHIR base)"
            )
        if mode == "hl7v2" and not self.v2_result_host:
            raise ValueError(
                "ECGBRIDGE_WRITEBACK_MODE=hl7v2 needs ECGBRIDGE_V2_RESULT_HOST "
                "(and ECGBRIDGE_V2_RESULT_PORT, default 2575)"
            )
        if (self.v2_result_tls_cert is None) != (self.v2_result_tls_key is None):
            raise ValueError(
                "set both ECGBRIDGE_V2_RESULT_TLS_CERT and ECGBRIDGE_V2_RESULT_TLS_KEY, or neither"
            )
        return self

    @property
    def effective_writeback_mode(self) -> WritebackMode:
        """``writeback_mode``, or ``put`` with a FHIR base URL, else ``ndjson``."""
        if self.writeback_mode is not None:
            return self.writeback_mode
        return "put" if self.fhir_base_url else "ndjson"

    @property
    def effective_database_url(self) -> str:
        """The inbox database: ``database_url`` or a SQLite file under ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ecgbridge.sqlite3').resolve()}"

    @property
    def accepted_topics(self) -> frozenset[str]:
        """``subscription_topics`` as a set of canonical URLs."""
        return frozenset(t.strip() for t in self.subscription_topics.split(",") if t.strip())

    @property
    def effective_ehr_base_url(self) -> str | None:
        """Where notified resources are read from: ``ehr_fhir_base_url`` or ``fhir_base_url``."""
        return self.ehr_fhir_base_url or self.fhir_base_url

    def inference_device(self) -> str:
        """``device`` resolved: ``cuda`` or ``cpu`` (imports torch). Raises
        `DeviceUnavailableError` naming ECGBRIDGE_DEVICE when ``cuda`` is set without a CUDA
        device."""
        from inference.analyzer import resolve_device
        from inference.errors import DeviceUnavailableError

        try:
            return resolve_device(self.device)
        except DeviceUnavailableError as exc:
            raise DeviceUnavailableError(
                f"ECGBRIDGE_DEVICE={self.device}: {exc}; set ECGBRIDGE_DEVICE=auto or cpu "
                "on a machine without a GPU"
            ) from exc

    def effective_batch_max(self, device: str) -> int:
        """``batch_max``, or 32 on cuda and 1 on cpu (`device` as `inference_device` gives)."""
        if self.batch_max is not None:
            return self.batch_max
        return 32 if device.startswith("cuda") else 1

    def effective_batch_wait_ms(self, device: str) -> float:
        """``batch_wait_ms``, or 10 ms on cuda and 0 on cpu."""
        if self.batch_wait_ms is not None:
            return self.batch_wait_ms
        return 10.0 if device.startswith("cuda") else 0.0

    def worker_pool(
        self, device: str, *, queues: str = "all"
    ) -> tuple[Literal["prefork", "threads"], int]:
        """The Celery pool and its concurrency on `device`: with batching (or on cuda, where
        forking after CUDA starts is unsafe) a thread pool of ``effective_batch_max`` task
        threads sharing one model; otherwise ``worker_concurrency`` prefork processes. An
        explanation-only worker (``queues="explain"``) batches nothing: ``worker_concurrency``
        threads on cuda, processes on cpu."""
        cuda = device.startswith("cuda")
        if queues == "explain":
            return ("threads" if cuda else "prefork"), self.worker_concurrency
        batch_max = self.effective_batch_max(device)
        if batch_max > 1 or cuda:
            return "threads", batch_max
        return "prefork", self.worker_concurrency

    @property
    def broker_dir(self) -> Path:
        """Folder of the embedded (kombu filesystem) broker, used when no broker_url is set."""
        return self.data_dir / "broker"


def get_settings() -> Settings:
    """Build settings from the environment (and ``ECGBRIDGE_CONFIG_FILE`` if set)."""
    env_file = os.environ.get("ECGBRIDGE_CONFIG_FILE")
    return Settings(_env_file=env_file)
