#!/usr/bin/env bash
# PostgreSQL benchmark, side by side in one run (docs/benchmarks.md,
# "PostgreSQL: encrypted instance vs the same stack unencrypted vs the host"):
#
#   enc    an atrest instance, class tde, on an encrypted disk (service key)
#   plain  an atrest instance, class disk, unencrypted: the same stack
#          (disk engine, FUSE file, loop device, ext4) without the cipher
#   host   PostgreSQL on the host file system (initdb in a directory)
#
# All three are the same PostgreSQL (initdb --data-checksums, default
# settings otherwise, plus what atrest sets on its instances: wal_level
# replica and, on the encrypted instance, WAL archiving into encrypted
# backup storage). pgbench TPC-B-like, initialised at --scale, then for each
# round the three take turns (the first rotates) running --clients clients
# for --time seconds. The table shows the median TPS over the rounds and the
# ratios the targets are about.
#
# With --baseline-bin, a second atrest server from that binary (another
# build, such as the previous release) adds a fourth contestant:
#
#   base   an encrypted instance (class tde, service key) of the baseline
#          build, in the same rounds, so the two builds are compared on the
#          same machine at the same time
#
#   cargo build --release -p atrest
#   scripts/bench-pg.sh [--scale 20] [--clients 4] [--time 60] [--rounds 1]
#                       [--baseline-bin PATH]
#
# Needs: PostgreSQL (initdb, pg_ctl, pgbench, psql), root (local attach).
set -euo pipefail

SCALE=20
CLIENTS=4
TIME=60
ROUNDS=1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The script reads the CLI's JSON answers.
export ATREST_OUTPUT=json
ATREST_BIN=$ROOT/target/release/atrest
BASELINE_BIN=""
DIR=/var/tmp
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=$2; shift 2 ;;
        --clients) CLIENTS=$2; shift 2 ;;
        --time) TIME=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --atrest-bin) ATREST_BIN=$2; shift 2 ;;
        --baseline-bin) BASELINE_BIN=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -x "$ATREST_BIN" ] || { echo "no atrest binary at $ATREST_BIN (cargo build --release -p atrest)" >&2; exit 1; }
PGBIN=$(dirname "$(readlink -f "$(command -v initdb)")")

