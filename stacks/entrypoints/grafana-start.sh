#!/bin/sh
# Entry point of the node's Grafana container (uploaded by stacks/grafana.py): sets the admin
# password from the secret file on every start, then runs the official image's /run.sh.
#
# Why: Grafana applies GF_SECURITY_ADMIN_PASSWORD(__FILE) only when it creates its database;
# the data volume outlives `pulumi destroy` while a new stack generates a new password, so
# the exported grafana_admin_password would be wrong. `grafana cli admin
# reset-admin-password --password-from-stdin` (Grafana 9.1+) writes the hash into the
# database while the server is not running; the password never appears in argv.
set -eu
data=${GF_PATHS_DATA:-/var/lib/grafana}
if [ -f "$data/grafana.db" ] && [ -n "${GF_SECURITY_ADMIN_PASSWORD__FILE:-}" ]; then
  grafana cli --homepath "${GF_PATHS_HOME:-/usr/share/grafana}" --config "${GF_PATHS_CONFIG:-/etc/grafana/grafana.ini}" \
    admin reset-admin-password --password-from-stdin <"$GF_SECURITY_ADMIN_PASSWORD__FILE" >/dev/null
  echo "llm-node: Grafana admin password set from $GF_SECURITY_ADMIN_PASSWORD__FILE" >&2
fi
exec /run.sh "$@"
