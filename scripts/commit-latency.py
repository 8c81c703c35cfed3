#!/usr/bin/env python3
"""Where a PostgreSQL commit's fdatasync spends its time (docs/benchmarks.md,
section on issue 6, "Where a commit's flush goes").

Reads `perf script -F comm,tid,cpu,time,event,trace` output of a system-wide
`perf record` taken while pgbench runs, with at least these events:

    perf record -a -o trace.data \\
        -e syscalls:sys_enter_fdatasync -e syscalls:sys_exit_fdatasync \\
        -e sched:sched_wakeup -e sched:sched_switch -- sleep 1
    perf script -i trace.data -F comm,tid,cpu,time,event,trace | \\
        scripts/commit-latency.py

and prints, for PostgreSQL's processes, the mean fdatasync time and how much
of it the process spent runnable but waiting for a CPU after being woken;
and, for atrest's FUSE worker threads (`fuser-*`), the mean time of the pool
file's fdatasync that each flush of the instance's disk ends in.
"""
import re
import sys

LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def main() -> int:
    pg_start = {}  # tid -> time its fdatasync began
    pg = []  # (duration, CPU wait) per PostgreSQL fdatasync
    pool_start = {}
    pool = []  # duration per pool fdatasync
    woken = {}  # tid in fdatasync -> time of its wake-up
    cpu_wait = {}
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, _cpu, t, event, rest = m.groups()
        tid, t = int(tid), float(t)
        if event == "syscalls:sys_enter_fdatasync":
            if comm == "postgres":
                pg_start[tid] = t
                cpu_wait[tid] = 0.0
            elif comm.startswith("fuser"):
                pool_start[tid] = t
        elif event == "syscalls:sys_exit_fdatasync":
            if tid in pg_start:
                woken.pop(tid, None)
                pg.append((t - pg_start.pop(tid), cpu_wait.pop(tid)))
            elif tid in pool_start:
                pool.append(t - pool_start.pop(tid))
        elif event == "sched:sched_wakeup":
            p = int(re.search(r"pid=(\d+)", rest).group(1))
            if p in pg_start:
                woken[p] = t
        elif event == "sched:sched_switch":
            p = int(re.search(r"next_pid=(\d+)", rest).group(1))
            if p in woken and p in cpu_wait:
                cpu_wait[p] += t - woken.pop(p)
    if not pg:
        print("no PostgreSQL fdatasync in the trace", file=sys.stderr)
        return 1
    n = len(pg)
    print(
        "postgres fdatasync: %d calls, mean %.0f us, of which %.0f us runnable "
        "waiting for a CPU after its wake-ups"
        % (n, sum(d for d, _ in pg) / n * 1e6, sum(w for _, w in pg) / n * 1e6)
    )
    if pool:
        print(
            "pool fdatasync (atrest FUSE workers): %d calls, mean %.0f us"
            % (len(pool), sum(pool) / len(pool) * 1e6)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
