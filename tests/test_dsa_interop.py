"""DSA statements of reasons checked against the Transparency Database's own request validation.

The rules below are facts (field names, limits, allowed values, conditions) transcribed from the
database's public source, repository digital-services-act/transparency-database:

- app/Http/Requests/StatementStoreRequest.php: the rules of `POST /api/v1/statement`; the batch
  endpoint applies the same rules to each statement (app/Services/GroupedSubmissionsService.php);
- app/Http/Kernel.php: the TrimStrings and ConvertEmptyStringsToNull middleware run before them,
  so surrounding white space is removed and a blank string arrives as null;
- app/Models/Statement.php: the enum keys; app/Services/EuropeanLanguagesService.php (the keys of
  ALL_LANGUAGES) and app/Services/EuropeanCountriesService.php (EUROPEAN_COUNTRY_CODES): the
  languages and countries.

They are written here a second time, independently of moderator.audit.dsa.spec, so that a mistake
in the builder's own table cannot hide itself. Where the transcription is looser than the API
(the `url` rule is approximated by "http(s) with a host") or stricter (texts must be JSON
strings), the comment says so. The export never sends null: a null here is an absent field.
"""

from __future__ import annotations

import json
import re
import shutil
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moderator.audit.db.store import AuditStore
from moderator.audit.dsa import spec
from moderator.audit.dsa.export import DsaOptions, TenantDsa, statement_for, validate_statement
from moderator.audit.models import IncomingRecord
from moderator.cli.main import main
from moderator.errors import ConfigError, ErrorCode
from moderator.events.verdict import CATEGORIES
from moderator.policy.document import CODES
from tests.dsa_fixtures import DECIDED_AT, record
from tests.fuzz import fuzz_settings
from tests.policy_fixtures import clear_moderator_env

ROOT = Path(__file__).resolve().parent.parent
SALT = "interop-salt-0123456789"

# -- the official rules, transcribed -------------------------------------------------------------

_LANGUAGES = """
    AB AA AF AK SQ AM AR AN HY AS AV AE AY AZ BM BA EU BE BN BH BI BS BR BG MY CA KM CH CE NY ZH
    CU CV KW CO CR HR CS DA DV NL DZ EN EO ET EE FO FJ FI FR FF GD GL LG KA DE KI EL KL GN GU HT
    HA HE HZ HI HO HU IS IO IG ID IA IE IU IK GA IT JA JV KN KR KS KK RW KV KG KO KJ KU KY LO LA
    LV LB LI LN LT LU MK MG MS ML MT GV MI MR MH RO MN NA NV ND NG NE SE NO NB NN II OC OJ OR OM
    OS PI PA PS FA PL PT QU RM RN RU SM SG SA SC SR SN SD SI SK SL SO ST NR ES SU SW SS SV TL TY
    TG TA TT TE TH BO TI TO TS TN TR TK TW UG UK UR UZ VE VI VO WA CY FY WO XH YI YO ZA ZU"""
LANGUAGES = frozenset(_LANGUAGES.split())
_COUNTRIES = """
    AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IS IT LI LT LU LV MT NL NO PL PT RO SE SI SK"""
COUNTRIES = frozenset(_COUNTRIES.split())
VISIBILITIES = frozenset(
    "DECISION_VISIBILITY_" + v
    for v in ("CONTENT_REMOVED", "CONTENT_DISABLED", "CONTENT_DEMOTED", "CONTENT_AGE_RESTRICTED",
              "CONTENT_INTERACTION_RESTRICTED", "CONTENT_LABELLED", "OTHER")
)  # fmt: skip
MONETARIES = frozenset({"DECISION_MONETARY_SUSPENSION", "DECISION_MONETARY_TERMINATION",
                        "DECISION_MONETARY_OTHER"})  # fmt: skip
