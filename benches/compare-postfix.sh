#!/bin/sh
# Postfix with OpenDKIM as its milter, for benches/compare-dkim.toml. (Plain Postfix is the
# ready-made peer `peer = "postfix"`, mta.bench.peers.postfix, with the same main.cf.)
# Postfix as a peer relay for `mta bench compare`, configured exactly as in
# ../shared/BENCHMARKING.md (main.cf written from empty with postconf -e; the smtp inet
# line replaced by one on a loopback port). It runs as its own instance
# (/etc/postfix-mta-bench, queue /var/spool/postfix-mta-bench) so the system's Postfix,
# if any, is left alone. Needs root and the Debian postfix package.
#   compare-postfix.sh start PORT SINKPORT   configure, empty the queue, start (daemonizes)
#   compare-postfix.sh stop                  stop, then empty the queue (fresh spool per trial)
#   compare-postfix.sh drained               exit 0 when the queue is empty
#   compare-postfix.sh pidfile               print the master's pid file
#   compare-postfix.sh start-opendkim PORT SINKPORT KEY [DOMAIN [SELECTOR]]
#       as start, with OpenDKIM 2.11 (Debian) as the instance's milter (smtpd_milters and
#       non_smtpd_milters), signing mail from DOMAIN (default example.test) with the PEM KEY
#       as SELECTOR (default: KEY's name without .private), relaxed/relaxed, From over-signed.
#       OpenDKIM runs from its own directory (its config, socket and pid file; never
#       /etc/opendkim.conf). This one stays in the foreground, Postfix's master (start-fg)
#       and opendkim -f its children, so `mta bench compare` charges both to its process
#       tree; `stop` stops both.
set -eu
CONF=/etc/postfix-mta-bench
QUEUE=/var/spool/postfix-mta-bench
DATA=/var/lib/postfix-mta-bench
DKIM=/var/lib/postfix-mta-bench-opendkim  # OpenDKIM's config, key copy and pid file (root's: OpenDKIM checks)
DKIM_SOCK=opendkim/opendkim.sock  # under $QUEUE: smtpd runs chrooted there

configure() {
  port=$1 sinkport=$2
  mkdir -p "$CONF" "$DATA" "$QUEUE"
  : > "$CONF/main.cf"
  pc() { postconf -c "$CONF" -e "$@"; }
  pc compatibility_level=3.6 myhostname=mta.example.test mydomain=example.test 'myorigin=$myhostname'
  pc inet_interfaces=loopback-only inet_protocols=ipv4 mydestination= relay_domains=example.test
  pc "relayhost=[127.0.0.1]:$sinkport" mynetworks=127.0.0.0/8
  pc smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination
  pc smtp_dns_support_level=disabled smtp_host_lookup=native lmtp_host_lookup=native smtpd_peername_lookup=no
  pc default_process_limit=200 smtpd_client_connection_count_limit=0
  pc smtpd_client_connection_rate_limit=0 smtpd_client_message_rate_limit=0
  pc alias_maps= alias_database= local_recipient_maps= biff=no append_dot_mydomain=no
  pc maillog_file=/var/log/postfix-mta-bench.log
  if [ -n "${POSTFIX_TLS_DIR:-}" ]; then
    # STARTTLS offered (server side only), for the TLS comparison (benches/compare-tls.toml)
    pc "smtpd_tls_cert_file=$POSTFIX_TLS_DIR/cert.pem" "smtpd_tls_key_file=$POSTFIX_TLS_DIR/key.pem" \
       smtpd_tls_security_level=may
  else
    pc smtpd_tls_security_level=none
  fi
  if [ -n "${MILTER:-}" ]; then
    pc "smtpd_milters=$MILTER" "non_smtpd_milters=$MILTER" milter_default_action=tempfail
  fi
  # the separate instance: its own queue and data directories
  pc "queue_directory=$QUEUE" "data_directory=$DATA"
  sed "s/^smtp \{1,\}inet .*/127.0.0.1:$port inet n - y - - smtpd/" /usr/share/postfix/master.cf.dist > "$CONF/master.cf" 2>/dev/null \
    || sed "s/^smtp \{1,\}inet .*/127.0.0.1:$port inet n - y - - smtpd/" /etc/postfix/master.cf.proto > "$CONF/master.cf"
  postfix -c "$CONF" set-permissions >/dev/null 2>&1 || true
  postfix -c "$CONF" check >/dev/null 2>&1 || true
}

