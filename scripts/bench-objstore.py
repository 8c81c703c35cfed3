#!/usr/bin/env python3
"""Snapshots in object storage, side by side in one run against one Garage
server (issue 21; docs/benchmarks.md, "Snapshots in object storage"):

* upload: `atrest disk snapshot --to-object-store` of a disk full of random
  data (its ciphertext, 512 KiB blocks, 8 PUTs at a time) against
  `aws s3 cp` of the same number of bytes from a local file (multipart,
  the CLI's defaults);
* restore: a disk restored from that snapshot against `aws s3 cp` of the
  object back into a local file;
* incremental: the next snapshot after writing 1 % of the disk (512 KiB
  pieces at random places): its time and bytes against the first's.

    cargo build --release -p atrest
    target/venv/bin/python scripts/bench-objstore.py [--size-mib 1024] [--rounds 3]

Needs garage (cargo install garage), nbdcopy, qemu-io, the aws CLI and boto3
(scripts/test.sh installs them into target/venv). Reports medians and the
ratios atrest / aws s3 cp (goal: >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))
os.environ.setdefault("ATREST_BIN", str(REPO / "target" / "release" / "atrest"))

import conftest  # noqa: E402
from conftest import Server, atrest_client_cmd, free_port, new_account, rest_call  # noqa: E402
from garage_fixture import Garage  # noqa: E402

MiB = 1 << 20
A = "111122223333"


def run(*cmd, env=None, check=True):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise SystemExit(f"{cmd} failed: {p.stdout}{p.stderr}")
    return p


def wait(fn, timeout=1800):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v is not None:
            return v
        time.sleep(0.05)
    raise SystemExit("timed out")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib * MiB

    work = Path(tempfile.mkdtemp(prefix="atrest-bench-objstore-"))
    g = Garage()
    g.start(work)
    store_env = {"AWS_ACCESS_KEY_ID": g.access_key_id, "AWS_SECRET_ACCESS_KEY": g.secret}
    nbd = free_port()
    server = Server(work, "node", args=(
        "--nbd-listen", f"127.0.0.1:{nbd}", "--nbd-plaintext-principal", f"arn:aws:iam::{A}:root",
        "--object-store", f"s3://{g.bucket}/atrest", "--object-store-endpoint", g.endpoint,
        "--object-store-region", g.region, "--object-store-path-style",
    ), env=store_env)
    aws_env = dict(os.environ, AWS_ACCESS_KEY_ID=g.access_key_id, AWS_SECRET_ACCESS_KEY=g.secret,
                   AWS_DEFAULT_REGION=g.region, AWS_CONFIG_FILE="/dev/null",
                   AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    aws = [str(Path(sys.executable).parent / "aws"), "--endpoint-url", g.endpoint, "s3"]
    try:
        server.start()
        creds = new_account(server, A)

        def rest(method, path, body=None):
            return rest_call(server, method, path, body, creds=creds).json()

        def cli(*a):
            return json.loads(atrest_client_cmd(server, *a, env_creds=creds).stdout)

        image = work / "random.raw"
        with open(image, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MiB))
        results: dict[str, list[float]] = {k: [] for k in (
            "upload", "s3 cp up", "restore", "s3 cp down", "first", "second")}
        sent_first, sent_second, changed = [], [], 0
        for rnd in range(args.rounds):
            d = cli("disk", "create", "--size", f"{args.size_mib}M")
            run("nbdcopy", str(image), f"nbd://127.0.0.1:{nbd}/{d['id']}")
            # aws s3 cp and atrest take turns; which one starts alternates.
            order = ["atrest", "aws"] if rnd % 2 == 0 else ["aws", "atrest"]
            for who in order:
                if who == "aws":
                    t = time.perf_counter()
                    run(*aws, "cp", str(image), f"s3://{g.bucket}/cp/{rnd}.raw", env=aws_env)
                    results["s3 cp up"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    run(*aws, "cp", f"s3://{g.bucket}/cp/{rnd}.raw", str(work / "down.raw"), env=aws_env)
                    results["s3 cp down"].append(time.perf_counter() - t)
                    (work / "down.raw").unlink()
                else:
                    t = time.perf_counter()
                    s = rest("POST", "/v1/snapshots", {"disk_id": d["id"], "to_object_store": True})
                    s = wait(lambda: (v := rest("GET", f"/v1/snapshots/{s['id']}"))["state"] == "available" and v or None)
                    results["upload"].append(time.perf_counter() - t)
                    results["first"].append(results["upload"][-1])
                    sent_first.append(s["uploaded_bytes"])
                    t = time.perf_counter()
                    r = rest("POST", "/v1/disks", {"snapshot_id": s["id"]})
                    wait(lambda: rest("GET", f"/v1/disks/{r['id']}")["state"] == "available" or None)
                    results["restore"].append(time.perf_counter() - t)
                    rest("DELETE", f"/v1/disks/{r['id']}")
            # 1 %: 512 KiB pieces at random places.
            pieces = max(1, size // 100 // (512 << 10))
            changed = pieces * (512 << 10)
            rng = random.Random(rnd)
            for off in rng.sample(range(size // (512 << 10)), pieces):
                run("qemu-io", "-f", "raw", f"nbd://127.0.0.1:{nbd}/{d['id']}",
                    "-c", f"write -P {rng.randrange(1, 255)} {off * (512 << 10)} 512k")
            t = time.perf_counter()
            s2 = rest("POST", "/v1/snapshots", {"disk_id": d["id"], "to_object_store": True})
            s2 = wait(lambda: (v := rest("GET", f"/v1/snapshots/{s2['id']}"))["state"] == "available" and v or None)
            results["second"].append(time.perf_counter() - t)
            sent_second.append(s2["uploaded_bytes"])
            rest("DELETE", f"/v1/disks/{d['id']}")

        med = {k: statistics.median(v) for k, v in results.items()}
        mbps = lambda sec: size / sec / 1e6  # noqa: E731
        print(f"disk {args.size_mib} MiB of random data, {args.rounds} round(s), medians")
        print(f"{'':28}{'atrest':>12}{'aws s3 cp':>12}{'ratio':>8}")
        print(f"{'upload MB/s':28}{mbps(med['upload']):>12.1f}{mbps(med['s3 cp up']):>12.1f}"
              f"{med['s3 cp up'] / med['upload']:>8.2f}")
        print(f"{'restore / download MB/s':28}{mbps(med['restore']):>12.1f}{mbps(med['s3 cp down']):>12.1f}"
              f"{med['s3 cp down'] / med['restore']:>8.2f}")
        print(f"first snapshot: {med['first']:.2f} s, {statistics.median(sent_first) / MiB:.1f} MiB sent")
        print(f"second snapshot after writing {changed / MiB:.1f} MiB (1 %): {med['second']:.2f} s "
              f"({med['second'] / med['first']:.3f} of the first), "
              f"{statistics.median(sent_second) / MiB:.1f} MiB sent ({statistics.median(sent_second) / changed:.2f}x the change)")
        # What the store itself takes: boto3 PUTs of 512 KiB and 8 MiB objects.
        import concurrent.futures as cf

        from garage_fixture import s3_client
        s3 = s3_client(g)
        for osize, n in ((512 << 10, 1024), (8 << 20, 64)):
            data = os.urandom(osize)
            t = time.perf_counter()
            with cf.ThreadPoolExecutor(16) as ex:
                list(ex.map(lambda i: s3.put_object(Bucket=g.bucket, Key=f"probe/{osize}/{i}", Body=data),
                            range(n)))
            print(f"the store alone: boto3 PUTs of {osize >> 10} KiB objects, 16 at once: "
                  f"{osize * n / (time.perf_counter() - t) / 1e6:.0f} MB/s")
    finally:
        try:
            server.stop()
        finally:
            g.stop()
            import shutil
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    conftest  # keep the import: it sets up the interop environment helpers
    main()
