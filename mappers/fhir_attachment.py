"""An ECG Observation whose waveform travels outside its SampledData components.

Large ECGs are often moved out of the Observation: the samples sit in an attachment in a
format an ECG management system exports, and the Observation points at it. Read here, pure
(no I/O: anything the message does not carry is a clear error, never a fetch):

* R5 ``Observation.valueAttachment`` (inline ``data``, or a ``url`` to a Binary);
* ``Observation.derivedFrom`` -> a ``Binary``, a ``DocumentReference`` (``content[0].
  attachment``) or an R4 ``Media`` (``content``), found in the same Bundle (by ``fullUrl``
  or ``Type/id``) or in ``Observation.contained`` (``#id``); an attachment's ``url`` to a
  Binary is followed the same way.

The attachment's bytes (base64 ``data``) are recognised by content, as `ecgbridge analyze`
does with files: DICOM 12-lead ECG Waveform Storage (``DICM`` at byte 128), HL7 aECG XML
(``<``) or an HL7 v2 ORU^R01 waveform message (``MSH``). `contentType` is reported in errors,
not trusted. The Observation keeps its authority over identity, subject and time; the
attachment's own demographics fill in only what the FHIR Patient does not say.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from inference.record import EcgRecord
from mappers.aecg_in import record_from_aecg
from mappers.dicom_ecg import record_from_dicom
from mappers.errors import DataTypeError, FhirResourceError, MappingError, MissingFieldError
from mappers.fhir_json import bundle_references, resolve_reference
from mappers.hl7v2 import parse_oru_r01

#: Largest attachment decoded (bytes after base64): a 12-lead 10 s ECG in any of the formats
#: is well under 5 MB; 64 MB leaves room for long recordings and refuses runaway payloads.
MAX_ATTACHMENT_BYTES = 64 * 2**20

#: Resource types `derivedFrom` may name for the waveform.
SOURCE_TYPES = ("Binary", "DocumentReference", "Media")

Resources = Mapping[str, Mapping[str, Any]]


def contained_resources(obs: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``#id`` -> resource for the Observation's contained resources."""
    out: dict[str, Mapping[str, Any]] = {}
    for res in obs.get("contained") or []:
        if isinstance(res, Mapping) and isinstance(res.get("id"), str):
            out[f"#{res['id']}"] = res
    return out


def has_sampled_components(obs: Mapping[str, Any]) -> bool:
    """True when some component carries valueSampledData (the usual, inline form)."""
    return any(
        isinstance(comp, Mapping) and "valueSampledData" in comp
        for comp in obs.get("component") or []
    )


def waveform_source(
    obs: Mapping[str, Any], resources: Resources, *, path: str
) -> tuple[bytes, str, str] | None:
    """``(content, contentType, location)`` of the attachment holding `obs`'s waveform, or None
    when the Observation points at none. `resources` maps references (``fullUrl``,
    ``Binary/1``, ``#b1``) to the resources the message carries."""
    value = obs.get("valueAttachment")
    if value is not None:
        return _attachment(value, resources, location=f"{path}.valueAttachment")
    for i, ref in enumerate(obs.get("derivedFrom") or []):
        reference = ref.get("reference") if isinstance(ref, Mapping) else None
        loc = f"{path}.derivedFrom[{i}]"
        if not isinstance(reference, str) or not _names_source(reference, resources):
            continue
        target = resolve_reference(reference, resources)
        if target is None:
            raise MissingFieldError(
                f"the waveform is in {reference[:80]!r}, which is neither in this Bundle nor "
                "contained: send it with the Observation",
                location=f"{loc}.reference",
            )
        return _from_resource(target, resources, location=loc)
    return None


