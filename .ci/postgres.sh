#!/usr/bin/env bash
# PostgreSQL for the audit-store tests: Debian's package, a cluster on 127.0.0.1:5432, a role and
# database for the tests. Idempotent; prints the URL the tests read (AUDIT_TEST_POSTGRES_URL).
set -euo pipefail

if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi
version="$(ls /etc/postgresql | sort -V | tail -n 1)"
pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 2>/dev/null || true
for _ in $(seq 1 30); do
  su postgres -c "pg_isready -q -h 127.0.0.1 -p 5432" && break
  sleep 1
done
as_postgres() { su postgres -c "psql -qtA -v ON_ERROR_STOP=1 -c \"$1\""; }
if [ "$(as_postgres "SELECT 1 FROM pg_roles WHERE rolname = 'moderator'")" != "1" ]; then
  as_postgres "CREATE ROLE moderator LOGIN PASSWORD 'moderator-test'" >&2
fi
if [ "$(as_postgres "SELECT 1 FROM pg_database WHERE datname = 'test'")" != "1" ]; then
  as_postgres "CREATE DATABASE test OWNER moderator" >&2
fi
echo "postgresql://moderator:moderator-test@127.0.0.1:5432/test"
