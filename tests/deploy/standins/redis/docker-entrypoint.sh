#!/bin/sh
# The parts of docker-library/redis's entrypoint the stack relies on: `redis-server CONFIG`
# (or flags) runs as the redis user, after /data is handed to it.
set -e
case "$1" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  find . \! -user redis -exec chown redis '{}' +
  exec gosu redis "$0" "$@"
fi
exec "$@"