PROVISIONS = frozenset(
    "DECISION_PROVISION_" + v
    for v in ("PARTIAL_SUSPENSION", "TOTAL_SUSPENSION", "PARTIAL_TERMINATION", "TOTAL_TERMINATION")
)
ACCOUNTS = frozenset({"DECISION_ACCOUNT_SUSPENDED", "DECISION_ACCOUNT_TERMINATED"})
ACCOUNT_TYPES = frozenset({"ACCOUNT_TYPE_BUSINESS", "ACCOUNT_TYPE_PRIVATE"})
ILLEGAL = "DECISION_GROUND_ILLEGAL_CONTENT"
INCOMPATIBLE = "DECISION_GROUND_INCOMPATIBLE_CONTENT"
CONTENT_TYPES = frozenset(
    "CONTENT_TYPE_" + v
    for v in ("APP", "AUDIO", "IMAGE", "PRODUCT", "SYNTHETIC_MEDIA", "TEXT", "VIDEO", "OTHER")
)
CATEGORIES_OFFICIAL = frozenset(
    "STATEMENT_CATEGORY_" + v
    for v in ("ANIMAL_WELFARE", "CONSUMER_INFORMATION", "CYBER_VIOLENCE",
              "CYBER_VIOLENCE_AGAINST_WOMEN", "DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
              "ILLEGAL_OR_HARMFUL_SPEECH", "INTELLECTUAL_PROPERTY_INFRINGEMENTS",
              "NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS", "NOT_SPECIFIED_NOTICE",
              "OTHER_VIOLATION_TC", "PROTECTION_OF_MINORS", "RISK_FOR_PUBLIC_SECURITY",
              "SCAMS_AND_FRAUD", "SELF_HARM", "UNSAFE_AND_PROHIBITED_PRODUCTS", "VIOLENCE")
)  # fmt: skip
SOURCE_TYPES = frozenset({"SOURCE_ARTICLE_16", "SOURCE_TRUSTED_FLAGGER",
                          "SOURCE_TYPE_OTHER_NOTIFICATION", "SOURCE_VOLUNTARY"})  # fmt: skip
YES_NO = frozenset({"Yes", "No"})
AUTOMATED_DECISIONS = frozenset(
    {"AUTOMATED_DECISION_FULLY", "AUTOMATED_DECISION_PARTIALLY", "AUTOMATED_DECISION_NOT_AUTOMATED"}
)

Data = Mapping[str, Any]


def received(value: Any) -> Any:
    """TrimStrings, then ConvertEmptyStringsToNull, over the whole request body. The trim takes
    white space, NUL, the byte-order mark and the zero-width space and left-to-right mark."""
    if isinstance(value, str):
        while True:
            trimmed = value.strip().strip("\x00\ufeff\u200b\u200e")
            if trimmed == value:
                return value or None
            value = trimmed
    if isinstance(value, Mapping):
        return {key: received(item) for key, item in value.items()}
    if isinstance(value, list):
        return [received(item) for item in value]
    return value


def _never(data: Data) -> bool:
    return False


def _ground_is(key: str) -> Callable[[Data], bool]:
    return lambda data: data.get("decision_ground") == key


def _ground_is_not(key: str) -> Callable[[Data], bool]:
    return lambda data: data.get("decision_ground") != key


def _has(name: str, value: str) -> Callable[[Data], bool]:
    """The field is `value` or an array holding it (the API casts to an array and looks)."""

    def check(data: Data) -> bool:
        field = data.get(name)
        return value in field if isinstance(field, list) else field == value

    return check


def _lacks(name: str, value: str) -> Callable[[Data], bool]:
    return lambda data: not _has(name, value)(data)


def _without_all(*names: str) -> Callable[[Data], bool]:
    """required_without_all: required when every one of `names` is absent or empty."""
    return lambda data: all(data.get(name) in (None, []) for name in names)


