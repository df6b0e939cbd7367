#!/usr/bin/env bash
# Installs (Debian's package) and starts a local PostgreSQL on 127.0.0.1 for the multi-worker
# Optuna test, then prints the database URL. Needs root and apt; prints nothing where it can't.
set -euo pipefail
[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 0
if ! command -v pg_lsclusters >/dev/null || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
read -r version cluster port status _ < <(pg_lsclusters -h | head -n 1)
[ "$status" = online ] || pg_ctlcluster "$version" "$cluster" start >/dev/null
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 1; done
su postgres -c "psql -q -p $port -tc \"SELECT 1 FROM pg_roles WHERE rolname='rlhf'\"" | grep -q 1 \
  || su postgres -c "psql -q -p $port -c \"CREATE ROLE rlhf LOGIN PASSWORD 'rlhf'\"" >/dev/null
su postgres -c "psql -q -p $port -c 'DROP DATABASE IF EXISTS rlhf_optuna_test'" >/dev/null 2>&1
su postgres -c "psql -q -p $port -c 'CREATE DATABASE rlhf_optuna_test OWNER rlhf'" >/dev/null
echo "postgresql+psycopg2://rlhf:rlhf@127.0.0.1:$port/rlhf_optuna_test"
