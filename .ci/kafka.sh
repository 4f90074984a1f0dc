#!/usr/bin/env bash
# The real-broker tests' Apache Kafka: Debian's Java and Maven when missing, then the pinned jars
# resolved once from Maven Central into ~/.cache/moderator (or $MODERATOR_KAFKA_JARS).
# Idempotent; needs the virtualenv (make install). Prints the jar folder.
set -euo pipefail

if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq default-jre-headless maven >&2
fi
.venv/bin/python -m moderator.dev.kafka.cluster --resolve