@dataclass(frozen=True)
class Rule:
    """One field's rules: when required, when excluded (dropped unvalidated), and its checks."""

    required: Callable[[Data], bool] = _never
    excluded: Callable[[Data], bool] = _never
    allowed: frozenset[str] | None = None  # `in:`; for an array, every element
    array: bool = False
    max_chars: int | None = None  # `max:` on a string; stricter here: texts must be strings
    pattern: str | None = None
    dates: tuple[date | None, date | None] | None = None  # date_format:Y-m-d, inclusive bounds
    url: bool = False

    def problems(self, name: str, value: Any) -> list[str]:
        if self.array:
            if not isinstance(value, list):
                return [f"{name}: must be an array"]
            values = value
        else:
            values = [value]
        out = []
        if self.allowed is not None:
            out += [f"{name}: {v!r} not allowed" for v in values if v not in self.allowed]
        if self.max_chars is not None:
            if not isinstance(value, str):
                out.append(f"{name}: not a string")
            elif len(value) > self.max_chars:
                out.append(f"{name}: longer than {self.max_chars}")
        if self.pattern is not None and not (
            isinstance(value, str) and re.fullmatch(self.pattern, value)
        ):
            out.append(f"{name}: does not match {self.pattern}")
        if self.dates is not None:
            out += _date_problems(name, value, *self.dates)
        if self.url:
            parts = urlsplit(value) if isinstance(value, str) else None
            if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
                out.append(f"{name}: not a URL")
        return out


def _date_problems(name: str, value: Any, low: date | None, high: date | None) -> list[str]:
    if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        return [f"{name}: not Y-m-d"]
    try:
        day = date.fromisoformat(value)
    except ValueError:
        return [f"{name}: not a calendar date"]
    if (low and day < low) or (high and day > high):
        return [f"{name}: {value} outside {low}..{high}"]
    return []


_DECISIONS = ("decision_visibility", "decision_monetary", "decision_provision", "decision_account")
_OTHER_DECISIONS = {name: tuple(n for n in _DECISIONS if n != name) for name in _DECISIONS}
_END = date(2038, 1, 1)
RULES: dict[str, Rule] = {
    "decision_visibility": Rule(
        _without_all(*_OTHER_DECISIONS["decision_visibility"]), allowed=VISIBILITIES, array=True
    ),
    "decision_visibility_other": Rule(
        _has("decision_visibility", "DECISION_VISIBILITY_OTHER"),
        _lacks("decision_visibility", "DECISION_VISIBILITY_OTHER"),
        max_chars=500,
    ),
    "decision_monetary": Rule(
        _without_all(*_OTHER_DECISIONS["decision_monetary"]), allowed=MONETARIES
    ),
    "decision_monetary_other": Rule(
        _has("decision_monetary", "DECISION_MONETARY_OTHER"),
        _lacks("decision_monetary", "DECISION_MONETARY_OTHER"),
        max_chars=500,
    ),
    "decision_provision": Rule(
        _without_all(*_OTHER_DECISIONS["decision_provision"]), allowed=PROVISIONS
    ),
    "decision_account": Rule(_without_all(*_OTHER_DECISIONS["decision_account"]), allowed=ACCOUNTS),
    "account_type": Rule(allowed=ACCOUNT_TYPES),
    "decision_ground": Rule(lambda data: True, allowed=frozenset({ILLEGAL, INCOMPATIBLE})),
    "decision_ground_reference_url": Rule(max_chars=500, url=True),
    "illegal_content_legal_ground": Rule(
        _ground_is(ILLEGAL), _ground_is_not(ILLEGAL), max_chars=500
    ),
    "illegal_content_explanation": Rule(
        _ground_is(ILLEGAL), _ground_is_not(ILLEGAL), max_chars=2000
    ),
    "incompatible_content_ground": Rule(
        _ground_is(INCOMPATIBLE), _ground_is_not(INCOMPATIBLE), max_chars=500
    ),
    "incompatible_content_explanation": Rule(
        _ground_is(INCOMPATIBLE), _ground_is_not(INCOMPATIBLE), max_chars=2000
    ),
    "incompatible_content_illegal": Rule(excluded=_ground_is_not(INCOMPATIBLE), allowed=YES_NO),
    "content_type": Rule(lambda data: True, allowed=CONTENT_TYPES, array=True),
    "content_type_other": Rule(
        _has("content_type", "CONTENT_TYPE_OTHER"),
        _lacks("content_type", "CONTENT_TYPE_OTHER"),
        max_chars=500,
    ),
    "category": Rule(lambda data: True, allowed=CATEGORIES_OFFICIAL),
    "category_addition": Rule(allowed=CATEGORIES_OFFICIAL, array=True),
    "territorial_scope": Rule(allowed=COUNTRIES, array=True),
    "content_language": Rule(allowed=LANGUAGES),
    "content_date": Rule(lambda data: True, dates=(date(2000, 1, 1), _END)),
    "application_date": Rule(lambda data: True, dates=(date(2020, 1, 1), _END)),
    **{
        f"end_date_{what}_restriction": Rule(dates=(None, _END))
        for what in ("account", "monetary", "service", "visibility")
    },
    "decision_facts": Rule(lambda data: True, max_chars=5000),
    "source_type": Rule(lambda data: True, allowed=SOURCE_TYPES),
    "source_identity": Rule(excluded=_has("source_type", "SOURCE_VOLUNTARY"), max_chars=500),
    "automated_detection": Rule(lambda data: True, allowed=YES_NO),
    "automated_decision": Rule(lambda data: True, allowed=AUTOMATED_DECISIONS),
    "puid": Rule(lambda data: True, max_chars=500, pattern=r"[a-zA-Z0-9_-]+"),
}