WORK=$(mktemp -d "$DIR/atrest-bench-pg.XXXXXX")
chmod 755 "$WORK"
SERVER_PID=""
BASE_PID=""
HOST_PG=""
cleanup() {
    if [ -n "$HOST_PG" ]; then
        setpriv --reuid=postgres --regid=postgres --clear-groups -- "$PGBIN/pg_ctl" stop -D "$HOST_PG" -m fast -s >/dev/null 2>&1 || true
    fi
    for pid in $SERVER_PID $BASE_PID; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PORT=$(free_port)
"$ATREST_BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
done
export ATREST_ENDPOINT="http://127.0.0.1:$PORT" AWS_SHARED_CREDENTIALS_FILE="$WORK/data.admin-credentials"
PASSWORD=bench-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$PASSWORD" >"$WORK/pw"
export PGPASSWORD=$PASSWORD

db_port() { python3 -c 'import json,sys; print(json.load(sys.stdin)["port"])'; }
echo "creating the instances (8 GiB disks)" >&2
ENC_PORT=$("$ATREST_BIN" db create enc --service-key --size 8G --password-file "$WORK/pw" | db_port)
PLAIN_PORT=$("$ATREST_BIN" db create plain --class disk --unencrypted --size 8G --password-file "$WORK/pw" | db_port)

HOST_PG=$WORK/host/pgdata
mkdir -p "$WORK/host" && chown postgres:postgres "$WORK/host"
setpriv --reuid=postgres --regid=postgres --clear-groups -- "$PGBIN/initdb" -D "$HOST_PG" -U postgres \
    -E UTF8 --no-locale --data-checksums --auth-host=scram-sha-256 --pwfile="$WORK/pw" >/dev/null
HOST_PORT=$(free_port)
cat >>"$HOST_PG/postgresql.conf" <<EOF
port = $HOST_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK/host'
EOF
setpriv --reuid=postgres --regid=postgres --clear-groups -- "$PGBIN/pg_ctl" start -D "$HOST_PG" \
    -l "$WORK/host/log" -w -s

declare -A PORTS=([enc]=$ENC_PORT [plain]=$PLAIN_PORT [host]=$HOST_PORT)
TARGETS=(enc plain host)
if [ -n "$BASELINE_BIN" ]; then
    BPORT=$(free_port)
    "$BASELINE_BIN" serve --listen "127.0.0.1:$BPORT" --data-dir "$WORK/base-data" >"$WORK/base.log" 2>&1 &
    BASE_PID=$!
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$BPORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "creating the baseline build's instance" >&2
    # A baseline from before the credentials left the data dir wrote them inside it.
    BASE_CREDS=$WORK/base-data.admin-credentials
    [ -f "$BASE_CREDS" ] || BASE_CREDS=$WORK/base-data/admin-credentials
    PORTS[base]=$(ATREST_ENDPOINT="http://127.0.0.1:$BPORT" \
        AWS_SHARED_CREDENTIALS_FILE="$BASE_CREDS" \
        "$BASELINE_BIN" db create base --service-key --size 8G --password-file "$WORK/pw" | db_port)
    TARGETS+=(base)
fi
N=${#TARGETS[@]}
for t in "${TARGETS[@]}"; do
    echo "pgbench -i -s $SCALE on $t" >&2
    pgbench -h 127.0.0.1 -p "${PORTS[$t]}" -U postgres -i -s "$SCALE" -q postgres >"$WORK/init-$t.log" 2>&1
done

declare -A RESULTS
for r in $(seq "$ROUNDS"); do
    for i in $(seq 0 $((N - 1))); do
        t=${TARGETS[$(( (i + r - 1) % N ))]}
        sync
        psql -h 127.0.0.1 -p "${PORTS[$t]}" -U postgres -d postgres -qAtc "CHECKPOINT" >/dev/null
        tps=$(pgbench -h 127.0.0.1 -p "${PORTS[$t]}" -U postgres -c "$CLIENTS" -j 2 -T "$TIME" -n postgres 2>&1 |
            sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
        echo "round $r: $t: $tps TPS" >&2
        RESULTS[$t]="${RESULTS[$t]:-} $tps"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ENC=$(echo "${RESULTS[enc]}" | median)
PLAIN=$(echo "${RESULTS[plain]}" | median)
HOST=$(echo "${RESULTS[host]}" | median)
echo
echo "pgbench TPC-B-like, scale $SCALE, $CLIENTS clients, ${TIME}s, $ROUNDS round(s) (median TPS)"
printf '%-40s %10s\n' "target" "TPS"
printf '%-40s %10.0f\n' "atrest instance, encrypted (tde)" "$ENC"
printf '%-40s %10.0f\n' "atrest instance, unencrypted (disk)" "$PLAIN"
printf '%-40s %10.0f\n' "PostgreSQL on the host file system" "$HOST"
awk -v e="$ENC" -v p="$PLAIN" -v h="$HOST" 'BEGIN {
    printf "encrypted / unencrypted: %.3f (target >= 0.97)\n", e / p
    printf "encrypted / host:        %.3f (target >= 0.85)\n", e / h
    printf "unencrypted / host:      %.3f\n", p / h
}'
if [ -n "$BASELINE_BIN" ]; then
    BASE=$(echo "${RESULTS[base]}" | median)
    printf '%-40s %10.0f\n' "encrypted, baseline build" "$BASE"
    awk -v e="$ENC" -v b="$BASE" 'BEGIN { printf "encrypted / baseline build: %.3f\n", e / b }'
fi
