"""The statement categories of the EU DSA Transparency Database (schema of 1 July 2025).

A shared vocabulary, pure: the policy schema checks a tenant's `dsa.categories` against it when
a file is loaded, and the DSA export (audit/dsa/spec.py) checks the statements it builds.
"""

from __future__ import annotations

STATEMENT_CATEGORY_PREFIX = "STATEMENT_CATEGORY_"
STATEMENT_CATEGORIES: frozenset[str] = frozenset(
    STATEMENT_CATEGORY_PREFIX + name
    for name in (
        *("ANIMAL_WELFARE", "CONSUMER_INFORMATION", "CYBER_VIOLENCE"),
        *("CYBER_VIOLENCE_AGAINST_WOMEN", "DATA_PROTECTION_AND_PRIVACY_VIOLATIONS"),
        *("ILLEGAL_OR_HARMFUL_SPEECH", "INTELLECTUAL_PROPERTY_INFRINGEMENTS"),
        *("NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS", "NOT_SPECIFIED_NOTICE"),
        *("OTHER_VIOLATION_TC", "PROTECTION_OF_MINORS", "RISK_FOR_PUBLIC_SECURITY"),
        *("SCAMS_AND_FRAUD", "SELF_HARM", "UNSAFE_AND_PROHIBITED_PRODUCTS", "VIOLENCE"),
    )
)
