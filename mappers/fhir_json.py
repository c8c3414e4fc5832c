"""FHIR R4 (4.0.1) JSON in and out through `fhir.resources.R4B` models.

`resource_json` is the one serializer for built resources; `parse_json_object` and
`validate_resource` turn inbound JSON and pydantic validation errors into `FhirResourceError`
with a FHIRPath-like location (``Observation.component[2].valueSampledData.period``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError

from mappers.errors import FhirResourceError

R = TypeVar("R", bound=Resource)
V = TypeVar("V")

UCUM = "http://unitsofmeasure.org"
MDC_SYSTEM = "urn:oid:2.16.840.1.113883.6.24"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"

_FIELD_ALIASES = {"resource_type": "resourceType"}


def resource_json(model: Resource) -> dict[str, Any]:
    """A fhir.resources model as FHIR JSON (aliases such as ``class``, no nulls)."""
    data: dict[str, Any] = json.loads(model.model_dump_json())
    return data


def parse_json_object(obj: Mapping[str, Any] | bytes | str, *, root: str) -> dict[str, Any]:
    """JSON text or a mapping -> a dict whose resourceType is `root` (else `FhirResourceError`)."""
    if isinstance(obj, bytes | bytearray | str):
        try:
            data = json.loads(obj)
        except (ValueError, RecursionError):
            raise FhirResourceError("body is not valid JSON", location=root) from None
    else:
        data = obj
    if not isinstance(data, Mapping):
        raise FhirResourceError(f"expected a JSON object holding a {root}", location=root)
    if data.get("resourceType") != root:
        found = str(data.get("resourceType"))[:40]
        raise FhirResourceError(
            f"resourceType is {found!r}, expected {root!r}", location=f"{root}.resourceType"
        )
    return dict(data)


def bundle_references(entries: Sequence[Any]) -> dict[str, int]:
    """Each way a Bundle entry's resource can be referenced (its ``fullUrl``, and
    ``<resourceType>/<id>``) -> the entry's index."""
    keys: dict[str, int] = {}
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        if isinstance(entry.get("fullUrl"), str):
            keys[entry["fullUrl"]] = i
        if isinstance(resource.get("id"), str):
            keys[f"{resource.get('resourceType')}/{resource['id']}"] = i
    return keys


def resolve_reference(reference: str, table: Mapping[str, V]) -> V | None:
    """What `reference` names in `table` (keyed as `bundle_references` keys): the exact key,
    else an absolute fullUrl matching a relative ``Type/id`` or the other way round."""
    if reference in table:
        return table[reference]
    for key, value in table.items():
        if key.endswith("/" + reference) or reference.endswith("/" + key):
            return value
    return None


def fhir_path(path: str, loc: tuple[int | str, ...]) -> str:
    """Append a pydantic error location to a FHIRPath-like `path`."""
    out = path
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += "." + _FIELD_ALIASES.get(part, part)
    return out


def validate_resource(model: type[R], data: Mapping[str, Any], *, path: str) -> R:
    """`model.model_validate(data)`, with pydantic errors turned into `FhirResourceError`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid"}
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise FhirResourceError(
            f"invalid FHIR R4 {model.__name__}: {first['msg']}{more}",
            location=fhir_path(path, tuple(first["loc"])),
        ) from None
