#!/bin/sh
# `mta bench compare` start command of the traffic-shaping benchmark (compare-shaping.toml):
# runs the given command (mta run ...) with its output appended to LOG, so the delivery
# agent's "throttle stats" line (logged as it stops) outlives the trial's directory; with
# REDIS_PORT other than 0, first a redis-server on 127.0.0.1:REDIS_PORT (no persistence, a
# fresh empty one per trial) in a session of its own, so the tool's SIGTERM to this group
# stops mta first and Redis only after mta has exited (its last lease releases reach it).
#   sh shaping-run.sh REDIS_PORT LOG COMMAND...
set -eu
redis_port=$1 log=$2
shift 2
redis=""
if [ "$redis_port" != 0 ]; then
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
    echo "shaping-run.sh: port $redis_port already answers; not sharing another Redis" >&2
    exit 1
  fi
  dir=$(mktemp -d /tmp/mta-bench-redis-XXXXXX)
  setsid redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --dir "$dir" --loglevel warning > "$dir/redis.log" 2>&1 &
  redis=$!
  i=0
  until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -lt 200 ] || { echo "redis-server did not start" >&2; kill $redis; exit 1; }
    sleep 0.05
  done
fi
echo "=== $(date -u +%H:%M:%S) start: $*" >> "$log"
"$@" >> "$log" 2>&1 &
mta=$!
# The tool signals the whole group (mta included); this shell only waits for mta to finish.
trap ':' TERM INT
while kill -0 $mta 2>/dev/null; do wait $mta || true; done
if [ -n "$redis" ]; then
  kill $redis 2>/dev/null || true
  wait $redis 2>/dev/null || true
  rm -rf "$dir"
fi
