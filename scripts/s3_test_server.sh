#!/bin/bash
# A real S3 server for the tests and benchmarks: a throw-away, single-node
# Ceph cluster (one monitor, one OSD, no manager) with the RADOS Gateway on
# 127.0.0.1, from Debian's packages alone. Everything it creates lives below
# $S3_DIR; the daemons are stopped by the PIDs in their pid files, never by name.
#
#   s3_test_server.sh install        apt-get the packages if missing (~75 s once)
#   s3_test_server.sh start          build the cluster, print S3_* lines when it serves
#   s3_test_server.sh stop           kill the daemons, remove $S3_DIR
#   s3_test_server.sh env            print the S3_* lines again
#   s3_test_server.sh gateway-stop   kill only radosgw (the server "goes away")
#   s3_test_server.sh gateway-start  start radosgw again on the same cluster, with
#                                    S3_GATEWAY_ARGS (e.g. --rgw-max-concurrent-requests=2)
#                                    added to its command line
#
# Settings (environment): S3_DIR (default /tmp/tvix-s3-test), S3_PORT (S3 over
# HTTP, 17480), S3_MON_PORT (13300), S3_OSD_PORTS (a range, 16800-16899),
# S3_OSD_STORE (memstore: all in RAM, or bluestore: a sparse file in S3_DIR),
# S3_ACCESS_KEY, S3_SECRET_KEY. Needs bash >= 5 and root (or a user who can
# write S3_DIR). Pacific (16.2) quirks are noted where they are handled.
set -euo pipefail

PACKAGES="ceph-mon ceph-osd radosgw ceph-common"
S3_DIR=${S3_DIR:-/tmp/tvix-s3-test}
S3_PORT=${S3_PORT:-17480}
S3_MON_PORT=${S3_MON_PORT:-13300}
S3_OSD_PORTS=${S3_OSD_PORTS:-16800-16899}
S3_OSD_STORE=${S3_OSD_STORE:-memstore}
S3_ACCESS_KEY=${S3_ACCESS_KEY:-TVIXTESTACCESSKEY001}
S3_SECRET_KEY=${S3_SECRET_KEY:-tvixtestsecretkey00000000000000000000001}
CONF=$S3_DIR/ceph.conf
# Marks a directory as ours, so `stop` never removes anything else.
MARKER=$S3_DIR/.tvix-s3-test-server

say() { printf 's3_test_server: %s\n' "$*" >&2; }

install() {
  local missing="" p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  say "installing$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# Kills the daemon whose pid file is $1, if that PID still runs a Ceph daemon.
kill_pidfile() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  if [ -n "$pid" ] && grep -qE '^(ceph-mon|ceph-osd|radosgw)$' "/proc/$pid/comm" 2>/dev/null; then
    # The cluster is disposable: SIGKILL is immediate, SIGTERM takes seconds.
    kill -9 "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$1"
}

stop() {
  [ -d "$S3_DIR" ] || return 0
  if [ ! -f "$MARKER" ]; then
    say "$S3_DIR exists but was not made by this script; not touching it"
    return 1
  fi
  local name
  for name in client.rgw.gw osd.0 mon.a; do kill_pidfile "$S3_DIR/run/$name.pid" & done
  wait
  rm -rf "$S3_DIR"
}

