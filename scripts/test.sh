#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# On a fresh machine it first installs what the tests need: Debian packages
# with apt-get, Python packages into target/venv with pip, cargo-fuzz and
# garage (the S3-compatible server the object store tests run against) with
# cargo install. Then: format check, clippy (warnings are errors), unit and
# integration tests, the interop suite with boto3 and the aws CLI, and a
# short run of every fuzz target.
#
#   scripts/test.sh            everything
#   scripts/test.sh --no-fuzz  skip the fuzz runs
#   FUZZ_SECONDS=60 scripts/test.sh   longer fuzz runs (default 30 per target)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FUZZ=1
for arg in "$@"; do
  case "$arg" in
    --no-fuzz) FUZZ=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
FUZZ_SECONDS=${FUZZ_SECONDS:-30}

step() { printf '\n==> %s\n' "$*"; }

# A fresh run builds the workspace three ways (debug, clippy, the fuzz
# targets' release build) and needed 4.2 GiB in all on a fresh clone. Incremental
# compilation state would add several more GiB that a one-off run never
# reuses, so it is off here.
export CARGO_INCREMENTAL=0
avail_kib=$(df -Pk "$ROOT" | awk 'NR==2 {print $4}')
if [ "${avail_kib:-0}" -lt $((10 * 1024 * 1024)) ]; then
  echo "warning: $((avail_kib / 1024)) MiB free under $ROOT; a full run needs about 10 GiB" >&2
fi

# --- Dependencies -----------------------------------------------------------
step "system packages"
# openssl, softhsm2: root-of-trust tests. qemu-utils, libnbd-bin, nbdkit,
# fio, gnutls-bin: the NBD interop suite (qemu-io, qemu-img, nbdinfo,
# nbdcopy, fio's nbd engine, GnuTLS PSK and certificate clients).
# libssl-dev, pkg-config: atrest-tlspsk links OpenSSL for TLS-PSK.
# fuse3, e2fsprogs, util-linux: local attach (FUSE file, loop device, mkfs,
# setpriv). postgresql, postgresql-client, postgresql-contrib: database
# instances (initdb, pg_ctl, pg_basebackup, psql, pgbench).
# postgresql-server-dev-all: the headers atrest's PostgreSQL guard
# (crates/dbservice/guard) is compiled against. passwd: useradd, userdel
# (one OS user per database instance). chromium: the web console's browser
# tests (Playwright drives it; it downloads no browser of its own).
APT_PACKAGES=(openssl ca-certificates softhsm2 qemu-utils libnbd-bin nbdkit fio gnutls-bin
  libssl-dev pkg-config fuse3 e2fsprogs util-linux passwd postgresql postgresql-client
  postgresql-contrib postgresql-server-dev-all chromium)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

step "python packages (target/venv)"
VENV="$ROOT/target/venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/interop/requirements.txt

if ((FUZZ)) && ! command -v cargo-fuzz >/dev/null 2>&1; then
  step "cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Garage: the object store tests (crates/objstore, tests/interop's garage
# fixture) start a throwaway single-node server. Building it takes a while,
# once; with ATREST_REQUIRE_GARAGE=1 a missing garage fails those tests
# instead of skipping them.
if ! command -v garage >/dev/null 2>&1; then
  step "garage"
  cargo install garage --version 2.5.0 --locked
fi
export ATREST_REQUIRE_GARAGE=1
# PostgreSQL (installed above): the shared metadata store's tests
# (crates/pgstore, `atrest store copy`) start throwaway servers; required.
export ATREST_REQUIRE_POSTGRES=1

# --- Rust ---------------------------------------------------------------------
step "format"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- The previous release ------------------------------------------------------
# The interop suite starts instances the previous release made under this
# one (test_db_isolation.py). It is built from git in a target dir of its
# own: cargo names a workspace's artifacts without their checkout's path,
# so two checkouts sharing one target dir would take each other's.
PREV_RELEASE=5c73261c669c6741a987351bbf4230e206c6a87f
PREV_DIR="$ROOT/target/prev-release"
if [ "$(cat "$PREV_DIR/commit" 2>/dev/null)" != "$PREV_RELEASE" ] || [ ! -x "$PREV_DIR/atrest" ]; then
  step "previous release ${PREV_RELEASE:0:7}"
  rm -rf "$PREV_DIR"
  mkdir -p "$PREV_DIR/src"
  git archive "$PREV_RELEASE" | tar -x -C "$PREV_DIR/src"
  cargo build -p atrest --locked --manifest-path "$PREV_DIR/src/Cargo.toml" \
    --target-dir "$PREV_DIR/target"
  cp "$PREV_DIR/target/debug/atrest" "$PREV_DIR/atrest"
  rm -rf "$PREV_DIR/src" "$PREV_DIR/target"
  echo "$PREV_RELEASE" > "$PREV_DIR/commit"
fi

step "unit and integration tests"
# The key-provider tests start the Azure Key Vault and Vault transit fakes
# (tests/interop/fakes) with the venv's Python.
ATREST_TEST_PYTHON="$VENV/bin/python" cargo test --workspace --locked

# --- Interop: real third-party clients against the real binary ------------------
step "interop tests (boto3, aws CLI, qemu, libnbd, fio)"
# atrest-bench: audit-fill, which test_audit_scale.py finds beside atrest.
cargo build -p atrest -p atrest-bench --locked
ATREST_BIN="$ROOT/target/debug/atrest" ATREST_PREV_BIN="$PREV_DIR/atrest" PATH="$VENV/bin:$PATH" \
  "$VENV/bin/python" -m pytest tests/interop -q

# --- Fuzzing ----------------------------------------------------------------------
if ((FUZZ)); then
  step "fuzz (${FUZZ_SECONDS}s per target)"
  # cargo-fuzz needs nightly compiler flags; the stable toolchain allows them
  # under RUSTC_BOOTSTRAP for this build only.
  export RUSTC_BOOTSTRAP=1
  (cd fuzz && cargo fuzz build -O)
  for target in $(cd fuzz && cargo fuzz list); do
    corpus="$ROOT/target/fuzz-corpus/$target"
    mkdir -p "$corpus"
    log="$ROOT/target/fuzz-$target.log"
    # Regression inputs (fuzz/regressions/<target>) run first, then new ones.
    set +e
    (cd fuzz && cargo fuzz run -O "$target" "$corpus" "regressions/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096) >"$log" 2>&1
    rc=$?
    set -e
    grep -E "^Done [0-9]+ runs" "$log" | sed "s/^/$target: /" || true
    if [ "$rc" -ne 0 ]; then
      tail -60 "$log" >&2
      echo "fuzz target $target failed (exit $rc); inputs in fuzz/artifacts/$target" >&2
      exit 1
    fi
  done
fi

step "all tests passed"