def official_problems(statement: Mapping[str, Any]) -> list[str]:
    """What the database would refuse in `statement`, by the transcribed rules; [] = accepted.
    A field without a transcribed rule is reported too: the API would drop it unread."""
    data: Data = received(statement)
    problems = [f"{name}: not a field of the official rules" for name in data if name not in RULES]
    for name, rule in RULES.items():
        if rule.excluded(data):
            continue
        value = data.get(name)
        if value is None or value == []:
            if rule.required(data):
                problems.append(f"{name}: required")
            continue
        problems += rule.problems(name, value)
    return problems


def test_our_validator_refuses_what_the_database_refuses() -> None:
    """Each change makes the transcribed rules refuse the statement (so they can fail), and the
    exporter's own validator refuses it too."""
    good = statement_for(record(), MAPPING, DsaOptions(puid_salt=SALT))
    assert good is not None and official_problems(good) == validate_statement(good) == []
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content_language": "ZZ"}, "content_language: 'ZZ' not allowed"),
        ({"content_language": "IW"}, "content_language: 'IW' not allowed"),
        ({"incompatible_content_ground": " \t"}, "incompatible_content_ground: required"),
        ({"incompatible_content_explanation": "\u3000"}, "incompatible_content_explanation: req"),
        ({"decision_facts": " "}, "decision_facts: required"),
        ({"content_date": "1970-01-01"}, "content_date: 1970-01-01 outside"),
        ({"application_date": "2038-01-02"}, "application_date: 2038-01-02 outside"),
        ({"territorial_scope": ["CH"]}, "territorial_scope: 'CH' not allowed"),
        ({"decision_visibility": []}, "decision_visibility: required"),
        ({"puid": "a/b"}, "puid: does not match"),
        ({"user_id": "u-1"}, "user_id: not a field"),
    ]
    for change, expected in cases:
        statement = {**good, **change}
        problems = official_problems(statement)
        assert any(p.startswith(expected) for p in problems), (change, problems)
        assert validate_statement(statement) != [], change


# -- the builder's own tables agree with the transcription ---------------------------------------


def test_builder_tables_are_the_official_sets() -> None:
    assert getattr(spec, "LANGUAGES", None) == LANGUAGES
    assert len(LANGUAGES) == 184
    assert frozenset(spec.EEA_COUNTRIES) == spec.TERRITORIES == COUNTRIES
    assert spec.DECISION_VISIBILITY == VISIBILITIES
    assert spec.CONTENT_TYPES == CONTENT_TYPES
    assert spec.STATEMENT_CATEGORIES == CATEGORIES_OFFICIAL
    assert spec.SOURCE_TYPES == SOURCE_TYPES
    assert spec.AUTOMATED_DECISION == AUTOMATED_DECISIONS


