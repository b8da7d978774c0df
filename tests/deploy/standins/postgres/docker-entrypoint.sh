#!/bin/bash
# The parts of docker-library/postgres's docker-entrypoint.sh the stack relies on:
#  - POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (file_env), POSTGRES_USER (default postgres),
#    POSTGRES_DB (default: the user);
#  - PGDATA initialised only when it holds no cluster (PG_VERSION), so a retained volume keeps
#    its data and its password; owned by postgres, mode 0700;
#  - listen_addresses='*' and `host all all all scram-sha-256` (password authentication);
#  - the server runs in the foreground as the postgres user.
set -Eeuo pipefail

file_env() {  # VAR [default]: the value of VAR, or the contents of the file VAR_FILE names
  local var=$1 file_var="${1}_FILE" default=${2:-}
  if [ "${!var:-}" ] && [ "${!file_var:-}" ]; then
    echo >&2 "error: both $var and $file_var are set (but are exclusive)"; exit 1
  fi
  local value=$default
  if [ "${!var:-}" ]; then value=${!var}; elif [ "${!file_var:-}" ]; then value=$(<"${!file_var}"); fi
  export "$var"="$value"
  unset "$file_var"
}

if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 0700 "$PGDATA"
  exec gosu postgres "${BASH_SOURCE[0]}" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  file_env POSTGRES_PASSWORD
  file_env POSTGRES_USER postgres
  file_env POSTGRES_DB "$POSTGRES_USER"
  if [ -z "$POSTGRES_PASSWORD" ]; then
    echo >&2 "error: the database is uninitialized and no POSTGRES_PASSWORD(_FILE) is given"; exit 1
  fi
  initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
      -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  fi
  echo "stand-in entrypoint: database $POSTGRES_DB initialised for $POSTGRES_USER"
fi
unset POSTGRES_PASSWORD
exec "$@"
