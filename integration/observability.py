"""Logs and traces for one ecgbridge process, from ``ECGBRIDGE_LOG_*`` / ``ECGBRIDGE_OTEL_*``.

    ECGBRIDGE_LOG_FORMAT    json | text   default: json for `serve` and `worker` (log shippers),
                                          text for the other commands (a person at a terminal)
    ECGBRIDGE_LOG_LEVEL     DEBUG | INFO | WARNING | ERROR | CRITICAL   default INFO
    ECGBRIDGE_OTEL_EXPORTER none | console | otlp   default none (no-op tracer), or console
                                          when ECGBRIDGE_OTEL_FILE is set
    ECGBRIDGE_OTEL_FILE     path: console spans as JSON lines appended here (else stderr)

``otlp`` sends to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (OpenTelemetry's own variable, default
``http://localhost:4318``). Each process names itself ``ecgbridge-<command>`` (service.name).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Self

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from integration.logging_setup import LogFormat, configure_logging
from integration.tracing import Exporter, configure_tracing

LOG_FORMATS: tuple[LogFormat, ...] = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
EXPORTERS: tuple[Exporter, ...] = ("none", "console", "otlp")
#: Long-running services log JSON by default; the other commands talk to a person.
JSON_BY_DEFAULT = frozenset({"serve", "worker"})


class ObservabilitySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ECGBRIDGE_", extra="ignore")

    log_format: LogFormat | None = None
    log_level: str = "INFO"
    otel_exporter: Exporter | None = None
    otel_file: Path | None = None

    @field_validator("log_format", mode="before")
    @classmethod
    def _format(cls, value: object) -> object:
        if value is None or value == "":
            return None
        fmt = str(value).strip().lower()
        if fmt not in LOG_FORMATS:
            raise ValueError(
                f"ECGBRIDGE_LOG_FORMAT={value!r} is not a log format; use json or text"
            )
        return fmt

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: object) -> object:
        level = str(value).strip().upper() or "INFO"
        if level not in LOG_LEVELS:
            raise ValueError(
                f"ECGBRIDGE_LOG_LEVEL={value!r} is not a log level; use one of "
                + ", ".join(LOG_LEVELS)
            )
        return level

    @field_validator("otel_exporter", mode="before")
    @classmethod
    def _exporter(cls, value: object) -> object:
        if value is None or value == "":
            return None
        name = str(value).strip().lower()
        if name not in EXPORTERS:
            raise ValueError(
                f"ECGBRIDGE_OTEL_EXPORTER={value!r} is not a span exporter; use one of "
                + ", ".join(EXPORTERS)
            )
        return name

    @model_validator(mode="after")
    def _file_needs_console(self) -> Self:
        if self.otel_file is not None and self.otel_exporter in ("none", "otlp"):
            raise ValueError(
                f"ECGBRIDGE_OTEL_FILE is written by the console exporter only; unset it or "
                f"set ECGBRIDGE_OTEL_EXPORTER=console (it is {self.otel_exporter})"
            )
        return self

    @property
    def effective_exporter(self) -> Exporter:
        if self.otel_exporter is not None:
            return self.otel_exporter
        return "console" if self.otel_file is not None else "none"

    def format_for(self, command: str) -> LogFormat:
        if self.log_format is not None:
            return self.log_format
        return "json" if command in JSON_BY_DEFAULT else "text"


def get_observability_settings() -> ObservabilitySettings:
    env_file = os.environ.get("ECGBRIDGE_CONFIG_FILE")
    return ObservabilitySettings(_env_file=env_file)


def setup_process(command: str, *, verbose: bool = False) -> ObservabilitySettings:
    """Logs and traces for the process running `command`. Raises `ValueError` (pydantic's
    ValidationError) with the offending variable named when a setting is wrong."""
    obs = get_observability_settings()
    fmt = obs.format_for(command)
    level = "DEBUG" if verbose else obs.log_level
    configure_logging(fmt=fmt, level=level)
    if command == "worker":
        _hook_celery_logging(fmt, level)
    configure_tracing(
        exporter=obs.effective_exporter, service_name=f"ecgbridge-{command}", file=obs.otel_file
    )
    return obs


def _hook_celery_logging(fmt: LogFormat, level: str) -> None:
    """Celery configures logging itself unless a receiver answers ``setup_logging``; ours
    installs the same handler, so Celery's own lines ("ready.", task received/succeeded)
    are structured and PHI-filtered too. The original stderr: by then Celery may have
    redirected ``sys.stderr`` to a logger."""
    from celery.signals import setup_logging

    def _receiver(**_: Any) -> None:
        configure_logging(fmt=fmt, level=level, stream=sys.__stderr__)
        logging.getLogger("celery").setLevel(level)

    setup_logging.connect(_receiver, weak=False)
