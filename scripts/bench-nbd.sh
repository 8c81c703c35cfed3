#!/usr/bin/env bash
# NBD benchmark, side by side in one run: an encrypted atrest disk served by
# `atrest serve`, a raw file served by qemu-nbd (no encryption) and a LUKS
# image served by qemu-nbd, all of the same size, measured with fio's `nbd`
# ioengine (libnbd). See docs/benchmarks.md, "NBD: atrest vs qemu-nbd".
#
#   cargo build --release -p atrest
#   scripts/bench-nbd.sh [--size 2G] [--runtime 10] [--rounds 1]
#
# Cases: 1 MiB sequential write, 1 MiB sequential read, 4 KiB random write,
# 4 KiB random read, each at iodepth 16 and 32 (--iodepths). Every target is
# first filled by one sequential pass of 1 MiB writes, so reads read data.
# Then, for each round and each case, the three targets take turns (which
# one starts rotates), so drift on the machine falls on all of them alike.
# The table shows the median over the rounds: MB/s (10^6 bytes/s) and IOPS.
#
# The page cache is put in a known state before every fio run: the three
# backing files (atrest's pool, the raw file, the LUKS image) are synced, so
# one run's dirty pages are not written back during the next, and the
# target's file is read once, so reads come from the page cache (on a
# machine that reclaims idle page cache proactively, as DAMON does in the
# kernel of the VM this was written on, they otherwise come from the device
# or not depending on the order of the runs). With --qemu-cache none the qemu-nbd files are not
# read: qemu-nbd reads them with O_DIRECT. --cold adds the two read cases
# with the target's file dropped from the page cache first
# (POSIX_FADV_DONTNEED through `dd iflag=nocache`); the sequential one reads
# one pass at most, so it does not read back what it cached.
#
# Needs: fio with the nbd engine, qemu-nbd, qemu-img, python3.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/bench-nbd.sh [options]
  --size SIZE         size of each target, K/M/G/T suffixes (binary) (default 2G)
  --runtime SECONDS   fio runtime of each job on each target (default 10)
  --rounds N          rounds of all jobs over all targets (default 1)
  --iodepths LIST     comma-separated iodepths (default 16,32)
  --atrest-bin PATH   the atrest binary (default target/release/atrest)
  --dir DIR           parent of the temp dir holding the data dir and images;
                      must be a local disk, not tmpfs (default /var/tmp)
  --qemu-cache MODE   qemu-nbd cache mode for both qemu-nbd targets:
                      writeback (with --aio=threads, qemu-nbd's default and,
                      like atrest, the page cache with fdatasync on flush) or
                      none (O_DIRECT, with --aio=native) (default writeback)
  --block-size N      logical block size of the atrest disk, 512 or 4096
                      (default: atrest's default, 512; qemu's LUKS uses
                      512-byte sectors)
  --cold              also run both read cases from the device (the
                      target's file dropped from the page cache first)
  --keep-logs DIR     copy the server logs and fio JSON outputs to DIR
EOF
}

SIZE=2G
RUNTIME=10
ROUNDS=1
IODEPTHS=16,32
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The script reads the CLI's JSON answers.
export ATREST_OUTPUT=json
ATREST_BIN=$ROOT/target/release/atrest
PARENT=/var/tmp
QEMU_CACHE=writeback
KEEP_LOGS=
BLOCK_SIZE=
COLD=0
ACCOUNT=111122223333
while (($#)); do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --iodepths) IODEPTHS=$2; shift 2 ;;
        --atrest-bin) ATREST_BIN=$2; shift 2 ;;
        --dir) PARENT=$2; shift 2 ;;
        --qemu-cache) QEMU_CACHE=$2; shift 2 ;;
        --keep-logs) KEEP_LOGS=$2; shift 2 ;;
        --block-size) BLOCK_SIZE=$2; shift 2 ;;
        --cold) COLD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "bench-nbd: $*" >&2; exit 1; }