empty_queue() { postsuper -c "$CONF" -d ALL >/dev/null 2>&1 || true; }

# OpenDKIM signing as Debian would run it for this instance, from $DKIM: a unix socket
# in the queue directory that the postfix user can write to; no syslog (no daemon here).
opendkim_config() {
  key=$1 domain=$2 selector=$3
  mkdir -p "$DKIM" "$QUEUE/opendkim"
  chmod 0700 "$DKIM"
  chmod 0755 "$QUEUE/opendkim"
  rm -f "$QUEUE/$DKIM_SOCK" "$DKIM/opendkim.pid"
  # a copy: OpenDKIM refuses a key in a directory others can write to (/tmp)
  install -m 0600 "$key" "$DKIM/$selector.private"
  cat > "$DKIM/opendkim.conf" <<EOF
Mode                    s
Domain                  $domain
Selector                $selector
KeyFile                 $DKIM/$selector.private
Canonicalization        relaxed/relaxed
SignatureAlgorithm      rsa-sha256
OversignHeaders         From
InternalHosts           127.0.0.1
Socket                  local:$QUEUE/$DKIM_SOCK
PidFile                 $DKIM/opendkim.pid
UMask                   0000
Syslog                  no
SoftwareHeader          no
EOF
}

stop_opendkim() {
  [ -e "$DKIM/opendkim.pid" ] || return 0
  pid=$(tr -d ' \n' < "$DKIM/opendkim.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$DKIM/opendkim.pid" "$QUEUE/$DKIM_SOCK"
}

case "${1:-}" in
  start)
    configure "${2:?port}" "${3:?sink port}"
    empty_queue
    postfix -c "$CONF" start >/dev/null 2>&1
    ;;
  start-opendkim)
    port=${2:?port} sinkport=${3:?sink port} key=${4:?key file}
    domain=${5:-example.test} selector=${6:-$(basename "$key" .private)}
    stop_opendkim
    MILTER="unix:$DKIM_SOCK" configure "$port" "$sinkport"
    opendkim_config "$key" "$domain" "$selector"
    empty_queue
    opendkim -f -x "$DKIM/opendkim.conf" &
    for _ in $(seq 100); do [ -S "$QUEUE/$DKIM_SOCK" ] && break; sleep 0.1; done
    [ -S "$QUEUE/$DKIM_SOCK" ] || { echo "opendkim did not start" >&2; kill $! 2>/dev/null; exit 1; }
    postfix -c "$CONF" start-fg >/dev/null 2>&1 || true
    wait
    ;;
  stop)
    postfix -c "$CONF" stop >/dev/null 2>&1 || true
    # wait for the master to go, so the next trial can bind the port
    for _ in $(seq 100); do [ -e "$QUEUE/pid/master.pid" ] && kill -0 "$(cat "$QUEUE/pid/master.pid" | tr -d ' ')" 2>/dev/null || break; sleep 0.1; done
    stop_opendkim
    empty_queue
    ;;
  drained)
    n=$(find "$QUEUE/maildrop" "$QUEUE/incoming" "$QUEUE/active" "$QUEUE/deferred" -type f 2>/dev/null | wc -l)
    [ "$n" -eq 0 ]
    ;;
  pidfile)
    echo "$QUEUE/pid/master.pid"
    ;;
  *)
    echo "usage: $0 start PORT SINKPORT | start-opendkim PORT SINKPORT KEY [DOMAIN [SELECTOR]] | stop | drained | pidfile" >&2; exit 2
    ;;
esac
