"""The EU DSA Transparency Database statement of reasons, schema of 1 July 2025: enums and rules.

Pure. The builder (export.py) and `validate_statement` share these sets, so what we produce and
what we check cannot drift apart. Field names and enum keys are the API's own. The rules follow
the database's own request validation (repository digital-services-act/transparency-database,
app/Http/Requests/StatementStoreRequest.php; the same rules apply per statement to the batch
endpoint): `validate_statement` judges a statement as the API receives it, after its request
middleware has trimmed every string and turned empty ones into null (`as_received`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any
from urllib.parse import urlsplit

# Shared with the policy schema, which checks dsa.categories against it when a file is loaded.
from moderator.events.dsa_categories import STATEMENT_CATEGORIES as STATEMENT_CATEGORIES

SCHEMA_VERSION = "2025-07-01"
BATCH_MAX = 100  # statements per `POST /api/v1/statements`


def _keys(prefix: str, *names: str) -> frozenset[str]:
    return frozenset(prefix + name for name in names)


DECISION_VISIBILITY = _keys(
    "DECISION_VISIBILITY_",
    *("CONTENT_REMOVED", "CONTENT_DISABLED", "CONTENT_DEMOTED", "CONTENT_AGE_RESTRICTED"),
    *("CONTENT_INTERACTION_RESTRICTED", "CONTENT_LABELLED", "OTHER"),
)
DECISION_MONETARY = _keys("DECISION_MONETARY_", "SUSPENSION", "TERMINATION", "OTHER")
DECISION_PROVISION = _keys(
    "DECISION_PROVISION_",
    *("PARTIAL_SUSPENSION", "TOTAL_SUSPENSION", "PARTIAL_TERMINATION", "TOTAL_TERMINATION"),
)
DECISION_ACCOUNT = _keys("DECISION_ACCOUNT_", "SUSPENDED", "TERMINATED")
ACCOUNT_TYPES = _keys("ACCOUNT_TYPE_", "BUSINESS", "PRIVATE")
DECISION_GROUND_ILLEGAL = "DECISION_GROUND_ILLEGAL_CONTENT"
DECISION_GROUND_INCOMPATIBLE = "DECISION_GROUND_INCOMPATIBLE_CONTENT"
DECISION_GROUNDS = frozenset({DECISION_GROUND_ILLEGAL, DECISION_GROUND_INCOMPATIBLE})
CONTENT_TYPES = _keys(
    "CONTENT_TYPE_", "APP", "AUDIO", "IMAGE", "PRODUCT", "SYNTHETIC_MEDIA", "TEXT", "VIDEO", "OTHER"
)
_KEYWORD_NAMES = """ADULT_SEXUAL_MATERIAL AGE_SPECIFIC_RESTRICTIONS AGE_SPECIFIC_RESTRICTIONS_MINORS
    ANIMAL_HARM BIOMETRIC_DATA_BREACH BULLYING_AGAINST_GIRLS CHILD_SEXUAL_ABUSE_MATERIAL
    CHILD_SEXUAL_ABUSE_MATERIAL_DEEPFAKE CONTENT_PROMOTING_EATING_DISORDERS COORDINATED_HARM
    COPYRIGHT_INFRINGEMENT CYBER_BULLYING_INTIMIDATION CYBER_HARASSMENT
    CYBER_HARASSMENT_AGAINST_WOMEN CYBER_INCITEMENT CYBER_STALKING CYBER_STALKING_AGAINST_WOMEN
    DATA_FALSIFICATION DEFAMATION DESIGN_INFRINGEMENT DISCRIMINATION
    FEMALE_GENDERED_DISINFORMATION GEOGRAPHIC_INDICATIONS_INFRINGEMENT GEOGRAPHICAL_REQUIREMENTS
    GOODS_SERVICES_NOT_PERMITTED GROOMING_SEXUAL_ENTICEMENT_MINORS HATE_SPEECH
    HIDDEN_ADVERTISEMENT HUMAN_EXPLOITATION HUMAN_TRAFFICKING ILLEGAL_ORGANIZATIONS
    IMPERSONATION_ACCOUNT_HIJACKING INAUTHENTIC_ACCOUNTS INAUTHENTIC_LISTINGS
    INAUTHENTIC_USER_REVIEWS INCITEMENT_AGAINST_WOMEN INCITEMENT_VIOLENCE_HATRED
    INSUFFICIENT_INFORMATION_ON_TRADERS LANGUAGE_REQUIREMENTS MISINFORMATION_DISINFORMATION
    MISLEADING_INFO_CONSUMER_RIGHTS MISLEADING_INFO_GOODS_SERVICES MISSING_PROCESSING_GROUND
    NON_CONSENSUAL_IMAGE_SHARING NON_CONSENSUAL_IMAGE_SHARING_AGAINST_WOMEN
    NON_CONSENSUAL_MATERIAL_DEEPFAKE NON_CONSENSUAL_MATERIAL_DEEPFAKE_AGAINST_WOMEN
    NONCOMPLIANCE_PRICING NUDITY PATENT_INFRINGEMENT PHISHING PROHIBITED_PRODUCTS PYRAMID_SCHEMES
    RIGHT_TO_BE_FORGOTTEN RISK_ENVIRONMENTAL_DAMAGE RISK_PUBLIC_HEALTH SELF_MUTILATION STALKING
    SUICIDE TERRORIST_CONTENT TRADE_SECRET_INFRINGEMENT TRADEMARK_INFRINGEMENT
    TRAFFICKING_WOMEN_GIRLS UNLAWFUL_SALE_ANIMALS UNSAFE_CHALLENGES UNSAFE_PRODUCTS
    VIOLATION_EU_LAW VIOLATION_NATIONAL_LAW OTHER"""
KEYWORDS = _keys("KEYWORD_", *_KEYWORD_NAMES.split())
SOURCE_VOLUNTARY = "SOURCE_VOLUNTARY"
SOURCE_TYPES = frozenset(
    {"SOURCE_ARTICLE_16", "SOURCE_TRUSTED_FLAGGER", "SOURCE_TYPE_OTHER_NOTIFICATION"}
    | {SOURCE_VOLUNTARY}
)
AUTOMATED_DETECTION = frozenset({"Yes", "No"})  # literal strings, not KEY_ enums
AUTOMATED_DECISION = _keys("AUTOMATED_DECISION_", "FULLY", "PARTIALLY", "NOT_AUTOMATED")
EU_COUNTRIES: tuple[str, ...] = (
    *("AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU"),
    *("IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK"),
)
EEA_COUNTRIES: tuple[str, ...] = (*EU_COUNTRIES, "IS", "LI", "NO")
TERRITORIES = frozenset(EEA_COUNTRIES)
# `content_language`: the upper-case ISO 639-1 codes the database accepts, transcribed from the
# keys of ALL_LANGUAGES in app/Services/EuropeanLanguagesService.php of the repository
# digital-services-act/transparency-database: 184 codes, the two-letter codes of ISO 639-1.
# Any other value, `ZZ` or a lower-case `en` included, is refused (HTTP 422).
_LANGUAGE_CODES = """
    AA AB AE AF AK AM AN AR AS AV AY AZ BA BE BG BH BI BM BN BO BR BS CA CE CH CO CR CS CU CV
    CY DA DE DV DZ EE EL EN EO ES ET EU FA FF FI FJ FO FR FY GA GD GL GN GU GV HA HE HI HO HR HT
    HU HY HZ IA ID IE IG II IK IO IS IT IU JA JV KA KG KI KJ KK KL KM KN KO KR KS KU KV KW KY LA
    LB LG LI LN LO LT LU LV MG MH MI MK ML MN MR MS MT MY NA NB ND NE NG NL NN NO NR NV NY OC OJ
    OM OR OS PA PI PL PS PT QU RM RN RO RU RW SA SC SD SE SG SI SK SL SM SN SO SQ SR SS ST SU SV
    SW TA TE TG TH TI TK TL TN TO TR TS TT TW TY UG UK UR UZ VE VI VO WA WO XH YI YO ZA ZH ZU"""
LANGUAGES = frozenset(_LANGUAGE_CODES.split())

PUID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EAN13 = re.compile(r"^\d{13}$")
_DECISION_FIELDS = ("decision_visibility", "decision_monetary", "decision_provision",
                    "decision_account")  # fmt: skip
REQUIRED = (
    *("decision_ground", "content_type", "category", "content_date", "application_date"),
    *("decision_facts", "source_type", "automated_detection", "automated_decision", "puid"),
)
_LIMITS: dict[str, int] = {
    "decision_visibility_other": 500,
    "decision_monetary_other": 500,
    "decision_ground_reference_url": 500,
    "illegal_content_legal_ground": 500,
    "illegal_content_explanation": 2000,
    "incompatible_content_ground": 500,
    "incompatible_content_explanation": 2000,
    "content_type_other": 500,
    "category_specification_other": 500,
    "decision_facts": 5000,
    "source_identity": 500,
    "puid": 500,
}
_SINGLE_ENUMS: dict[str, frozenset[str]] = {
    "decision_monetary": DECISION_MONETARY,
    "decision_provision": DECISION_PROVISION,
    "decision_account": DECISION_ACCOUNT,
    "account_type": ACCOUNT_TYPES,
    "decision_ground": DECISION_GROUNDS,
    "category": STATEMENT_CATEGORIES,
    "source_type": SOURCE_TYPES,
    "automated_detection": AUTOMATED_DETECTION,
    "automated_decision": AUTOMATED_DECISION,
    "incompatible_content_illegal": AUTOMATED_DETECTION,  # the same Yes / No literals
}
_LIST_ENUMS: dict[str, frozenset[str]] = {
    "decision_visibility": DECISION_VISIBILITY,
    "content_type": CONTENT_TYPES,
    "category_addition": STATEMENT_CATEGORIES,
    "category_specification": KEYWORDS,
    "territorial_scope": TERRITORIES,
}
# `…_OTHER` value in a field -> the free-text field it requires.
_OTHER_TEXT = {
    ("decision_visibility", "DECISION_VISIBILITY_OTHER"): "decision_visibility_other",
    ("decision_monetary", "DECISION_MONETARY_OTHER"): "decision_monetary_other",
    ("content_type", "CONTENT_TYPE_OTHER"): "content_type_other",
    ("category_specification", "KEYWORD_OTHER"): "category_specification_other",
}
_GROUND_TEXT = {
    DECISION_GROUND_ILLEGAL: ("illegal_content_legal_ground", "illegal_content_explanation"),
    DECISION_GROUND_INCOMPATIBLE: (
        "incompatible_content_ground",
        "incompatible_content_explanation",
    ),
}
CONTENT_DATES = (date(2000, 1, 1), date(2038, 1, 1))  # both ends allowed
APPLICATION_DATES = (date(2020, 1, 1), date(2038, 1, 1))
_DATE_RANGES: dict[str, tuple[date, date]] = {
    "content_date": CONTENT_DATES,
    "application_date": APPLICATION_DATES,
}
END_DATES = (
    *("end_date_visibility_restriction", "end_date_monetary_restriction"),
    *("end_date_service_restriction", "end_date_account_restriction"),
)
KNOWN_FIELDS = frozenset(
    {*REQUIRED, *_DECISION_FIELDS, *_LIMITS, *_SINGLE_ENUMS, *_LIST_ENUMS, *END_DATES,
     "content_language", "content_id"}
)  # fmt: skip


# What the API's trimming removes from both ends of a string: white space (here Unicode white
# space, at least as much as the API's), NUL, and the byte-order and zero-width marks.
_ENDS = re.compile(r"^[\s\x00\ufeff\u200b\u200e]+|[\s\x00\ufeff\u200b\u200e]+$")


def trim(text: str) -> str:
    """`text` without the characters the API trims from both ends."""
    return _ENDS.sub("", text)


def as_received(value: Any) -> Any:
    """`value` as the API's middleware hands it to the validation: every string trimmed, then
    an empty string null, inside arrays and objects too. A blank ground text is therefore
    missing, and a required one makes the statement invalid."""
    if isinstance(value, str):
        text = trim(value)
        return text or None
    if isinstance(value, Mapping):
        return {key: as_received(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_received(item) for item in value]
    return value


def _present(s: Mapping[str, Any], name: str) -> bool:
    value = s.get(name)
    return value is not None and value != "" and value != []


def validate_statement(statement: Mapping[str, Any]) -> list[str]:
    """Every rule of the reference field table, applied to the statement as the API receives it
    (`as_received`): one `field: problem` line each; [] = valid."""
    s: Mapping[str, Any] = as_received(statement)
    problems = [f"{name}: required" for name in REQUIRED if not _present(s, name)]
    problems += [f"{name}: unknown field" for name in sorted(set(s) - KNOWN_FIELDS)]
    if not any(_present(s, name) for name in _DECISION_FIELDS):
        problems.append("decision_*: at least one of " + ", ".join(_DECISION_FIELDS) + " required")
    for name, allowed in _SINGLE_ENUMS.items():
        value = s.get(name)
        if value is not None and (not isinstance(value, str) or value not in allowed):
            problems.append(f"{name}: {value!r} is not an allowed value")
    for name, allowed in _LIST_ENUMS.items():
        problems += _check_list(name, s.get(name), allowed)
    for name, limit in _LIMITS.items():
        value = s.get(name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name}: must be a string")
        elif value is not None and len(value) > limit:
            problems.append(f"{name}: {len(value)} characters, at most {limit}")
    for (name, other), text_field in _OTHER_TEXT.items():
        value = s.get(name)
        chosen = other in value if isinstance(value, list) else value == other
        if chosen and not _present(s, text_field):
            problems.append(f"{text_field}: required when {name} is {other}")
    ground = s.get("decision_ground")
    for key, fields in _GROUND_TEXT.items():
        for name in fields:
            if ground == key and not _present(s, name):
                problems.append(f"{name}: required when decision_ground is {key}")
    if _present(s, "incompatible_content_illegal") and ground != DECISION_GROUND_INCOMPATIBLE:
        problems.append("incompatible_content_illegal: only with " + DECISION_GROUND_INCOMPATIBLE)
    if s.get("source_type") == SOURCE_VOLUNTARY and _present(s, "source_identity"):
        problems.append("source_identity: must be left out when source_type is SOURCE_VOLUNTARY")
    for name, (low, high) in _DATE_RANGES.items():
        problems += _check_date(name, s.get(name), low, high)
    for name in END_DATES:
        if s.get(name) not in (None, ""):  # blank means indefinite
            problems += _check_date(name, s.get(name), None, None)
    problems += _check_misc(s)
    return problems


def _check_list(name: str, value: Any, allowed: frozenset[str]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return [f"{name}: must be an array of strings"]
    out = [f"{name}: {v!r} is not an allowed value" for v in value if v not in allowed]
    if len(set(value)) != len(value):
        out.append(f"{name}: repeated values")
    return out


def _check_date(name: str, value: Any, low: date | None, high: date | None) -> list[str]:
    if value is None:
        return []  # a missing required date is reported once, as required
    if not isinstance(value, str) or not _DATE.match(value):
        return [f"{name}: {value!r} is not a YYYY-MM-DD date"]
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return [f"{name}: {value!r} is not a calendar date"]
    if (low is not None and day < low) or (high is not None and day > high):
        return [f"{name}: {value} is outside {low} .. {high}"]
    return []


def _check_misc(s: Mapping[str, Any]) -> list[str]:
    problems = []
    puid = s.get("puid")
    if isinstance(puid, str) and puid and not PUID_PATTERN.match(puid):
        problems.append("puid: only the characters a-z, A-Z, 0-9, '-' and '_' are allowed")
    language = s.get("content_language")
    if language is not None and (not isinstance(language, str) or language not in LANGUAGES):
        problems.append(
            f"content_language: {language!r} is not one of the upper-case ISO 639-1 codes the "
            "database accepts (e.g. EN, DE, FR)"
        )
    url = s.get("decision_ground_reference_url")
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"decision_ground_reference_url: {url!r} is not an http(s) URL")
    content_id = s.get("content_id")
    if content_id is not None:
        if not isinstance(content_id, Mapping) or set(content_id) != {"EAN-13"}:
            problems.append("content_id: an object whose only key is 'EAN-13'")
        elif not isinstance(content_id["EAN-13"], str) or not _EAN13.match(content_id["EAN-13"]):
            problems.append("content_id: EAN-13 must be 13 digits")
    return problems
