"""Integration errors: I/O-side failures, each saying what the outside world gets."""

from __future__ import annotations

from inference.errors import EcgBridgeError


class FramingError(EcgBridgeError, ValueError):
    """An MLLP frame is malformed or over the size cap. The listener answers AR (or closes a
    stream it cannot resynchronise) and keeps serving other connections."""


class InboxError(EcgBridgeError, OSError):
    """The inbox could not commit (database down, disk full). HL7: AE (never AA); HTTP: 503."""


class DuplicateConflictError(EcgBridgeError, ValueError):
    """The same idempotency key (sender + MSH-10, or identifier + version) arrived with a
    different payload. HL7: AE with ERR 207; HTTP: 409 OperationOutcome."""


class WriteBackError(EcgBridgeError, OSError):
    """The EHR's FHIR server refused or failed a write. `transient` tells the worker whether
    a retry can help (5xx, timeouts) or not (4xx with an OperationOutcome)."""

    def __init__(self, message: str, *, transient: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class InputFileError(EcgBridgeError, ValueError):
    """A file given to the CLI cannot be read as an ECG. The CLI names the file and the field
    and exits with code 2."""

    def __init__(self, message: str, *, path: str, field: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.field = field

    def __str__(self) -> str:
        where = f"{self.path}: {self.field}: " if self.field else f"{self.path}: "
        return where + super().__str__()
