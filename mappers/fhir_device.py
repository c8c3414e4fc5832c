"""The AI model as FHIR R4 (4.0.1) resources, after HL7 "AI Transparency on FHIR" (STU 1):
a Device for the model and a DocumentReference holding its model card (R4B models).

* Device (profile ``ecgbridge-ai-device``): id ``ecgbridge-model-<sha256(version)[:24]>``
  (deterministic, one per model version, so every writer PUTs the same resource);
  ``identifier`` ``urn:ecgbridge:model|<version>`` (no UDI: the model is software without a
  UDI carrier); ``deviceName`` (type ``model-name``); ``version[]`` the model version;
  ``manufacturer`` ``ecgbridge``; ``type`` AIdeviceTypeCS ``Artificial-Intelligence``; the
  AIAST security label; a ``note`` saying what it is for. The model card is linked the IG's
  way, by its extension ``aitransparency.modelCardDescription`` (valueReference to the
  DocumentReference) - R4 ``Device.url`` is a network address, not documentation.
* DocumentReference (profile ``ecgbridge-model-card``): id ``ecgbridge-model-card-<same
  hash>``; ``type`` AIinputsCS ``AIModelCard``, ``category`` ``AIModelCardMarkdownFormat``;
  ``status`` current; one attachment ``text/markdown`` with the MODEL_CARD.md bytes inline
  (``data``, ``size``, and ``hash`` = base64 SHA-1 of the data, as R4 Attachment.hash
  defines it), or, when the card's text is not at hand, its ``url`` only.

Provenance (`mappers.fhir_report`) names the Device as its author agent and the model card as
a ``derivation`` entity (the IG's choice for model cards in R4). Pure: no file is read here.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources.R4B.device import Device
from fhir.resources.R4B.documentreference import DocumentReference

from mappers.fhir_json import validate_resource
from mappers.profiles import AI_DEVICE_PROFILE, MODEL_CARD_PROFILE

MODEL_SYSTEM: Final[str] = "urn:ecgbridge:model"
MODEL_CARD_SYSTEM: Final[str] = "urn:ecgbridge:model-card"
MANUFACTURER: Final[str] = "ecgbridge"
DEVICE_NAME: Final[str] = "ecgbridge ECG triage model"
_AIT: Final[str] = "http://hl7.org/fhir/uv/aitransparency"
#: AI Transparency on FHIR: Device extension referencing the model-card DocumentReference.
MODEL_CARD_EXTENSION: Final[str] = f"{_AIT}/StructureDefinition/aitransparency.modelCardDescription"
AI_DEVICE_TYPE: Final[dict[str, str]] = {
    "system": f"{_AIT}/CodeSystem/AIdeviceTypeCS",
    "code": "Artificial-Intelligence",
    "display": "All kinds of Artificial Intelligence",
}
#: AI Transparency on FHIR 1.0.0: model-card type and format codes (terminology.hl7.org).
AI_INPUTS_SYSTEM: Final[str] = "http://terminology.hl7.org/CodeSystem/AIinputsCS"
AIAST: Final[dict[str, str]] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}


@dataclass(frozen=True, slots=True)
class ModelCard:
    """The model card's text (markdown, UTF-8) and/or where it is published."""

    markdown: bytes = b""
    url: str | None = None
    title: str = "MODEL_CARD.md"

    def __post_init__(self) -> None:
        if not self.markdown and not self.url:
            raise ValueError("a model card needs its markdown text or a url")


@dataclass(frozen=True, slots=True)
class ModelResources:
    """The Device of one model version and its model-card DocumentReference."""

    device: Device
    model_card: DocumentReference


def _key(model_version: str) -> str:
    if not model_version:
        raise ValueError("the model version is empty")
    return hashlib.sha256(model_version.encode()).hexdigest()[:24]


def model_device_id(model_version: str) -> str:
    """The Device id of a model version (deterministic, a valid FHIR id)."""
    return f"ecgbridge-model-{_key(model_version)}"


def model_card_id(model_version: str) -> str:
    """The model-card DocumentReference id of a model version."""
    return f"ecgbridge-model-card-{_key(model_version)}"


def model_reference(model_version: str) -> dict[str, Any]:
    """``Reference(Device)`` to the model, with its identifier and name."""
    return {
        "reference": f"Device/{model_device_id(model_version)}",
        "identifier": {"system": MODEL_SYSTEM, "value": model_version},
        "display": f"ecgbridge model {model_version}",
    }


def model_device(model_version: str) -> Device:
    """The Device standing for the model that made a report."""
    data: dict[str, Any] = {
        "resourceType": "Device",
        "id": model_device_id(model_version),
        "meta": {"profile": [AI_DEVICE_PROFILE], "security": [AIAST]},
        "extension": [
            {
                "url": MODEL_CARD_EXTENSION,
                "valueReference": {
                    "reference": f"DocumentReference/{model_card_id(model_version)}",
                    "display": "model card",
                },
            }
        ],
        "identifier": [{"system": MODEL_SYSTEM, "value": model_version}],
        "status": "active",
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": DEVICE_NAME, "type": "model-name"}],
        "type": {"coding": [AI_DEVICE_TYPE], "text": "AI ECG decision-support model"},
        "version": [{"value": model_version}],
        "note": [
            {
                "text": "AI decision support for resting 12-lead ECGs: acute MI / occlusion "
                "triage and culprit territory, with uncertainty, fairness check and "
                "explanations. Not a diagnosis. See the model card."
            }
        ],
    }
    return validate_resource(Device, data, path="Device")


def _attachment(card: ModelCard) -> dict[str, Any]:
    attachment: dict[str, Any] = {"contentType": "text/markdown", "title": card.title}
    if card.markdown:
        attachment["data"] = base64.b64encode(card.markdown).decode("ascii")
        attachment["size"] = len(card.markdown)
        sha1 = hashlib.sha1(card.markdown, usedforsecurity=False).digest()
        attachment["hash"] = base64.b64encode(sha1).decode("ascii")
    if card.url:
        attachment["url"] = card.url
    return attachment


def model_card_document(model_version: str, card: ModelCard) -> DocumentReference:
    """The model card of a model version as a DocumentReference (no date: the same card gives
    the same resource, so writing it again changes nothing)."""
    data: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": model_card_id(model_version),
        "meta": {"profile": [MODEL_CARD_PROFILE]},
        "identifier": [{"system": MODEL_CARD_SYSTEM, "value": model_version}],
        "status": "current",
        "type": {
            "coding": [
                {"system": AI_INPUTS_SYSTEM, "code": "AIModelCard", "display": "AI Model-Card"}
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": AI_INPUTS_SYSTEM,
                        "code": "AIModelCardMarkdownFormat",
                        "display": "Markdown Format",
                    }
                ]
            }
        ],
        "description": f"Model card of {DEVICE_NAME} {model_version}",
        "content": [{"attachment": _attachment(card)}],
    }
    return validate_resource(DocumentReference, data, path="DocumentReference")


def model_resources(model_version: str, card: ModelCard) -> ModelResources:
    """The Device and model-card DocumentReference of one model version."""
    return ModelResources(
        device=model_device(model_version), model_card=model_card_document(model_version, card)
    )