def test_content_language_is_the_official_list() -> None:
    """Two capital letters are not enough: of all 676 pairs, only the listed codes pass."""
    accepted = set()
    for code in (a + b for a in string.ascii_uppercase for b in string.ascii_uppercase):
        try:
            options = DsaOptions(SALT, content_language=code)
        except ConfigError as exc:
            assert "content_language" in str(exc), exc
            assert validate_statement({"content_language": code}) != [], code
            continue
        statement = statement_for(record(), MAPPING, options)
        assert statement is not None and statement["content_language"] == code
        assert official_problems(statement) == validate_statement(statement) == [], code
        accepted.add(code)
    assert accepted == LANGUAGES


# -- blank and padded texts ----------------------------------------------------------------------

BLANKS = ["", " ", "   ", "\t\n", "\u3000", "\u200b", " \ufeff ", "\x00"]


@pytest.mark.parametrize("blank", BLANKS)
def test_blank_ground_texts_are_refused_up_front(blank: str) -> None:
    with pytest.raises(ConfigError, match="incompatible_content_ground: required"):
        DsaOptions(SALT, incompatible_content_ground=blank)
    with pytest.raises(ConfigError, match="illegal_content_legal_ground: required"):
        DsaOptions(SALT, decision_ground=ILLEGAL, illegal_content_legal_ground=blank)


@pytest.mark.parametrize("blank", BLANKS)
def test_the_validator_sees_blank_texts_as_the_api_does(blank: str) -> None:
    statement = statement_for(record(), MAPPING, DsaOptions(SALT))
    assert statement is not None
    statement["incompatible_content_ground"] = blank
    statement["content_language"] = blank  # optional: blank is simply absent
    assert official_problems(statement) == ["incompatible_content_ground: required"]
    assert [p.split(":")[0] for p in validate_statement(statement)] == [
        "incompatible_content_ground"
    ]


def test_padded_texts_are_sent_trimmed_and_blank_optional_ones_left_out() -> None:
    options = DsaOptions(
        SALT,
        incompatible_content_ground="\u3000 Terms of service, section 4 \n",
        decision_ground_reference_url=" https://example.com/terms\t",
        content_language=" DE ",
    )
    statement = statement_for(record(), MAPPING, options)
    assert statement is not None
    assert statement["incompatible_content_ground"] == "Terms of service, section 4"
    assert statement["decision_ground_reference_url"] == "https://example.com/terms"
    assert statement["content_language"] == "DE"
    assert received(statement) == statement
    bare = statement_for(
        record(), MAPPING, DsaOptions(SALT, decision_ground_reference_url="  ", content_language="")
    )
    assert bare is not None
    assert "decision_ground_reference_url" not in bare and "content_language" not in bare


# -- content_date fallback -----------------------------------------------------------------------

DECIDED_DAY = DECIDED_AT.date().isoformat()  # 2026-11-29
FALLBACK_NOTE = "the content date given is the date of the decision"


UPLOAD_TIMES: list[tuple[str | None, str | None]] = [  # uploaded_at, the UTC day to use
    ("1970-01-01T00:00:00.000Z", None),  # the event time of AWS's sample event
    ("1970-01-01T00:00:00+00:00", None),
    ("1999-12-31T23:59:59+00:00", None),
    ("2000-01-01T00:30:00+01:00", None),  # 1999-12-31 in UTC
    ("2000-01-01T00:00:00+00:00", "2000-01-01"),  # the first day allowed
    ("2026-11-28T23:30:00-02:00", "2026-11-29"),  # the UTC date
    ("2026-11-30T00:00:00+00:00", None),  # after the decision: a wrong clock
    ("2038-01-02T00:00:00+00:00", None),
    ("0001-01-01T00:00:00+01:00", None),  # before year 1 in UTC
    ("9999-12-31T23:59:59-23:59", None),  # after year 9999 in UTC
    ("2026-11-29T01:00:00", None),  # no offset: which day is unknown
    ("yesterday", None),
    ("", None),
    (None, None),
]


