#!/bin/sh
# Speed check of `mta bench send` and `mta bench sink` against Postfix's smtp-source and
# smtp-sink, in one run, alternating: 1 KiB, 50 sessions, one message per connection.
# Usage: benches/compare-tools.sh [N] [TRIALS]   (run from the repository root)
set -u
N=${1:-20000}
TRIALS=${2:-3}
PORT=${PORT:-3031}
PY=${PYTHON:-python}
export PYTHONPATH=${PYTHONPATH:-python}
SRC="smtp-source -s 50 -m $N -l 1024 -f from@example.test -t to@example.test -M client.example.test 127.0.0.1:$PORT"
OURS="$PY -m mta bench send --target 127.0.0.1:$PORT --messages $N --size 1024 --sessions 50 --json - -q"

wait_port() { for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
rate() { awk -v n="$N" -v s="$1" 'BEGIN { printf "%.0f", n / s }'; }
timed() { s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); awk -v a="$s" -v b="$e" 'BEGIN { print b - a }'; }

for t in $(seq "$TRIALS"); do
  smtp-sink -u postfix 127.0.0.1:$PORT 1024 & SINK=$!; wait_port
  el=$(timed $SRC); echo "trial $t smtp-source -> smtp-sink: $(rate "$el")/s"
  r=$($OURS | $PY -c 'import json,sys; print(json.load(sys.stdin)["messages_per_s"])')
  echo "trial $t mta bench send -> smtp-sink: $r/s"
  kill $SINK; wait $SINK 2>/dev/null
  $PY -m mta bench sink --listen 127.0.0.1:$PORT --quiet --json /tmp/mta-bench-sink.$$.json & SINK=$!; wait_port
  el=$(timed $SRC); echo "trial $t smtp-source -> mta bench sink: $(rate "$el")/s"
  kill $SINK; wait $SINK 2>/dev/null
  echo "trial $t   (mta bench sink's own count: $($PY -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["messages"], "msgs", r["messages_per_s"], "/s")' /tmp/mta-bench-sink.$$.json))"
done
rm -f /tmp/mta-bench-sink.$$.json
