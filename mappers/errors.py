"""Mapping errors: what was wrong with an inbound message, and where.

Each error carries `location`, a path the sender can act on: an HL7 location such as
``"OBX[3].5"`` (segment, repetition, field) or a FHIR path such as
``"Observation.component[2].valueSampledData.period"``. The listeners turn them into:

| error                | HL7 v2 (MSA-1 / ERR-3, table 0357)   | FHIR REST                        |
|----------------------|--------------------------------------|----------------------------------|
| `MessageTypeError`   | AR / 200 unsupported message type    | 422 `not-supported`              |
| `SegmentError`       | AE / 100 segment sequence error      | -                                |
| `MissingFieldError`  | AE / 101 required field missing      | 422 `required`                   |
| `WaveformError`      | AE / 102 data type error             | 422 `value`                      |
| `LeadError`          | AE / 103 table value not found       | 422 `code-invalid`               |
| `DataTypeError`      | AE / 102 data type error             | 422 `value`                      |
| `MessageSyntaxError` | AE / 100 segment sequence error      | 422 `structure`                  |
| `FhirResourceError`  | -                                    | 422 `structure` / `invalid`      |
| `VersionError`       | AR / 203 unsupported version id      | 422 `not-supported`              |
| `XmlSecurityError`   | AE / 102 (ED payload)                | 422 `security`                   |

Each defect in the issue's "bad input" list has its own leaf, a subclass of the broader
error above (so callers catching `LeadError` or `WaveformError` keep working):
`UnknownLeadError`, `DuplicateLeadError`, `MissingLeadError` (LeadError);
`LengthMismatchError`, `SamplingRateError`, `UnitError`, `NonFiniteSampleError`,
`SampleRangeError` (WaveformError); `XmlSecurityError` (DOCTYPE / entities in XML).
`error_text` renders any of them as the one line an HL7 ERR-8 or an OperationOutcome
`diagnostics` carries, naming the segment/field or the element.
"""

from __future__ import annotations

from inference.errors import EcgBridgeError


class MappingError(EcgBridgeError, ValueError):
    """An inbound message could not be mapped to an ECG record."""

    #: HL7 table 0357 message error condition code.
    hl7_code: int = 207
    #: HL7 table 0008 acknowledgment code for this error (original mode).
    ack_code: str = "AE"
    #: FHIR IssueType code for the OperationOutcome.
    fhir_issue: str = "invalid"

    def __init__(self, message: str, *, location: str = "") -> None:
        super().__init__(message)
        self.location = location

    def __str__(self) -> str:
        base = super().__str__()
        return f"{self.location}: {base}" if self.location else base


class MessageTypeError(MappingError):
    """Not an ORU^R01 (or not HL7 v2 at all). HL7: AR with ERR code 200."""

    hl7_code = 200
    ack_code = "AR"
    fhir_issue = "not-supported"


class SegmentError(MappingError):
    """A segment is missing or out of order (no MSH, no OBX). HL7: AE with ERR code 100."""

    hl7_code = 100


class MissingFieldError(MappingError):
    """A required field or element is empty. HL7: AE 101; FHIR: 422 `required`."""

    hl7_code = 101
    fhir_issue = "required"


class WaveformError(MappingError):
    """Samples are non-numeric, of disagreeing lengths, of a bad rate or non-voltage units.

    HL7: AE 102; FHIR: 422 `value`.
    """

    hl7_code = 102
    fhir_issue = "value"


class LeadError(MappingError):
    """A lead is unknown, duplicated, or one of the 12 standard leads is missing.

    HL7: AE 103; FHIR: 422 `code-invalid`.
    """

    hl7_code = 103
    fhir_issue = "code-invalid"


class FhirResourceError(MappingError):
    """A FHIR resource is not valid R4 (fhir.resources rejected it), or not an ECG.

    FHIR: 422 OperationOutcome `structure`.
    """

    fhir_issue = "structure"


class DataTypeError(MappingError):
    """A non-waveform field is not of its data type or out of range: a date/time that does
    not parse, a birth date after the recording. HL7: AE 102; FHIR: 422 `value`.
    """

    hl7_code = 102
    fhir_issue = "value"


class MessageSyntaxError(SegmentError):
    """The message breaks HL7 v2 syntax in a way no more specific error names (the parser
    met a structure it did not anticipate). HL7: AE 100; FHIR: 422 `structure`.
    """

    fhir_issue = "structure"


class VersionError(MessageTypeError):
    """MSH-12 names an HL7 version ecgbridge does not read (it reads 2.3 to 2.8.2).

    HL7: AR with ERR code 203; FHIR: not applicable.
    """

    hl7_code = 203


class UnknownLeadError(LeadError):
    """A waveform channel names a lead that is not one of the 12 standard leads (and no other
    channel supplies the missing lead). HL7: AE 103; FHIR: 422 `code-invalid`."""


class DuplicateLeadError(LeadError):
    """The same lead is sent twice. HL7: AE 103; FHIR: 422 `code-invalid`."""


class MissingLeadError(LeadError):
    """A standard lead is absent and cannot be derived. HL7: AE 103; FHIR: 422 `code-invalid`."""


class LengthMismatchError(WaveformError):
    """Leads (or multiplexed samples) have different numbers of samples. HL7: AE 102;
    FHIR: 422 `value`."""


class SamplingRateError(WaveformError):
    """The sampling rate is zero, negative, not a number, contradictory or absurd (outside
    50-20,000 Hz). HL7: AE 102; FHIR: 422 `value`."""


class UnitError(WaveformError):
    """Sample units are not a voltage (uV, mV, V). HL7: AE 102; FHIR: 422 `value`."""


class NonFiniteSampleError(WaveformError):
    """A sample is NaN, infinite or not a number. HL7: AE 102; FHIR: 422 `value`."""


class SampleRangeError(WaveformError):
    """After scaling (sensitivity, factor, units) a sample exceeds the 16-bit microvolt range
    (|v| > 32.767 mV), or a digital value is outside the declared ADC range: a misread gain.
    HL7: AE 102; FHIR: 422 `value`."""


class XmlSecurityError(MappingError):
    """XML with a DOCTYPE, entity declarations or external references (XXE, billion laughs):
    refused before any parsing. HL7: AE 102; FHIR: 422 `security`."""

    hl7_code = 102
    fhir_issue = "security"


def error_text(error: MappingError) -> str:
    """One line for HL7 ERR-8 / FHIR OperationOutcome.issue.diagnostics: the defect kind,
    where it is and what is wrong, e.g. ``"duplicate lead at OBX[5].3: lead V1 sent twice"``."""
    kind = type(error).__name__.removesuffix("Error")
    words = "".join(f" {c.lower()}" if c.isupper() else c for c in kind).strip()
    where = f" at {error.location}" if error.location else ""
    return f"{words}{where}: {Exception.__str__(error)}"