print_env() {
  echo "S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
  echo "S3_ACCESS_KEY=$S3_ACCESS_KEY"
  echo "S3_SECRET_KEY=$S3_SECRET_KEY"
  echo "S3_REGION=us-east-1"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

gateway_start() {
  # shellcheck disable=SC2086 # S3_GATEWAY_ARGS is a list of options
  radosgw -c "$CONF" -n client.rgw.gw ${S3_GATEWAY_ARGS:-} 2>"$S3_DIR/log/rgw.start.out"
  # The frontend listens only once radosgw is initialised: an open port means ready.
  for _ in $(seq 300); do
    port_open "$S3_PORT" && return 0
    kill -0 "$(cat "$S3_DIR/run/client.rgw.gw.pid" 2>/dev/null)" 2>/dev/null || break
    sleep 0.1
  done
  say "radosgw does not listen on $S3_PORT"
  return 1
}

gateway_stop() { kill_pidfile "$S3_DIR/run/client.rgw.gw.pid"; }

fail_start() {
  say "start failed; logs in $S3_DIR/log:"
  local f
  for f in "$S3_DIR"/log/*; do
    [ -s "$f" ] && { echo "== $f" >&2; tail -n 10 "$f" >&2; }
  done
  for f in client.rgw.gw osd.0 mon.a; do kill_pidfile "$S3_DIR/run/$f.pid"; done
  exit 1
}

write_conf() {
  cat >"$CONF" <<EOF
[global]
fsid = $1
mon host = [v2:127.0.0.1:$S3_MON_PORT]
mon initial members = a
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
ms bind port min = ${S3_OSD_PORTS%-*}
ms bind port max = ${S3_OSD_PORTS#*-}
keyring = $S3_DIR/\$cluster.\$name.keyring
run dir = $S3_DIR/run
pid file = $S3_DIR/run/\$name.pid
admin socket = $S3_DIR/run/\$name.asok
log file = $S3_DIR/log/\$name.log
crash dir = $S3_DIR/crash
log to stderr = false
mon cluster log file = $S3_DIR/log/cluster.log
# One OSD: one replica, few placement groups, no redundancy warnings.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
# The monitor batches map changes once a second by default, and radosgw's
# first start makes a dozen of them: a 30 s start becomes a few seconds.
paxos propose interval = 0.1
paxos min wait = 0.01
# The monitor refuses to run below 5 % free disk; CI disks can be that full.
mon data avail warn = 2
mon data avail crit = 1
mon warn on insecure global id reclaim allowed = false
# radosgw watches objects to hear of metadata changes; after a gateway is
# killed, every change waits for its dead watch to expire (30 s by default).
osd client watch timeout = 5

[client.admin]
# Two ceph CLIs at once would share (and fight over) one admin socket.
admin socket = $S3_DIR/run/\$name.\$pid.asok

[mon]
mon data = $S3_DIR/mon

[osd]
osd data = $S3_DIR/osd
osd objectstore = $S3_OSD_STORE
memstore device bytes = 2147483648
bluestore block path = $S3_DIR/osd/block.file
bluestore block create = true
bluestore block size = 10737418240
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 536870912
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.gw]
rgw data = $S3_DIR/rgw
rgw frontends = beast endpoint=127.0.0.1:$S3_PORT
rgw thread pool size = 64
rgw enable usage log = false
EOF
}

start() {
  stop
  if port_open "$S3_PORT"; then say "port $S3_PORT is already in use"; exit 1; fi
  mkdir -p "$S3_DIR"/{mon,osd,rgw,run,log}
  touch "$MARKER"
  trap fail_start ERR
  local fsid uuid id
  fsid=$(cat /proc/sys/kernel/random/uuid)
  write_conf "$fsid"

  # Keys for the monitor, the admin CLI, the OSD and the gateway. The
  # monitor imports every key of its mkfs keyring, so no `ceph auth add`.
  local seed=$S3_DIR/seed.keyring k
  ceph-authtool -C "$S3_DIR/ceph.mon.a.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool -C "$S3_DIR/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool -C "$S3_DIR/ceph.osd.0.keyring" --gen-key -n osd.0 \
    --cap mon 'allow profile osd' --cap osd 'allow *' >/dev/null
  ceph-authtool -C "$S3_DIR/ceph.client.rgw.gw.keyring" --gen-key -n client.rgw.gw \
    --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
  cp "$S3_DIR/ceph.mon.a.keyring" "$seed"
  for k in client.admin osd.0 client.rgw.gw; do
    ceph-authtool "$seed" --import-keyring "$S3_DIR/ceph.$k.keyring" >/dev/null
  done

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$S3_MON_PORT]" "$S3_DIR/monmap" \
    >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$S3_DIR/monmap" --keyring "$seed" >/dev/null
  ceph-mon -c "$CONF" -i a 2>"$S3_DIR/log/mon.start.out"
  local ceph="ceph -c $CONF --connect-timeout 20"
  $ceph mon stat >/dev/null

  uuid=$(cat /proc/sys/kernel/random/uuid)
  id=$($ceph osd new "$uuid")
  [ "$id" = 0 ]
  # radosgw would create its pools one map change at a time; one CLI session
  # creates them all while the OSD is being built.
  { for p in .rgw.root default.rgw.log default.rgw.control default.rgw.meta \
      default.rgw.buckets.index default.rgw.buckets.data default.rgw.buckets.non-ec; do
      echo "osd pool create $p 8 8"
      echo "osd pool application enable $p rgw"
    done; } | $ceph >"$S3_DIR/log/pools.out" 2>&1 &
  local pools=$!
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$uuid" --monmap "$S3_DIR/monmap" \
    >"$S3_DIR/log/osd.mkfs.out" 2>&1
  ceph-osd -c "$CONF" -i 0 2>"$S3_DIR/log/osd.start.out"
  for _ in $(seq 150); do
    $ceph osd dump 2>/dev/null | grep -q '^osd.0 up' && break
    sleep 0.2
  done
  $ceph osd dump | grep -q '^osd.0 up'
  wait "$pools"

  gateway_start
  radosgw-admin -c "$CONF" -n client.admin user create --uid=tvix --display-name=tvix \
    --access-key="$S3_ACCESS_KEY" --secret-key="$S3_SECRET_KEY" >"$S3_DIR/log/user.json"
  trap - ERR
  print_env
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  gateway-stop) gateway_stop ;;
  gateway-start) gateway_start ;;
  *)
    echo "usage: $0 install|start|stop|env|gateway-stop|gateway-start" >&2
    exit 2
    ;;
esac
