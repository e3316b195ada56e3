#!/usr/bin/env bash
# A/B of mta builds on the relaying accept path: for each round, each build in turn
# (A B C A B C ...) accepts N messages of SIZE bytes (default 1 KiB) from smtp-source (50 sessions, one message per
# connection) while relaying everything into an `smtp-sink -c`. Prints the rate and the
# CPU per message of the mta process tree (worker, spool writer, delivery agent), of the
# sink and of the generator, so a build's cost is seen apart from the machine's noise.
#
#   benches/ab.sh [-n N] [-r ROUNDS] [-w WORKERS] [-c CONFIG] [-s SIZE] PYTHONDIR[::CONFIG]...
#
# A PYTHONDIR::CONFIG argument runs that build with its own config (the same build with and
# without a plugin: benches/mta-bench-noop_sync.toml; benches/plugins/ is on PYTHONPATH).
#
# Each PYTHONDIR holds an `mta` package with its extension built (a worktree of the
# commit: `git worktree add --detach /tmp/snap REV && cd /tmp/snap &&
# CARGO_TARGET_DIR=target cargo build --release --features python &&
# ln -sf ../../target/release/libmta_core.so python/mta/_native.abi3.so`).
# Needs the Debian postfix package (smtp-source, smtp-sink). Ports 3525/3526.
set -euo pipefail
N=20000 ROUNDS=3 WORKERS=1 CONFIG="" SIZE=1024
while getopts "n:r:w:c:s:" o; do
  case $o in n) N=$OPTARG ;; r) ROUNDS=$OPTARG ;; w) WORKERS=$OPTARG ;; c) CONFIG=$OPTARG ;; s) SIZE=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-n N] [-r ROUNDS] [-w WORKERS] [-c CONFIG] [-s SIZE] PYTHONDIR..." >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'kill $MTA $SINK 2>/dev/null || true; rm -rf "$work"' EXIT
if [ -z "$CONFIG" ]; then
  CONFIG=$work/mta.toml
  printf '[smtp]\nreverse_dns = false\n[delivery]\ntls = "none"\n' > "$CONFIG"  # as benches/mta-bench.toml
fi
tree_cpu() { PYTHONPATH="$HERE/../python" python3 -c "from mta.bench.procs import tree_cpu_seconds as t; print(t($1))"; }
wait_port() { for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

for round in $(seq "$ROUNDS"); do
  for spec in "$@"; do
    py=${spec%%::*} cfg=$CONFIG label=$spec
    case $spec in *::*) cfg=${spec#*::} label="$py $(basename "$cfg" .toml)" ;; esac
    rm -rf "$work/spool"
    /usr/sbin/smtp-sink -c -u postfix 127.0.0.1:3526 1024 > "$work/sink.out" 2>&1 & SINK=$!
    PYTHONPATH=$py:$HERE/plugins timeout 600 python3 -m mta run --config "$cfg" --listen 127.0.0.1:3525 \
      --spool "$work/spool" --hostname mx.example.test --relay-to 127.0.0.1:3526 --workers "$WORKERS" \
      > "$work/mta.log" 2>&1 & MTA=$!
    wait_port 3525 || { echo "mta did not start"; cat "$work/mta.log"; exit 1; }
    sleep 0.5
    m0=$(tree_cpu $MTA); k0=$(tree_cpu $SINK); t0=$(date +%s.%N)
    ( /usr/bin/time -f "%U %S" timeout 600 /usr/sbin/smtp-source -s 50 -m "$N" -l "$SIZE" -f from@example.test \
        -t to@example.test -M client.example.test 127.0.0.1:3525 ) 2> "$work/src.time"
    t1=$(date +%s.%N); m1=$(tree_cpu $MTA); k1=$(tree_cpu $SINK)
    awk -v py="$label" -v r="$round" -v n="$N" -v t="$(echo "$t1 - $t0" | bc -l)" -v m="$(echo "$m1 - $m0" | bc -l)" \
        -v k="$(echo "$k1 - $k0" | bc -l)" -v src="$(tail -1 "$work/src.time")" 'BEGIN {
      split(src, s, " ");
      printf "round %d %-40s %7.0f msgs/s  mta %5.0f us/msg  sink %4.0f us/msg  smtp-source %4.0f us/msg\n",
             r, py, n / t, m * 1e6 / n, k * 1e6 / n, (s[1] + s[2]) * 1e6 / n }'
    kill $MTA; wait $MTA 2>/dev/null || true; kill $SINK; wait $SINK 2>/dev/null || true
  done
done
