"""Adapter for Amazon SNS envelopes: the S3 notification (or other event) inside `Message`.

An SNS subscription without raw message delivery wraps each message in an envelope: `Type`
(`Notification`), `MessageId`, `TopicArn`, `Subject`, `Message` (the published document as a
JSON string), `Timestamp`, `SignatureVersion`, `Signature`, `SigningCertURL`, `UnsubscribeURL`.
With raw message delivery the value is the published document itself, and no envelope exists.
The signature is not checked: the uploads topic's access control is the trust boundary, as for
every other shape.
"""

from __future__ import annotations

from typing import Any

from moderator.events.s3notify import NotificationError

NOTIFICATION = "Notification"
# Subscription handshakes name no upload: skipped like `s3:TestEvent`.
CONFIRMATIONS = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


def is_sns_envelope(doc: Any) -> bool:
    """True for documents with SNS's `Type` and `TopicArn` members."""
    return isinstance(doc, dict) and "Type" in doc and "TopicArn" in doc


def sns_message(doc: dict[str, Any]) -> str | None:
    """The `Message` text of a Notification; None for a subscription confirmation.

    Raises NotificationError for another `Type` or a `Message` that is not a string.
    """
    kind = doc.get("Type")
    if isinstance(kind, str) and kind in CONFIRMATIONS:
        return None
    if kind != NOTIFICATION:
        raise NotificationError(f"Type is {str(kind)[:60]!r}, not {NOTIFICATION!r}")
    message = doc.get("Message")
    if not isinstance(message, str):
        raise NotificationError("Message is missing or not a string")
    return message
