#!/usr/bin/env bash
# Starts a local PostgreSQL server (the Debian package) for the test suite and prints its SQLAlchemy URL.
#
# Idempotent: installs the package only when missing, creates the cluster, role and database only when
# absent, and leaves a running server running. Works as root (CI containers) or through sudo.
# Usage: export FT_TEST_POSTGRES_URL=$(bash scripts/start_postgres.sh)
# Everything but the URL goes to stderr, so the command substitution above captures only the URL.
set -euo pipefail

pg_user=${FT_PG_USER:-finetune}
pg_password=${FT_PG_PASSWORD:-finetune}
pg_database=${FT_PG_DATABASE:-finetune}
pg_port=${FT_PG_PORT:-5432}

log() { echo "start_postgres: $*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_postgres() {
  # runuser needs root; sudo covers a developer machine.
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

server_version() {
  find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
    awk -F/ '{print $5}' | sort -V | tail -n 1
}

if [ -z "$(server_version)" ] || ! command -v pg_ctlcluster >/dev/null; then
  log "installing the postgresql package"
  as_root apt-get update -q >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
fi
version=$(server_version)

if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {found = 1} END {exit !found}'; then
  log "creating cluster $version/main on port $pg_port"
  as_root pg_createcluster "$version" main --port "$pg_port" >&2
fi
# The cluster may already exist on another port; connect where it really listens.
pg_port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')

if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online" {found = 1} END {exit !found}'; then
  log "starting cluster $version/main"
  # Without systemd (containers) pg_ctlcluster starts the server itself.
  as_root pg_ctlcluster "$version" main start >&2
fi

for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$pg_port" && break
  sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$pg_port" >&2

psql_admin() {
  # Run from / so the postgres user never trips over an unreadable working directory.
  (cd / && as_postgres psql -p "$pg_port" -v ON_ERROR_STOP=1 -qtA "$@")
}

# CREATEDB lets the tests make a throwaway database per run.
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$pg_user'")" != "1" ]; then
  log "creating role $pg_user"
  psql_admin -c "CREATE ROLE \"$pg_user\" LOGIN CREATEDB PASSWORD '$pg_password'"
else
  psql_admin -c "ALTER ROLE \"$pg_user\" LOGIN CREATEDB PASSWORD '$pg_password'"
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$pg_database'")" != "1" ]; then
  log "creating database $pg_database"
  psql_admin -c "CREATE DATABASE \"$pg_database\" OWNER \"$pg_user\""
fi

echo "postgresql+psycopg://$pg_user:$pg_password@127.0.0.1:$pg_port/$pg_database"