[[ $RUNTIME =~ ^[0-9]+$ && $RUNTIME -gt 0 ]] || die "--runtime needs a positive number of seconds"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "--rounds needs a positive number"
[[ $IODEPTHS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--iodepths needs a comma-separated list of numbers"
case $QEMU_CACHE in
    writeback) QEMU_CACHE_FLAGS=(--cache=writeback --aio=threads) ;;
    none) QEMU_CACHE_FLAGS=(--cache=none --aio=native) ;;
    *) die "--qemu-cache is writeback or none" ;;
esac
for tool in fio qemu-nbd qemu-img python3; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd ioengine"
[[ -x $ATREST_BIN ]] || die "$ATREST_BIN not found: build it with 'cargo build --release -p atrest', or give --atrest-bin"

# Size in bytes: digits with an optional K/M/G/T (powers of 1024) suffix.
SIZE_BYTES=$(python3 - "$SIZE" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", sys.argv[1], re.I)
if not m:
    sys.exit(f"bad --size {sys.argv[1]}")
print(int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2).upper()])
EOF
)
((SIZE_BYTES >= 64 << 20 && SIZE_BYTES % (1 << 20) == 0)) || die "--size must be a whole number of MiB, at least 64M"
SIZE_MIB=$((SIZE_BYTES >> 20))

# --- temp dir, servers and their cleanup ----------------------------------

