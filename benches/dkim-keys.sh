#!/bin/sh
# The signing keys of benches/compare-dkim.toml, made once with `mta dkim keygen` in DIR
# (default /tmp/mta-bench-dkim, where benches/mta-bench-dkim-*.toml look): bench-rsa
# (RSA-2048, also OpenDKIM's key) and bench-ed (Ed25519), for d=example.test, the domain
# of the bench messages' From: (mta.bench: from@example.test). An existing key is kept.
#   PYTHONPATH=/tmp/mta-dkim/python sh benches/dkim-keys.sh [DIR]
set -eu
DIR=${1:-/tmp/mta-bench-dkim}
for spec in bench-rsa:rsa2048 bench-ed:ed25519; do
  sel=${spec%%:*} alg=${spec#*:}
  [ -e "$DIR/$sel.private" ] || python3 -m mta dkim keygen --domain example.test --selector "$sel" \
    --out "$DIR" --algorithm "$alg" > /dev/null
done
ls "$DIR"
