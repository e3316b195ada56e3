#!/usr/bin/env bash
# Instructions per message of a benches/hotpaths.py path, counted by valgrind's
# cachegrind: deterministic, so two builds can be compared on a machine whose
# timings move by 20% from run to run. The figure is the difference between a
# run of N2 and one of N1 messages, divided by N2 - N1 (start-up cancels out);
# it counts every thread of the process (the spool writer's too).
#
#   benches/instructions.sh [-p PYTHONDIR] [-g PLUGIN] PATH [N1 N2]     (PATH: session, queue, client, lane)
#
# -g PLUGIN runs the path with that plugin (hotpaths.py --plugin; benches/plugins/).
#
# Needs valgrind (Debian package). About 25 s per path at the default 500/1500.
set -euo pipefail
PD=python PLUGIN=()
while getopts "p:g:" o; do case $o in p) PD=$OPTARG ;; g) PLUGIN=(--plugin "$OPTARG") ;; *) exit 2 ;; esac; done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-p PYTHONDIR] PATH [N1 N2]" >&2; exit 2; }
P=$1 N1=${2:-500} N2=${3:-1500}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=$(python3 -c "import sys; print(sys.executable)")  # the interpreter itself, not a shim script
count() {
  PYTHONPATH=$PD valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
    "$PY" "$HERE/hotpaths.py" --paths "$P" --messages "$1" --repeats 1 "${PLUGIN[@]}" 2>&1 >/dev/null \
    | grep "I *refs" | tr -d ',' | awk '{print $NF}'
}
a=$(count "$N1"); b=$(count "$N2")
echo "$P $(( (b - a) / (N2 - N1) )) instructions/msg  ($PD${PLUGIN[1]:+ with ${PLUGIN[1]}})"
