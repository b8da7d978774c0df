#!/usr/bin/env bash
# Entry point of the node's PostgreSQL container (uploaded by stacks/postgres.py): sets the
# role's password from the secret file on every start, then runs the official entry point.
#
# Why: the official image applies POSTGRES_PASSWORD(_FILE) only when it initialises an empty
# data directory (docker-library/postgres 17/bookworm/docker-entrypoint.sh: initdb --pwfile,
# only when PG_VERSION is absent). The data volume outlives `pulumi destroy`, while a new
# stack generates a new password: without this, a re-created node cannot log in to its own
# database. Single-user mode changes the password before the server listens at all.
set -Eeuo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
if [[ -s $PGDATA/PG_VERSION && -n ${POSTGRES_PASSWORD_FILE:-} ]]; then
  password=$(<"$POSTGRES_PASSWORD_FILE")
  sql="ALTER ROLE \"${POSTGRES_USER:-postgres}\" WITH PASSWORD '${password//\'/\'\'}';"
  as_postgres=()
  ((EUID == 0)) && as_postgres=(gosu postgres)
  if ! printf '%s\n' "$sql" | "${as_postgres[@]}" postgres --single -D "$PGDATA" postgres >/dev/null; then
    echo "llm-node: could not set the password of ${POSTGRES_USER:-postgres} from $POSTGRES_PASSWORD_FILE" >&2
    exit 1
  fi
  echo "llm-node: password of ${POSTGRES_USER:-postgres} set from $POSTGRES_PASSWORD_FILE" >&2
fi
exec docker-entrypoint.sh "$@"
