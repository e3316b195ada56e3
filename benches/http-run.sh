#!/bin/sh
# `mta bench compare` start command of the HTTP-face benchmark (compare-http.toml): runs the
# given command (mta run ...) with its output appended to LOG, and beside it, per MODE, a peer
# from http_peers.py: "scrape PORT" GETs /metrics every second, "webhook PORT" receives the
# events; "off" runs none. The peer is started outside this process tree (setsid, its parent
# gone), so its CPU is not charged to mta; it is stopped, and writes its summary line to LOG,
# after mta has exited.
#   sh http-run.sh MODE PORT LOG COMMAND...
set -eu
mode=$1 port=$2 log=$3
shift 3
here=$(dirname "$0")
pidfile=$(mktemp /tmp/mta-bench-http-XXXXXX)
if [ "$mode" != off ]; then
  setsid sh -c "python3 '$here/http_peers.py' $mode $port '$log' >> '$log' 2>&1 & echo \$! > '$pidfile'" &
  wait $!
  i=0
  until [ -s "$pidfile" ]; do i=$((i + 1)); [ $i -lt 100 ] || break; sleep 0.02; done
fi
echo "=== $(date -u +%H:%M:%S) start ($mode): $*" >> "$log"
"$@" >> "$log" 2>&1 &
mta=$!
trap ':' TERM INT
while kill -0 $mta 2>/dev/null; do wait $mta || true; done
if [ -s "$pidfile" ]; then
  peer=$(cat "$pidfile")
  kill "$peer" 2>/dev/null || true
  i=0
  while kill -0 "$peer" 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.05; done
fi
rm -f "$pidfile"
