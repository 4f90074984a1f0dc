"""An `Explanation` as plain-text steps, as a short `because` cell, and as JSON. Pure.

Numbers are shown exactly as recorded (`0.7136`, not `0.714`), the `because` cell included: a
rounded score next to a threshold (`0.714 >= block 0.7`) reads as another number than the one
`explain` and the audit record show.
The JSON document (`moderator.explanation/v1`) is described in docs/explain.md; its `steps` are
the text lines, so both formats say the same.
Every line and cell is made safe for a terminal (moderator/text.py): object keys, buckets,
surfaces, error messages and rationales come from uploads, and a control character in them is
shown as an escape (`\\r`, `\\x1b`), never printed raw. The JSON document's values stay exact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from moderator.errors import ErrorCode
from moderator.explain.model import (
    Explanation,
    RowOrigin,
    RowValue,
    RuleFacts,
    TableRow,
    has_origin,
)
from moderator.text import safe_line

SCHEMA = "moderator.explanation/v1"
RATIONALE_CHARS = 300
LABEL_WIDTH = 9  # the longest step name, "rationale"


def steps(e: Explanation) -> list[tuple[str, str]]:
    """(step name, one short line) from the input to the decision, safe for a terminal."""
    return [(name, safe_line(text)) for name, text in _steps(e)]


def _steps(e: Explanation) -> list[tuple[str, str]]:
    out = [
        ("event", f"{e.event_id}, decided {_time(e.decided_at)}"),
        ("input", _input(e)),
        ("image", _image(e)),
        ("policy", _policy(e)),
    ]
    if has_origin(e) and e.policy.row_origin is not None:
        out.append(("origin", _origin(e, e.policy.row_origin)))
    elif has_origin(e) and e.policy.origin_not_shown:
        out.append(("origin", f"not shown: {e.policy.origin_not_shown}"))
    out.append(("engine", _engine(e)))
    if e.assessment is not None and e.assessment.rationale:
        out.append(("rationale", _rationale(e.assessment.rationale)))
    if e.error is not None:
        message = f": {e.error.message}" if e.error.message else ""
        security = " (a security error: never allowed)" if e.error.security else ""
        out.append(("error", f"{e.error.code}{message}{security}"))
    if e.cache is not None:
        out.append(("cache", _cache(e)))
    out.append(("rule", rule_text(e)))
    out.append(("decision", e.decision))
    if e.matches_policy is False:
        out.append(
            (
                "mismatch",
                f"the decision table gives {e.rule.decision}; the verdict records {e.decision}",
            )
        )
    out += [("missing", item) for item in e.missing]
    return out


def text_lines(e: Explanation) -> list[str]:
    """The steps as aligned `name  text` lines."""
    return [f"{name.ljust(LABEL_WIDTH)}  {text}" for name, text in steps(e)]


def rule_text(e: Explanation) -> str:
    """The rule that decided, in one line: `score 0.252 >= review_at 0.2 for O6 -> review`."""
    return safe_line(_rule_text(e))


def _rule_text(e: Explanation) -> str:
    rule = e.rule
    if rule.kind == "on_error" and e.error is not None:
        if rule.decision is None:
            return (
                f"not known: the decision table has no on_error entry for {e.error.code}; "
                f"the verdict records {e.decision}"
            )
        return f"on_error for {e.error.code} -> {rule.decision}"
    row = e.policy.row
    a = e.assessment
    if rule.kind == "threshold" and row is not None and a is not None and a.score is not None:
        sign = ">=" if rule.crossed else "<"
        base = _base(rule)
        text = f"score {num(a.score)} {sign} {rule.threshold} {num(rule.threshold_value)}"
        return f"{text} for {row.category} -> {base}" + _capped(rule, row)
    if rule.kind == "rating" and row is not None and a is not None:
        why = "no score, so the rating decides" if _thresholds(row) else "no score thresholds"
        text = f"rating {a.rating or '(none)'} for {row.category}"
        if a.rating == "Unsafe":
            text += f": row action {row.action} -> {_base(rule)}"
        else:
            text += " -> allow"
        return f"{text} ({why})" + _capped(rule, row)
    return f"not known: no decision table to read; the verdict records {e.decision}"


def because(e: Explanation) -> str:
    """A short cell for tables: `score 0.252 >= review 0.2`, `error: x -> on_error review`."""
    return safe_line(_because(e))


def _because(e: Explanation) -> str:
    rule, row, a = e.rule, e.policy.row, e.assessment
    prefix = "cache; " if e.source == "cache" else ""
    if e.error is not None:
        given = f" -> on_error {rule.decision}" if rule.decision else ""
        return f"error: {e.error.code}{given}"
    if rule.kind == "threshold" and row is not None and a is not None and a.score is not None:
        value = rule.threshold_value or 0.0
        sign = ">=" if rule.crossed else "<"
        name = "block" if rule.threshold == "block_at" else "review"
        text = f"score {num(a.score)} {sign} {name} {num(value)}"
        return prefix + text + (", allowed: review" if rule.capped else "")
    if rule.kind == "rating" and row is not None and a is not None:
        if a.rating == "Unsafe":
            capped = ", allowed: review" if rule.capped else ""
            return f"{prefix}Unsafe {row.category} -> {row.action}{capped}"
        return f"{prefix}{a.rating or 'no rating'} -> allow"
    if a is not None:
        return f"{prefix}{a.rating or 'no rating'} {_code(a.category)} (no policy table)"
    return prefix + "no policy table"


def explanation_json(e: Explanation) -> dict[str, Any]:
    """The `moderator.explanation/v1` document (keys in docs/explain.md)."""
    i, p = e.input, e.policy
    row = p.row
    return {
        "schema": SCHEMA,
        "event_id": e.event_id,
        "tenant_id": e.tenant_id,
        "decided_at": _time_or_none(e.decided_at),
        "decision": e.decision,
        "source": e.source,
        "input": {
            "surface": i.surface,
            "bucket": i.bucket,
            "key": i.key,
            "version_id": i.version_id,
            "sha256": i.sha256,
            "format": i.format,
            "width": i.width,
            "height": i.height,
            "uploaded_at": _time_or_none(i.uploaded_at),
        },
        "policy": {
            "version": p.version,
            "hash": p.hash,
            "document_kept": p.document_kept,
            "row": None
            if row is None
            else {
                "category": row.category,
                "mode": row.mode,
                "action": row.action,
                "block_at": row.block_at,
                "review_at": row.review_at,
            },
            "on_error": p.on_error,
            # Only when known: the audit API's schema has no such key and forbids extra ones.
            **({} if p.row_origin is None else {"row_origin": _origin_json(p.row_origin)}),
        },
        "model": None
        if e.model is None
        else {
            "engine": e.model.engine,
            "name": e.model.name,
            "revision": e.model.revision,
            "smoke_test": e.model.smoke_test,
        },
        "assessment": None
        if e.assessment is None
        else {
            "rating": e.assessment.rating,
            "category": e.assessment.category,
            "score": e.assessment.score,
            "rationale": e.assessment.rationale,
        },
        "error": None
        if e.error is None
        else {"code": e.error.code, "message": e.error.message, "security": e.error.security},
        "cache": None
        if e.cache is None
        else {
            "looked_up": e.cache.looked_up,
            "original_event_id": e.cache.original_event_id,
            "original_decided_at": _time_or_none(e.cache.original_decided_at),
        },
        "rule": {
            "kind": e.rule.kind,
            "decision": e.rule.decision,
            "threshold": e.rule.threshold,
            "threshold_value": e.rule.threshold_value,
            "crossed": e.rule.crossed,
            "capped": e.rule.capped,
            "text": rule_text(e),
        },
        "matches_policy": e.matches_policy,
        "redacted_at": _time_or_none(e.redacted_at),
        # The reason an origin is not shown goes here, not into `policy`: the audit API's
        # schema forbids keys it does not name, and `missing` is what could not be shown, and why.
        "missing": [*e.missing, *_origin_missing(e)],
        "steps": [{"step": name, "text": text} for name, text in steps(e)],
    }


def num(value: float | None) -> str:
    """A number as recorded: the shortest text that reads back as the same float."""
    if value is None:
        return "-"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _input(e: Explanation) -> str:
    i = e.input
    where = f"s3://{i.bucket or '?'}/{i.key}" if i.key is not None else "object key redacted"
    if i.version_id:
        where += f" (version {i.version_id})"
    parts = [f"tenant {e.tenant_id}", f"surface {i.surface or '-'}", where]
    if i.uploaded_at is not None:
        parts.append(f"uploaded {_time(i.uploaded_at)}")
    return ", ".join(parts)


def _image(e: Explanation) -> str:
    i = e.input
    sha = f"sha256 {i.sha256}" if i.sha256 else "not read (no sha256)"
    size = f" {i.width}x{i.height}" if i.width is not None and i.height is not None else ""
    if i.format or size:
        return f"{sha}, {i.format or 'format -'}{size}"
    return sha


def _policy(e: Explanation) -> str:
    p = e.policy
    version = p.version or "(no version recorded)"
    if not p.document_kept:
        return f"{version}: document not available"
    if e.error is not None:
        if e.error.code == ErrorCode.UNKNOWN_TENANT.value:
            version += f" (the default policy: tenant {e.tenant_id} has none)"
        return f"{version}: on_error for {e.error.code} is {p.on_error or '(not in the table)'}"
    if p.row is None:
        return f"{version}: no decision-table row applies"
    return f"{version}: {_row(p.row)}"


def _row(row: TableRow) -> str:
    # "mode default", not "(default)": a bare "default" reads like the default surface.
    never = ": never blocks" if row.mode == "allowed" else ""
    mode = f" (mode {row.mode}{never})" if row.mode else ""
    limits = [
        f"{name} {num(value)}"
        for name, value in (("block_at", row.block_at), ("review_at", row.review_at))
        if value is not None
    ]
    thresholds = ", ".join(limits) or "no score thresholds"
    return f"row {row.category}{mode}: {thresholds}; Unsafe -> {row.action}"


def _origin(e: Explanation, origin: RowOrigin) -> str:
    """Who set the row: `O2 action by surfaces.comments in acme.yaml, mode by default.yaml;
    surface comments changed action review -> block`; for an error verdict, who set its
    on_error action: `on_error for corrupt_image by kidsplace.yaml`."""
    row = e.policy.row
    if row is None:
        code = e.error.code if e.error is not None else "?"
        place = origin.set_by.get("on_error", "built-in")
        by = "no policy file (built-in review)" if place == "built-in" else place
        text = f"on_error for {code} by {by}"
    else:
        places: dict[str, list[str]] = {}
        for name, place in origin.set_by.items():
            places.setdefault(place, []).append(name)
        by = ", ".join(f"{' and '.join(names)} by {place}" for place, names in places.items())
        text = f"{row.category} {by or 'set by no policy file (built-in values)'}"
    if origin.undeclared_surface is not None:
        text += f"; surface {origin.undeclared_surface} is not declared: the default rules apply"
    if origin.surface is None or row is None:
        return text
    changes = ", ".join(f"{k} {_value(a)} -> {_value(b)}" for k, (a, b) in origin.overrides.items())
    what = f"changed {changes}" if changes else "sets the same values as the default surface"
    return f"{text}; surface {origin.surface} overrides {row.category}: {what}"


def _origin_missing(e: Explanation) -> list[str]:
    if not has_origin(e) or e.policy.row_origin is not None or not e.policy.origin_not_shown:
        return []
    return [f"row origin: {e.policy.origin_not_shown}"]


def _origin_json(origin: RowOrigin) -> dict[str, Any]:
    return {
        "surface": origin.surface,
        "set_by": dict(origin.set_by),
        "overrides": {k: {"from": a, "to": b} for k, (a, b) in origin.overrides.items()},
        "undeclared_surface": origin.undeclared_surface,
    }


def _value(value: RowValue) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else num(value)


def _engine(e: Explanation) -> str:
    if e.model is None:
        return "not run" + (f" (failed before it: {e.error.code})" if e.error is not None else "")
    name = e.model.engine + (f":{e.model.name}" if e.model.name else "")
    if e.model.revision:
        name += f" (revision {e.model.revision})"
    if e.model.smoke_test:
        name += " (smoke test: its decisions mean nothing)"
    a = e.assessment
    if a is None:
        return f"{name}: no usable answer"
    score = f"score {num(a.score)}" if a.score is not None else "no score"
    return f"{name}: {a.rating or '(no rating)'}, {a.category or '(no category)'}, {score}"


def _cache(e: Explanation) -> str:
    c = e.cache
    text = "assessment reused from the verdict cache (same image bytes, model input and model)"
    if c is None or not c.looked_up:
        return text
    if c.original_event_id is None:
        # The cache is shared by every tenant; the lookup searches this tenant's records only.
        return (
            f"{text}; no earlier model judgement of it for tenant {e.tenant_id} is in the audit"
            " store (the cache is shared by all tenants; other tenants' records are not searched)"
        )
    at = _time(c.original_decided_at)
    return (
        f"{text}; earliest model judgement of this image in the audit store: event "
        f"{c.original_event_id} at {at} (the cached answer may come from a later one)"
    )


def _rationale(text: str) -> str:
    # Cut before steps() escapes it: no escape is cut in half, and the count is JSON's.
    if len(text) <= RATIONALE_CHARS:
        return f'"{text}"'
    more = len(text) - RATIONALE_CHARS
    return f'"{text[:RATIONALE_CHARS]}..." ({more} more characters in --format json)'


def _code(category: str | None) -> str:
    return category.split(":", 1)[0] if category else "-"


def _base(rule: RuleFacts) -> str:
    return "block" if rule.capped else (rule.decision or "-")


def _capped(rule: RuleFacts, row: TableRow) -> str:
    return f"; {row.category} is allowed (never blocks): review" if rule.capped else ""


def _thresholds(row: TableRow) -> bool:
    return row.block_at is not None or row.review_at is not None


def _time(at: datetime | None) -> str:
    return _time_or_none(at) or "-"


def _time_or_none(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")