def waveform_entries(obs: Mapping[str, Any], entries: Sequence[Any]) -> list[int]:
    """Indexes of the Bundle `entries` that `obs`'s waveform may be in: the Binary,
    DocumentReference or Media its ``derivedFrom`` or ``valueAttachment.url`` names, and the
    Binary an attachment of those names by url. What ingest stores with the ECG: only what
    this Observation needs, so its stored form does not depend on the rest of the Bundle."""
    keys = {
        key: i
        for key, i in bundle_references(entries).items()
        if entries[i]["resource"].get("resourceType") in SOURCE_TYPES
    }
    todo = [r.get("reference") for r in obs.get("derivedFrom") or [] if isinstance(r, Mapping)]
    value = obs.get("valueAttachment")
    todo.append(value.get("url") if isinstance(value, Mapping) else None)
    found: list[int] = []
    while todo:
        ref = todo.pop()
        index = resolve_reference(ref, keys) if isinstance(ref, str) else None
        if index is None or index in found:
            continue
        found.append(index)
        for att in _attachments_of(entries[index]["resource"]):
            todo.append(att.get("url"))
    return sorted(found)


def _attachments_of(res: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = res.get("content")
    if res.get("resourceType") == "Media" and isinstance(content, Mapping):
        return [content]
    if res.get("resourceType") == "DocumentReference" and isinstance(content, list):
        return [
            c["attachment"]
            for c in content
            if isinstance(c, Mapping) and isinstance(c.get("attachment"), Mapping)
        ]
    return []


def record_from_attachment(content: bytes, content_type: str, *, location: str) -> EcgRecord:
    """The ECG in an attachment's bytes, recognised by content. Errors keep the reader's own
    location after the attachment's (``...derivedFrom[0] > AnnotatedECG.component...``)."""
    head = content.lstrip()[:3]
    try:
        if content[128:132] == b"DICM":
            return record_from_dicom(content)
        if head.startswith(b"<"):
            return record_from_aecg(content)
        if head == b"MSH":
            return parse_oru_r01(content)[1]
    except MappingError as exc:
        inner = exc.location or "content"
        raise type(exc)(exc.args[0], location=f"{location} > {inner}") from exc
    raise DataTypeError(
        f"attachment ({content_type or 'no contentType'}) is not a DICOM ECG, an HL7 aECG XML "
        "document or an HL7 v2 ORU^R01 message",
        location=location,
    )


def _names_source(reference: str, resources: Resources) -> bool:
    target = resolve_reference(reference, resources)
    if target is not None:
        return target.get("resourceType") in SOURCE_TYPES
    kind = reference.rstrip("/").split("/")[-2] if "/" in reference else ""
    return kind in SOURCE_TYPES


def _from_resource(
    res: Mapping[str, Any], resources: Resources, *, location: str
) -> tuple[bytes, str, str]:
    kind = res.get("resourceType")
    if kind == "Binary":
        return _attachment(res, resources, location=f"{location} > Binary", follow=False)
    if kind == "DocumentReference":
        content = res.get("content")
        first = content[0] if isinstance(content, list) and content else None
        attachment = first.get("attachment") if isinstance(first, Mapping) else None
        return _attachment(
            attachment, resources, location=f"{location} > DocumentReference.content[0].attachment"
        )
    if kind == "Media":
        return _attachment(res.get("content"), resources, location=f"{location} > Media.content")
    raise FhirResourceError(
        f"derivedFrom names a {str(kind)[:30]}, not one of {', '.join(SOURCE_TYPES)}",
        location=location,
    )


def _attachment(
    att: Any, resources: Resources, *, location: str, follow: bool = True
) -> tuple[bytes, str, str]:
    if not isinstance(att, Mapping):
        raise MissingFieldError("no attachment", location=location)
    content_type = str(att.get("contentType") or "")
    data = att.get("data")
    if data is None and follow and isinstance(att.get("url"), str):
        url: str = att["url"]
        target = resolve_reference(url, resources)
        if target is None or target.get("resourceType") != "Binary":
            raise MissingFieldError(
                f"the waveform is at {url[:80]!r}, which is not a Binary in this Bundle or "
                "contained: send it with the Observation",
                location=f"{location}.url",
            )
        return _attachment(target, resources, location=f"{location}.url > Binary", follow=False)
    if not isinstance(data, str) or not data.strip():
        raise MissingFieldError("the attachment carries no data", location=f"{location}.data")
    if len(data) > MAX_ATTACHMENT_BYTES * 4 // 3 + 4:
        raise DataTypeError(
            f"attachment over {MAX_ATTACHMENT_BYTES // 2**20} MB", location=f"{location}.data"
        )
    try:
        content = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise DataTypeError("data is not base64", location=f"{location}.data") from None
    return content, content_type, f"{location}.data"
