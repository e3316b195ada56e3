#!/usr/bin/env bash
# User-space instructions per message of the real server, process by process (the
# worker with its spool writer thread, and the delivery agent), counted by callgrind
# while smtp-source sends N messages (1 KiB, one per connection) to `mta run`
# relaying into an `smtp-sink -c`: deterministic to a fraction of a percent, so two
# builds can be compared where wall rates move by 20% from run to run. Counting is
# switched on after a warm-up of 200 messages (agent started, pool open) and off
# before the server stops, so start-up and shutdown are left out.
# Kernel work (the syscalls, TCP on loopback) is not counted: see benches/threads.py.
#
#   benches/server-instructions.sh [-p PYTHONDIR] [-n N] [-- MTA_ARGS...]   (e.g. -- --no-delivery)
#
# PYTHONDIR (default ./python, which needs ./scripts/dev-build) holds the mta package to run.
#
# Needs valgrind and Postfix's smtp-source/smtp-sink (Debian packages). About 30 s at N=2000.
set -euo pipefail
PD=python N=2000
while getopts "p:n:" o; do case $o in p) PD=$OPTARG ;; n) N=$OPTARG ;; *) exit 2 ;; esac; done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$(python3 -c "import sys; print(sys.executable)")  # the interpreter itself, not a shim script
SBIN=/usr/sbin
# Two free ports, each found free (PORT + 1 may be any other socket's).
read -r PORT SINK_PORT < <(python3 -c "import socket
a, b = socket.socket(), socket.socket()
a.bind(('127.0.0.1', 0)); b.bind(('127.0.0.1', 0))
print(a.getsockname()[1], b.getsockname()[1])")
WORK=$(mktemp -d /tmp/mta-instr-XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
timeout 600 "$SBIN/smtp-sink" -c -u postfix "127.0.0.1:$SINK_PORT" 1024 >"$WORK/sink.log" 2>&1 & pids+=($!)
sink_up=""
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null && { sink_up=1; break; }; sleep 0.1; done
[ -n "$sink_up" ] || { echo "smtp-sink did not start on $SINK_PORT:" >&2; cat "$WORK/sink.log" >&2; exit 1; }
PYTHONPATH=$PD timeout 600 valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
  --callgrind-out-file="$WORK/cg.%p" "$PY" -m mta run --config "$HERE/mta-bench.toml" \
  --listen "127.0.0.1:$PORT" --spool "$WORK/spool" --hostname mx.example.test \
  --relay-to "127.0.0.1:$SINK_PORT" "$@" >"$WORK/mta.log" 2>&1 & pids=($! "${pids[@]}")
up=""
for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { up=1; break; }; sleep 0.2; done
[ -n "$up" ] || { echo "mta did not start (PYTHONPATH=$PD):" >&2; tail -20 "$WORK/mta.log" >&2; exit 1; }
send() { timeout 600 "$SBIN/smtp-source" -s 10 -m "$1" -l 1024 -f from@example.test -t to@example.test \
  -M client.example.test "127.0.0.1:$PORT"; }
send 200
# Count only once the agent has delivered the warm-up: started with the worker, it may
# still be importing (compiling, where no bytecode is cached) when the warm-up ends, and
# under callgrind that start-up would be counted as per-message work.
delivered() { grep -c '"status":"delivered"' "$WORK/mta.log" || true; }
case " $* " in
  *" --no-delivery "*) ;;
  *) for _ in $(seq 600); do [ "$(delivered)" -ge 200 ] && break; sleep 0.2; done
     [ "$(delivered)" -ge 200 ] || { echo "the warm-up was not delivered in 120 s" >&2; tail -20 "$WORK/mta.log" >&2; exit 1; } ;;
esac
sleep 2
callgrind_control -i on >/dev/null 2>&1
send "$N"
sleep 2  # the last deliveries and deletes
callgrind_control -i off >/dev/null 2>&1
callgrind_control -d >/dev/null 2>&1
sleep 1
queued=$(grep -c " queued " "$WORK/mta.log" || true)
[ "$queued" -eq $((N + 200)) ] || { echo "mta logged $queued queued messages, not $((N + 200))" >&2; exit 1; }
for f in "$WORK"/cg.*.1; do
  awk -v n="$N" '/^cmd:/ {cmd = ($4 == "mta.delivery.agent") ? "delivery agent" : "worker"}
                 /^(summary|totals):/ {t = $2} END {printf "%-15s %9d instructions/msg\n", cmd, t / n}' "$f"
done