mkdir -p "$PARENT"
fstype=$(stat -f -c %T "$PARENT")
[[ $fstype != tmpfs && $fstype != ramfs ]] || die "$PARENT is $fstype; give --dir on a local disk"
TMP=$(mktemp -d "$PARENT/atrest-bench-nbd.XXXXXX")
PIDS=()

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    wait 2>/dev/null || true
    if [[ -n $KEEP_LOGS && -d $TMP ]]; then
        mkdir -p "$KEEP_LOGS"
        cp -r "$TMP"/*.log "$TMP"/fio "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts TCP connections on 127.0.0.1:$1, as long
# as process $2 lives; $3 is its log.
wait_port() {
    local port=$1 pid=$2 log=$3 i
    for ((i = 0; i < 600; i++)); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; die "process $pid exited before listening on $port"; }
        if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    tail -20 "$log" >&2
    die "nothing listens on 127.0.0.1:$port after 60 s"
}

echo "temp dir: $TMP ($fstype)"

# 1. atrest: one encrypted disk, plaintext NBD on loopback as the account root.
HTTP_PORT=$(free_port)
NBD_PORT=$(free_port)
ENDPOINT=http://127.0.0.1:$HTTP_PORT
"$ATREST_BIN" serve \
    --listen "127.0.0.1:$HTTP_PORT" \
    --nbd-listen "127.0.0.1:$NBD_PORT" \
    --nbd-plaintext-principal "arn:aws:iam::$ACCOUNT:root" \
    --data-dir "$TMP/atrest-data" \
    --root-key-file "$TMP/root.key" \
    </dev/null >"$TMP/atrest.log" 2>&1 &
ATREST_PID=$!
PIDS+=("$ATREST_PID")
for ((i = 0; i < 600; i++)); do
    kill -0 "$ATREST_PID" 2>/dev/null || { tail -20 "$TMP/atrest.log" >&2; die "atrest serve exited"; }
    grep -q "NBD serving" "$TMP/atrest.log" && [[ -s $TMP/atrest-data.admin-credentials ]] && break
    sleep 0.1
done
wait_port "$HTTP_PORT" "$ATREST_PID" "$TMP/atrest.log"
wait_port "$NBD_PORT" "$ATREST_PID" "$TMP/atrest.log"
ADMIN=("$ATREST_BIN" admin --endpoint "$ENDPOINT" --credentials-file "$TMP/atrest-data.admin-credentials")
"${ADMIN[@]}" account create --id "$ACCOUNT" >"$TMP/account.json"
"${ADMIN[@]}" access-key create --account "$ACCOUNT" >"$TMP/access-key.json"
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
AWS_ACCESS_KEY_ID=$(json_field "$TMP/access-key.json" access_key_id) \
AWS_SECRET_ACCESS_KEY=$(json_field "$TMP/access-key.json" secret_access_key) \
    "$ATREST_BIN" disk --endpoint "$ENDPOINT" create --size "${SIZE_MIB}M" \
    ${BLOCK_SIZE:+--block-size "$BLOCK_SIZE"} >"$TMP/disk.json"
DISK_ID=$(json_field "$TMP/disk.json" id)
echo "atrest: pid $ATREST_PID, $ENDPOINT, disk $DISK_ID"

# 2. qemu-nbd, raw file.
RAW_PORT=$(free_port)
truncate -s "$SIZE_BYTES" "$TMP/raw.img"
qemu-nbd -f raw -x bench -b 127.0.0.1 -p "$RAW_PORT" "${QEMU_CACHE_FLAGS[@]}" --shared=8 -t \
    --pid-file "$TMP/raw.pid" "$TMP/raw.img" </dev/null >"$TMP/qemu-raw.log" 2>&1 &
RAW_PID=$!
PIDS+=("$RAW_PID")
wait_port "$RAW_PORT" "$RAW_PID" "$TMP/qemu-raw.log"
echo "qemu-nbd raw: pid $RAW_PID, ${QEMU_CACHE_FLAGS[*]}"

# 3. qemu-nbd, LUKS (aes-256-xts-plain64) image.
LUKS_PORT=$(free_port)
qemu-img create -q -f luks --object secret,id=sec0,data=benchpass \
    -o key-secret=sec0,cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain64 \
    "$TMP/luks.img" "$SIZE_BYTES"
qemu-nbd --object secret,id=sec0,data=benchpass \
    --image-opts "driver=luks,key-secret=sec0,file.filename=$TMP/luks.img" \
    -x bench -b 127.0.0.1 -p "$LUKS_PORT" "${QEMU_CACHE_FLAGS[@]}" --shared=8 -t \
    --pid-file "$TMP/luks.pid" </dev/null >"$TMP/qemu-luks.log" 2>&1 &
LUKS_PID=$!
PIDS+=("$LUKS_PID")
wait_port "$LUKS_PORT" "$LUKS_PID" "$TMP/qemu-luks.log"
echo "qemu-nbd LUKS: pid $LUKS_PID, ${QEMU_CACHE_FLAGS[*]}"

TARGETS=(atrest raw luks)
declare -A URI=(
    [atrest]="nbd://127.0.0.1:$NBD_PORT/$DISK_ID"
    [raw]="nbd://127.0.0.1:$RAW_PORT/bench"
    [luks]="nbd://127.0.0.1:$LUKS_PORT/bench"
)
declare -A PID_OF=([atrest]=$ATREST_PID [raw]=$RAW_PID [luks]=$LUKS_PID)
# The file holding each target's data.
declare -A FILE_OF=([atrest]=$TMP/atrest-data/disks/pool [raw]=$TMP/raw.img [luks]=$TMP/luks.img)
[[ -f ${FILE_OF[atrest]} ]] || die "atrest's pool is not at ${FILE_OF[atrest]}"
if command -v nbdinfo >/dev/null; then
    for t in "${TARGETS[@]}"; do
        got=$(nbdinfo --size "${URI[$t]}")
        [[ $got == "$SIZE_BYTES" ]] || die "$t exports $got bytes, not $SIZE_BYTES"
    done
fi

# --- measurement ----------------------------------------------------------

mkdir -p "$TMP/fio"
RESULTS=$TMP/results.tsv
: >"$RESULTS"
CLK_TCK=$(getconf CLK_TCK)

# CPU ticks (user + system) of a process, all its threads.
proc_ticks() {
    local s
    s=$(<"/proc/$1/stat")
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo $((${12} + ${13}))
}
# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq).
machine_ticks() {
    local cpu user nice system idle iowait irq softirq rest
    read -r cpu user nice system idle iowait irq softirq rest </proc/stat
    echo $((user + nice + system + irq + softirq))
}

# prepare TARGET warm|cold: syncs the three backing files, then reads the
# target's file into the page cache (warm) or drops it from it (cold).
prepare() {
    local f=${FILE_OF[$1]}
    sync "${FILE_OF[@]}"
    if [[ $2 == cold ]]; then
        dd if="$f" iflag=nocache count=0 status=none
    elif [[ $1 == atrest || $QEMU_CACHE == writeback ]]; then
        cat "$f" >/dev/null
    fi
}

# run_fio TARGET CASE IODEPTH ROUND RW BS [extra fio args...]
run_fio() {
    local target=$1 case=$2 depth=$3 round=$4 rw=$5 bs=$6
    shift 6
    local out="$TMP/fio/$case-qd$depth-r$round-$target.json"
    local pid=${PID_OF[$target]} s0 m0 t0 s1 m1 t1
    # `times` (in this shell, not a subshell) gives the CPU of waited-for
    # children: fio and the job process it forks.
    s0=$(proc_ticks "$pid"); m0=$(machine_ticks); t0=$(date +%s.%N)
    times >"$TMP/times0"
    if ! fio --name="$case" --ioengine=nbd --uri="${URI[$target]}" \
        --rw="$rw" --bs="$bs" --iodepth="$depth" --size="$SIZE_BYTES" \
        --randrepeat=0 --norandommap --group_reporting \
        --output-format=json --output="$out" "$@" >"$out.stdout" 2>&1; then
        cat "$out.stdout" >&2
        die "fio failed: $case qd$depth on $target"
    fi
    times >"$TMP/times1"
    t1=$(date +%s.%N); m1=$(machine_ticks); s1=$(proc_ticks "$pid")
    python3 - "$out" "$target" "$case" "$depth" "$round" \
        "$((s1 - s0))" "$((m1 - m0))" "$t0" "$t1" "$CLK_TCK" "$TMP/times0" "$TMP/times1" >>"$RESULTS" <<'EOF'
import json, re, sys
out, target, case, depth, rnd, srv, mach, t0, t1, hz, times0, times1 = sys.argv[1:]

def children_cpu(path):
    # The second line of `times`: children's user and system time, "XmY.YYYs".
    line = open(path).read().splitlines()[1]
    return sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", line))

job = json.load(open(out))["jobs"][0]
if job["error"]:
    sys.exit(f"fio reported error {job['error']} in {out}")
d = job["write"] if job["write"]["io_bytes"] > 0 else job["read"]
wall = float(t1) - float(t0)
srv_cores = int(srv) / int(hz) / wall
mach_cores = int(mach) / int(hz) / wall
fio_cores = (children_cpu(times1) - children_cpu(times0)) / wall
other = mach_cores - srv_cores - fio_cores
print("\t".join(map(str, [case, depth, target, rnd, d["bw_bytes"] / 1e6, d["iops"],
    srv_cores, fio_cores, other])))
EOF
}

echo
echo "filling each target: one pass of 1 MiB sequential writes, iodepth 16"
for t in "${TARGETS[@]}"; do
    sync "${FILE_OF[@]}"
    run_fio "$t" fill 16 0 write 1M
    tail -1 "$RESULTS" | awk -F'\t' '{printf "  %-7s %8.0f MB/s\n", $3, $5}'
done

CASES=(seqwrite seqread randwrite randread)
((COLD)) && CASES+=(seqread-cold randread-cold)
declare -A RW=([seqwrite]=write [seqread]=read [randwrite]=randwrite [randread]=randread
    [seqread-cold]=read [randread-cold]=randread)
declare -A BS=([seqwrite]=1M [seqread]=1M [randwrite]=4k [randread]=4k
    [seqread-cold]=1M [randread-cold]=4k)
IFS=, read -r -a DEPTHS <<<"$IODEPTHS"

echo
echo "measuring: ${#CASES[@]} cases x ${#DEPTHS[@]} iodepths x 3 targets x $RUNTIME s x $ROUNDS round(s)"
k=0
for ((round = 1; round <= ROUNDS; round++)); do
    for c in "${CASES[@]}"; do
        for depth in "${DEPTHS[@]}"; do
            for ((i = 0; i < 3; i++)); do
                t=${TARGETS[$(((k + round + i) % 3))]}
                if [[ $c == *-cold ]]; then
                    prepare "$t" cold
                else
                    prepare "$t" warm
                fi
                if [[ $c == seqread-cold ]]; then
                    # One pass at most: a second would read the page cache.
                    run_fio "$t" "$c" "$depth" "$round" "${RW[$c]}" "${BS[$c]}" --runtime="$RUNTIME"
                else
                    run_fio "$t" "$c" "$depth" "$round" "${RW[$c]}" "${BS[$c]}" \
                        --time_based --runtime="$RUNTIME"
                fi
                tail -1 "$RESULTS" | awk -F'\t' '{printf "  round %s %-13s qd%-3s %-7s %8.1f MB/s %9.0f IOPS  server %.2f cores, fio %.2f, other %.2f\n", $4, $1, $2, $3, $5, $6, $7, $8, $9}'
            done
            k=$((k + 1))
        done
    done
done

# --- report ---------------------------------------------------------------

echo
python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics, sys
from collections import defaultdict

rows = defaultdict(list)
for line in open(sys.argv[1]):
    case, depth, target, rnd, mbs, iops, srv, fio, other = line.rstrip("\n").split("\t")
    rows[(case, int(depth), target)].append(
        dict(mbs=float(mbs), iops=float(iops), srv=float(srv), fio=float(fio), other=float(other)))
rounds = int(sys.argv[2])
names = {
    "fill": "1 MiB seq write, first fill",
    "seqwrite": "1 MiB seq write",
    "seqread": "1 MiB seq read",
    "randwrite": "4 KiB random write",
    "randread": "4 KiB random read",
    "seqread-cold": "1 MiB seq read, from the device",
    "randread-cold": "4 KiB random read, from the device",
}
order = ["fill", "seqwrite", "seqread", "randwrite", "randread", "seqread-cold", "randread-cold"]
keys = sorted({(c, d) for c, d, _ in rows}, key=lambda k: (order.index(k[0]), k[1]))
med = lambda xs: statistics.median(xs)

def cell(rs):
    mbs, iops = med([r["mbs"] for r in rs]), med([r["iops"] for r in rs])
    return f"{mbs:.0f} ({iops:.0f})" if mbs >= 100 else f"{mbs:.1f} ({iops:.0f})"

def ratio(a, b):
    return f"{med([r['mbs'] for r in a]) / med([r['mbs'] for r in b]):.2f}x"

print(f"MB/s (IOPS), median of {rounds} round(s) (the fill: one pass)")
print()
print("| job | iodepth | atrest | qemu-nbd raw | qemu-nbd LUKS | atrest/raw | atrest/LUKS |")
print("|-----|--------:|-------:|-------------:|--------------:|-----------:|------------:|")
for c, d in keys:
    a, r, l = (rows[(c, d, t)] for t in ("atrest", "raw", "luks"))
    print(f"| {names[c]} | {d} | {cell(a)} | {cell(r)} | {cell(l)} | {ratio(a, r)} | {ratio(a, l)} |")

print()
print("CPU during each job (cores busy, median): server / fio")
print()
print("| job | iodepth | atrest | qemu-nbd raw | qemu-nbd LUKS |")
print("|-----|--------:|-------:|-------------:|--------------:|")
for c, d in keys:
    cells = []
    for t in ("atrest", "raw", "luks"):
        rs = rows[(c, d, t)]
        cells.append(f"{med([x['srv'] for x in rs]):.2f} / {med([x['fio'] for x in rs]):.2f}")
    print(f"| {names[c]} | {d} | " + " | ".join(cells) + " |")

if rounds > 1:
    print()
    print("spread between rounds, MB/s min-max:")
    for c, d in keys:
        if c == "fill":
            continue
        parts = []
        for t in ("atrest", "raw", "luks"):
            xs = [x["mbs"] for x in rows[(c, d, t)]]
            parts.append(f"{t} {min(xs):.1f}-{max(xs):.1f}")
        print(f"  {names[c]}, qd{d}: " + ", ".join(parts))

worst = max(x["other"] for rs in rows.values() for x in rs)
print()
# Busy CPU of the machine not charged to the server or fio: other
# processes, and kernel work charged to no process (interrupts, writeback).
if worst > 0.2:
    print(f"WARNING: up to {worst:.2f} cores were busy outside the server and fio during a job "
          "(other processes, or kernel work such as interrupts and writeback); the figures may be low")
else:
    print(f"at most {worst:.2f} cores were busy outside the server and fio during any job")
EOF
