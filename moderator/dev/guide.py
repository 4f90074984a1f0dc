"""What `moderator dev-stack` prints on stderr once it is ready: where the stack is, its bucket
and topics, and the commands that send an upload and show its verdict."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

EXAMPLE_TENANT = "kids"  # has a policy file in the repository's policies/


def guide(
    kafka: str,
    env: Mapping[str, str],
    buckets: Sequence[str],
    topics: Mapping[str, int],
    *,
    env_file: Path | None,
) -> str:
    """What people read on stderr once the stack is ready: addresses, bucket, topics, and the
    commands that send an upload and show its verdict."""
    counts = set(topics.values())
    if len(counts) == 1:
        listed = f"{', '.join(topics)} ({counts.pop()} partitions each)"
    else:
        listed = ", ".join(f"{name} ({n} partitions)" for name, n in topics.items())
    delivery = env["MODERATOR_KAFKA__DELIVERY"]
    if env_file is not None:
        source = f". {_sourceable(env_file)}"
        load = f"dev-stack: environment written to {env_file}; load it in a shell: {source}"
    else:
        load = "dev-stack: load the environment in a shell: paste the export lines above"
    upload = f"  id=$(moderator dev-stack upload photo.jpg --tenant {EXAMPLE_TENANT})   "
    verdicts = '  moderator dev-stack verdicts "$id"'.ljust(len(upload))
    lines = [
        f"dev-stack: Kafka ({kafka}, {delivery}): {env['MODERATOR_KAFKA__BOOTSTRAP_SERVERS']}",
        f"dev-stack: S3: {env['MODERATOR_S3__ENDPOINT_URL']}, "
        f"bucket {', '.join(buckets)} (versioned)",
        f"dev-stack: topics: {listed}",
        load,
        "dev-stack: then, in that shell (the tenant needs a policy in the policies folder):",
        "  moderator run --engine fake --policies policies &",
        f"{upload}# without FILE: a sample image",
        f"{verdicts}# waits for its verdict",
        "dev-stack: serving until SIGTERM, SIGINT (Ctrl-C) or SIGHUP",
    ]
    return "\n".join(lines) + "\n"


def _sourceable(path: Path) -> str:
    """`path` as `.` finds it: a bare name would be looked up on PATH, not here."""
    text = str(path)
    return text if "/" in text else f"./{text}"