def test_content_date_falls_back_per_statement() -> None:
    for uploaded_at, upload_day in UPLOAD_TIMES:
        rec = record()
        rec["uploaded_at"] = uploaded_at
        statement = statement_for(rec, MAPPING, DsaOptions(SALT))
        assert statement is not None
        assert statement["content_date"] == (upload_day or DECIDED_DAY), uploaded_at
        assert official_problems(statement) == validate_statement(statement) == [], uploaded_at
        noted = FALLBACK_NOTE in statement["decision_facts"]
        assert noted == (upload_day is None), uploaded_at


# -- generated records ---------------------------------------------------------------------------

MAPPING = TenantDsa(
    {**dict.fromkeys(CODES, "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"),
     "O2": "STATEMENT_CATEGORY_VIOLENCE", "NA": "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"},
    review_restricts_visibility=True,
    surfaces=frozenset({"default", "profile_photo"}),
)  # fmt: skip
REPORTED_ERRORS = sorted(
    set(ErrorCode)
    - {ErrorCode.MALFORMED_EVENT, ErrorCode.OBJECT_NOT_FOUND}
    - {ErrorCode.TENANT_MISMATCH, ErrorCode.UNKNOWN_TENANT}
)
_pad = st.text(st.sampled_from(" \t\n\r\x0b\x0c\u00a0\u2003\u3000\ufeff\u200b\x00"), max_size=3)
_words = st.text(st.sampled_from(string.ascii_letters + " ,.§-äß"), max_size=60)
_texts = st.builds(lambda a, core, b: a + core + b, _pad, _words, _pad)
_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_decided = st.builds(
    lambda at, tz: at.replace(tzinfo=UTC).astimezone(tz),
    st.datetimes(datetime(2020, 1, 1, 0, 0), datetime(2037, 12, 31, 23, 59)),  # noqa: DTZ001
    _offsets,
)
_uploaded = st.one_of(
    st.none(),
    st.just("1970-01-01T00:00:00.000Z"),
    st.builds(lambda at, tz: at.replace(tzinfo=tz).isoformat(), st.datetimes(), _offsets),
    st.builds(
        lambda at, tz: at.replace(tzinfo=tz).isoformat(),
        st.datetimes(datetime(1999, 12, 30), datetime(2000, 1, 2)),  # noqa: DTZ001
        _offsets,
    ),
    st.datetimes().map(lambda at: at.isoformat()),  # no offset
    st.text(max_size=12),
)


@st.composite
def _records(draw: st.DrawFn) -> dict[str, Any]:
    error = draw(st.none() | st.sampled_from(REPORTED_ERRORS))
    rec = record(
        draw(st.sampled_from(["block", "review"])),
        category=None if error else draw(st.sampled_from(CATEGORIES)),
        source="model" if error else draw(st.sampled_from(["model", "cache"])),
        error=error,
        surface=draw(st.sampled_from(["default", "profile_photo", "u-42"])),
        event_id=draw(st.text(string.printable, min_size=1, max_size=40)),
        tenant=draw(st.sampled_from(["acme", "kids"])),
        decided_at=draw(_decided),
    )
    rec["uploaded_at"] = draw(_uploaded)
    return rec


@st.composite
def _options(draw: st.DrawFn) -> dict[str, Any]:
    options: dict[str, Any] = {"puid_salt": SALT}
    if draw(st.booleans()):
        options |= {"decision_ground": ILLEGAL, "illegal_content_legal_ground": draw(_texts)}
    else:
        options["incompatible_content_ground"] = draw(_texts)
    options["territorial_scope"] = tuple(
        draw(st.lists(st.sampled_from(sorted(COUNTRIES)), min_size=1, max_size=30, unique=True))
    )
    url = st.builds(lambda a, b: a + "https://example.com/terms" + b, _pad, _pad)
    options["decision_ground_reference_url"] = draw(st.none() | _pad | url)
    language = st.builds(
        lambda a, code, b: a + code + b, _pad, st.sampled_from(sorted(LANGUAGES)), _pad
    )
    options["content_language"] = draw(st.none() | _pad | language)
    return options


