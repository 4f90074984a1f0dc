"""In-memory Kafka fake for `moderator.ingest.ports`, with the real transaction and group rules."""
