"""The root of ecgbridge's exception tree.

Every error the product raises on purpose derives from `EcgBridgeError`; leaves also derive
from the matching builtin (`ValueError`, `OSError`, ...) and say in their docstring what the
outside world gets for them. `mappers.errors` and `integration.errors` extend this tree.
"""


class EcgBridgeError(Exception):
    """Base of every deliberate ecgbridge error."""


class EcgValidationError(EcgBridgeError, ValueError):
    """An ECG record violates the domain invariants (shape, units, finite values).

    Raised when an `EcgRecord` is built. The listeners turn it into an HL7 AE with an ERR
    segment, a FHIR 422 OperationOutcome, or a CLI error (exit code 2). `field` names the
    offending attribute, e.g. ``"signals_mv"`` or ``"fs_hz"``.
    """

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class ModelError(EcgBridgeError, RuntimeError):
    """The model registry or weights are unusable (missing file, hash mismatch)."""


class DeviceUnavailableError(EcgBridgeError, RuntimeError):
    """The configured inference device cannot be used (``cuda`` without a CUDA device, or an
    unknown device name). The worker refuses to start and says which setting to change."""