def _upload_day(value: Any, decided: date) -> date | None:
    """Independent oracle: the upload's UTC date when the export must use it."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            return None
        day = moment.astimezone(UTC).date()
    except (ValueError, OverflowError):
        return None
    return day if date(2000, 1, 1) <= day <= min(decided, date(2038, 1, 1)) else None


@pytest.mark.fuzz
@fuzz_settings(300)
@given(rec=_records(), options=_options())
def test_every_exported_field_passes_the_official_rules(
    rec: dict[str, Any], options: dict[str, Any]
) -> None:
    ground = options.get("illegal_content_legal_ground", options.get("incompatible_content_ground"))
    if not received(ground):
        with pytest.raises(ConfigError, match=r"content_(legal_)?ground: required"):
            DsaOptions(**options)
        return
    statement = statement_for(rec, MAPPING, DsaOptions(**options))
    assert statement is not None
    assert official_problems(statement) == []
    assert validate_statement(statement) == []
    assert received(statement) == statement  # nothing the API would trim or turn into null
    assert json.loads(json.dumps(statement)) == statement
    decided = datetime.fromisoformat(rec["verdict"]["decided_at"]).astimezone(UTC).date()
    assert statement["application_date"] == decided.isoformat()
    upload = _upload_day(rec["uploaded_at"], decided)
    assert statement["content_date"] == (upload or decided).isoformat()
    assert (FALLBACK_NOTE in statement["decision_facts"]) == (upload is None)


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty audit store and a policy directory whose tenant `acme` maps every category."""
    clear_moderator_env(monkeypatch)
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(ROOT / "policies" / "default.yaml", policies / "default.yaml")
    (policies / "acme.yaml").write_text("on_error: block\n")
    db = tmp_path / "audit.db"
    monkeypatch.setenv("MODERATOR_AUDIT__URL", f"sqlite:///{db}")
    monkeypatch.setenv("MODERATOR_POLICIES__DIR", str(policies))
    monkeypatch.setenv("MODERATOR_DSA_PUID_SALT", SALT)
    AuditStore.open(f"sqlite:///{db}").close()
    return db


def _store(db: Path, records: list[dict[str, Any]]) -> None:
    items = [IncomingRecord("moderation.audit", 0, i, r) for i, r in enumerate(records)]
    with AuditStore.open(f"sqlite:///{db}") as audit:
        assert audit.insert(items).inserted == len(records)


def _export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any], str]:
    code = main(["audit", "export-dsa", *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--content-language", "ZZ"], "moderator: --content-language: 'ZZ' is not one of"),
        (["--content-language", "IW"], "moderator: --content-language: 'IW' is not one of"),
        (["--ground-text", "   "], "moderator: --ground-text: required"),
        (["--ground-text", ""], "moderator: --ground-text: required"),
    ],
)
def test_refused_flags_name_the_flag_before_any_export_work(
    store: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    store.unlink()  # an export that started would fail on the missing store (exit 1)
    code, lines, err = _export(capsys, *args)
    assert (code, lines) == (2, []), err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_flags_are_trimmed_and_blank_optional_ones_left_out(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _store(store, [record(tenant="acme")])
    code, [statement], err = _export(
        capsys, "--content-language", " de ", "--terms-url", " ", "--ground-text", " Terms §4 "
    )
    assert code == 0, err
    assert statement["content_language"] == "DE"
    assert statement["incompatible_content_ground"] == "Terms §4"
    assert "decision_ground_reference_url" not in statement
    assert official_problems(statement) == []


def test_one_unusable_upload_time_does_not_fail_the_export(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws_sample = record(tenant="acme", event_id="e-1970", decided_at=DECIDED_AT)
    aws_sample["uploaded_at"] = "1970-01-01T00:00:00.000Z"
    later = DECIDED_AT + timedelta(seconds=1)
    _store(store, [aws_sample, record(tenant="acme", event_id="e-ok", decided_at=later)])
    code, statements, err = _export(capsys)
    assert code == 0, err
    assert [s["content_date"] for s in statements] == [DECIDED_DAY, "2026-11-29"]
    assert [FALLBACK_NOTE in s["decision_facts"] for s in statements] == [True, False]
    for statement in statements:
        assert official_problems(statement) == []
    assert "1 with an unusable upload time, dated by their decision" in err
    assert "(first: event e-1970, tenant acme)" in err
