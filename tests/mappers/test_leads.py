"""Lead names and MDC codes (ISO/IEEE 11073-10101)."""

from __future__ import annotations

import numpy as np
import pytest

from inference.record import LEADS_12
from mappers.errors import LeadError
from mappers.leads import MDC_CODES, canonical_lead, derive_limb_leads, is_standard_lead


@pytest.mark.parametrize(
    ("name", "lead"),
    [
        ("I", "I"),
        ("i", "I"),
        ("LEAD_I", "I"),
        ("Lead II", "II"),
        ("MDC_ECG_LEAD_I", "I"),
        ("MDC_ECG_ELEC_POTL_I", "I"),
        ("MDC_ECG_LEAD_AVR", "aVR"),
        ("AVR", "aVR"),
        ("avl", "aVL"),
        ("aVF", "aVF"),
        ("v1", "V1"),
        ("V6", "V6"),
        ("131329", "I"),
        ("131330", "II"),
        ("131389", "III"),
        ("131390", "aVR"),
        ("131391", "aVL"),
        ("131392", "aVF"),
        ("131331", "V1"),
        ("131336", "V6"),
        ("131073", "I"),  # MDC_ECG_LEAD_I
        ("131133", "III"),  # MDC_ECG_LEAD_III
        ("LP7386-8", "I"),  # LOINC lead parts
        ("LP7388-4", "III"),
        ("lp7385-0", "aVR"),
        ("LP7394-2", "V6"),
        ("272729005", "I"),  # SNOMED CT
        ("257472005", "aVF"),
        ("257480003", "V6"),
    ],
)
def test_canonical_lead_accepts_usual_spellings(name: str, lead: str) -> None:
    assert canonical_lead(name) == lead


@pytest.mark.parametrize(
    "name", ["MLII", "vx", "V7", "", "131328", "999999999", "Lead", "LP7395-9", "272729006"]
)
def test_canonical_lead_rejects_others(name: str) -> None:
    with pytest.raises(LeadError):
        canonical_lead(name)
    assert not is_standard_lead(name)


def test_mdc_codes_match_the_fhir_core_ecg_example() -> None:
    assert set(MDC_CODES) == set(LEADS_12)
    assert MDC_CODES["I"] == 131329
    assert MDC_CODES["II"] == 131330
    assert MDC_CODES["III"] == 131389
    assert [MDC_CODES[f"V{i}"] for i in range(1, 7)] == list(range(131331, 131337))
    assert (MDC_CODES["aVR"], MDC_CODES["aVL"], MDC_CODES["aVF"]) == (131390, 131391, 131392)
    assert all(canonical_lead(str(code)) == lead for lead, code in MDC_CODES.items())


def test_derive_limb_leads_follows_einthoven_and_goldberger() -> None:
    rng = np.random.default_rng(0)
    lead_i = rng.normal(size=50).astype(np.float32)
    lead_ii = rng.normal(size=50).astype(np.float32)
    out = derive_limb_leads({"I": lead_i, "II": lead_ii})
    np.testing.assert_allclose(out["III"], lead_ii - lead_i, atol=1e-6)
    np.testing.assert_allclose(out["aVR"] + out["aVL"] + out["aVF"], 0.0, atol=1e-5)
    with pytest.raises(LeadError):
        derive_limb_leads({"I": lead_i})
