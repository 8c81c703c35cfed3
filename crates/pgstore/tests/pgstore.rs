//! PgStore against a real PostgreSQL (Debian's, started here on a free
//! loopback port; skipped with a notice only when PostgreSQL is missing and
//! `ATREST_REQUIRE_POSTGRES` is unset).

#![allow(
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "tests fail loudly on unexpected errors and print their figures"
)]

#[path = "support/postgres.rs"]
mod postgres;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atrest_pgstore::{PgOptions, PgStore};
use atrest_store::{Change, Store, StoreError, Table};
use postgres::Postgres;

const T: Table = Table::new("t");

fn server() -> Option<Postgres> {
    Postgres::start().unwrap()
}

/// Every change a watcher heard: `Some((table, key))` or `None` for All.
type Heard = Arc<Mutex<Vec<Option<(String, Vec<u8>)>>>>;

fn listen(store: &PgStore) -> Heard {
    let heard: Heard = Arc::default();
    let h = Arc::clone(&heard);
    store.watch(Arc::new(move |c: &Change<'_>| {
        let item = match c {
            Change::Row { table, key } => Some(((*table).to_owned(), key.to_vec())),
            Change::All => None,
        };
        h.lock().unwrap().push(item);
    }));
    heard
}

fn put(store: &dyn Store, key: &[u8], value: &[u8]) {
    let mut w = store.write().unwrap();
    w.put(T, key, value).unwrap();
    w.commit().unwrap();
}

fn get(store: &dyn Store, key: &[u8]) -> Option<Vec<u8>> {
    store.read().unwrap().get(T, key).unwrap()
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn conformance() {
    let Some(pg) = server() else { return };
    let store = PgStore::open(&pg.url("sslmode=disable"), "conformance").unwrap();
    atrest_store::conformance::run(&store);
    // Reopening finds what was left and the schema as it is.
    put(&store, b"left", b"1");
    drop(store);
    let again = PgStore::open(&pg.url("sslmode=disable"), "conformance").unwrap();
    assert_eq!(get(&again, b"left").as_deref(), Some(&b"1"[..]));
    // Another namespace of the same database is separate.
    let other = PgStore::open(&pg.url("sslmode=disable"), "other").unwrap();
    assert_eq!(get(&other, b"left"), None);
    assert!(other.tables().unwrap().is_empty());
}

#[test]
fn a_write_on_one_node_is_seen_on_the_other_within_the_bound() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    let a = PgStore::open(&url, "kms").unwrap();
    let b = PgStore::open(&url, "kms").unwrap();
    let heard = listen(&b);
    assert!(a.is_current() && b.is_current());
    let mut worst = Duration::ZERO;
    for i in 0..20u8 {
        put(&a, &[b'k', i], &[i]);
        // Read-your-writes on the writer's node, at once.
        assert_eq!(get(&a, &[b'k', i]), Some(vec![i]));
        let took = wait_until(Duration::from_secs(1), || {
            get(&b, &[b'k', i]) == Some(vec![i])
        })
        .unwrap_or_else(|| panic!("write {i} not visible on the other node within 1 s"));
        worst = worst.max(took);
        assert!(
            heard
                .lock()
                .unwrap()
                .contains(&Some(("t".to_owned(), vec![b'k', i]))),
            "watcher did not hear row {i}"
        );
    }
    eprintln!("other node saw each write within {worst:?} (worst of 20)");
    // A delete travels too.
    let mut w = b.write().unwrap();
    assert!(w.delete(T, b"k\x03").unwrap());
    w.commit().unwrap();
    wait_until(Duration::from_secs(1), || get(&a, b"k\x03").is_none()).unwrap();
    assert_eq!(a.tables().unwrap(), vec![T]);
}

#[test]
fn an_outage_makes_the_store_stale_and_reads_fail_then_it_recovers() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    let a = PgStore::open(&url, "kms").unwrap();
    put(&a, b"before", b"1");
    let heard = listen(&a);
    let stopped = Instant::now();
    pg.stop();
    let stale = wait_until(Duration::from_secs(3), || !a.is_current())
        .expect("still current 3 s after the server stopped");
    eprintln!(
        "stale {:?} after the server stopped",
        stopped.elapsed().min(stale + Duration::from_millis(1))
    );
    assert!(stopped.elapsed() < Duration::from_secs(2), "{stale:?}");
    // Watchers heard "everything may have changed".
    wait_until(Duration::from_secs(1), || {
        heard.lock().unwrap().contains(&None)
    })
    .unwrap();
    // Reads and writes fail, naming the server; never stale data.
    let Err(StoreError::Backend(e)) = a.read().map(drop) else {
        panic!("a read during the outage did not fail")
    };
    assert!(e.contains(&format!("127.0.0.1:{}", pg.port)), "{e}");
    assert!(!e.contains(&pg.password), "{e}");
    assert!(a.write().is_err());
    assert!(a.lease("l", "me", Duration::from_secs(5)).is_err());
    heard.lock().unwrap().clear();
    pg.start_again().unwrap();
    // At once, before the listener is back: the pooled connections are
    // dead; beginning retries on a new one.
    put(&a, b"at-once", b"0");
    wait_until(Duration::from_secs(5), || a.is_current()).expect("not current after restart");
    wait_until(Duration::from_secs(1), || {
        heard.lock().unwrap().contains(&None)
    })
    .expect("no Change::All after coming back");
    assert_eq!(get(&a, b"before").as_deref(), Some(&b"1"[..]));
    // Another node's new writes are visible again.
    let b = PgStore::open(&url, "kms").unwrap();
    put(&b, b"after", b"2");
    wait_until(Duration::from_secs(1), || get(&a, b"after").is_some()).unwrap();
    put(&a, b"mine", b"3");
    b.refresh().unwrap();
    assert_eq!(get(&b, b"mine").as_deref(), Some(&b"3"[..]));
}

#[test]
fn a_stale_store_reads_through_rather_than_serving_old_data() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    let a = PgStore::open(&url, "kms").unwrap();
    let b = PgStore::open(&url, "kms").unwrap();
    b.pause_listener(true);
    put(&a, b"x", b"new");
    wait_until(Duration::from_secs(3), || !b.is_current()).unwrap();
    // Not current: the read catches up first.
    assert_eq!(get(&b, b"x").as_deref(), Some(&b"new"[..]));
    assert!(b.is_current());
}

#[test]
fn leases_have_one_holder_are_renewed_and_taken_over_after_expiry() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    let a = PgStore::open(&url, "kms").unwrap();
    let b = PgStore::open(&url, "kms").unwrap();
    let ttl = Duration::from_millis(1500);
    assert!(a.lease("rotation", "node-a", ttl).unwrap());
    assert!(!b.lease("rotation", "node-b", ttl).unwrap());
    // Renewal by the holder keeps it past the first ttl.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(600));
        assert!(a.lease("rotation", "node-a", ttl).unwrap());
        assert!(!b.lease("rotation", "node-b", ttl).unwrap());
    }
    // Another lease is independent.
    assert!(b.lease("health", "node-b", ttl).unwrap());
    // The holder stops renewing: taken over after the ttl, not before.
    std::thread::sleep(Duration::from_millis(700));
    assert!(!b.lease("rotation", "node-b", ttl).unwrap());
    let took = wait_until(Duration::from_secs(3), || {
        b.lease("rotation", "node-b", ttl).unwrap()
    })
    .expect("lease not taken over after expiry");
    eprintln!("lease taken over {took:?} after the last check");
    assert!(!a.lease("rotation", "node-a", ttl).unwrap());
}

#[test]
fn racing_writers_on_two_nodes_lose_no_update() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    let a = Arc::new(PgStore::open(&url, "kms").unwrap());
    let b = Arc::new(PgStore::open(&url, "kms").unwrap());
    let started = Instant::now();
    let threads: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|s| {
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let mut w = s.write().unwrap();
                    let n = w
                        .get(T, b"counter")
                        .unwrap()
                        .map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
                    w.put(T, b"counter", &(n + 1).to_le_bytes()).unwrap();
                    w.commit().unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    eprintln!("400 racing increments in {:?}", started.elapsed());
    for s in [&a, &b] {
        s.refresh().unwrap();
        let v = get(s.as_ref(), b"counter").unwrap();
        assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 400);
    }
}

#[test]
fn a_node_behind_the_pruned_log_reloads_and_hears_all() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    let opts = PgOptions {
        changes_keep_entries: 3,
        prune_every: 1,
        ..PgOptions::default()
    };
    let a = PgStore::open_with(&url, "kms", opts.clone()).unwrap();
    let b = PgStore::open_with(&url, "kms", opts).unwrap();
    put(&a, b"gone", b"x");
    wait_until(Duration::from_secs(1), || get(&b, b"gone").is_some()).unwrap();
    let heard = listen(&b);
    b.pause_listener(true);
    let reloads = b.stats().reloads;
    let mut w = a.write().unwrap();
    w.delete(T, b"gone").unwrap();
    w.commit().unwrap();
    for i in 0..10u8 {
        put(&a, &[b'p', i], &[i]);
    }
    b.refresh().unwrap();
    assert_eq!(b.stats().reloads, reloads + 1);
    assert!(heard.lock().unwrap().contains(&None), "no Change::All");
    assert_eq!(get(&b, b"gone"), None);
    for i in 0..10u8 {
        assert_eq!(get(&b, &[b'p', i]), Some(vec![i]));
    }
    assert_eq!(b.stats().version, a.stats().version);
    // Back on deltas afterwards.
    b.pause_listener(false);
    put(&a, b"later", b"1");
    wait_until(Duration::from_secs(1), || get(&b, b"later").is_some()).unwrap();
    assert_eq!(b.stats().reloads, reloads + 1);
}

#[test]
fn connection_errors_name_the_server_and_never_the_password() {
    let Some(pg) = server() else { return };
    let wrong = format!(
        "postgres://atrest:not-the-password-s3cr3t@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let Err(StoreError::Backend(e)) = PgStore::open(&wrong, "kms") else {
        panic!("a wrong password opened the store")
    };
    eprintln!("wrong password: {e}");
    assert!(e.contains(&format!("127.0.0.1:{}", pg.port)), "{e}");
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let closed = format!("postgres://atrest:s3cr3t@127.0.0.1:{port}/postgres?sslmode=disable");
    let started = Instant::now();
    let Err(StoreError::Backend(e)) = PgStore::open(&closed, "kms") else {
        panic!("a closed port opened the store")
    };
    eprintln!("unreachable: {e} (after {:?})", started.elapsed());
    assert!(e.contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    for (url, want) in [
        ("mysql://x@h/db".to_owned(), "not valid"),
        (pg.url("sslmode=bogus"), "unknown sslmode"),
        (
            pg.url("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
            "sslrootcert",
        ),
    ] {
        let Err(StoreError::Backend(e)) = PgStore::open(&url, "kms") else {
            panic!("{url} opened")
        };
        assert!(e.contains(want), "{e}");
        assert!(!e.contains(&pg.password), "{e}");
    }
    let Err(StoreError::Backend(e)) = PgStore::open(&pg.url(""), "Bad-Name") else {
        panic!("a bad namespace opened")
    };
    assert!(e.contains("namespace"), "{e}");
}

#[test]
fn tls_is_required_verified_and_refused_when_absent() {
    let Some(plain) = server() else { return };
    let Err(StoreError::Backend(e)) = PgStore::open(&plain.url("sslmode=require"), "kms") else {
        panic!("sslmode=require accepted a server without TLS")
    };
    eprintln!("require without TLS: {e}");
    assert!(e.contains(&format!("127.0.0.1:{}", plain.port)), "{e}");
    assert!(e.to_lowercase().contains("tls"), "{e}");
    drop(plain);

    let Some(pg) = Postgres::start_with(true).unwrap() else {
        return;
    };
    let ca = pg.ca_file();
    // Encrypted, unverified (libpq's require).
    let s = PgStore::open(&pg.url("sslmode=require"), "kms").unwrap();
    put(&s, b"k", b"v");
    drop(s);
    // Verified against the CA file, host name checked.
    let url = pg.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let s = PgStore::open(&url, "kms").unwrap();
    assert_eq!(get(&s, b"k").as_deref(), Some(&b"v"[..]));
    drop(s);
    // verify-full without our CA: the public roots do not know it.
    let Err(StoreError::Backend(e)) = PgStore::open(&pg.url("sslmode=verify-full"), "kms") else {
        panic!("verify-full accepted a self-signed certificate")
    };
    eprintln!("verify-full, unknown CA: {e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_a_tokio_worker_thread() {
    let Some(pg) = server() else { return };
    // Called directly on a worker thread: no nested-runtime panic.
    let store = PgStore::open(&pg.url("sslmode=disable"), "kms").unwrap();
    put(&store, b"k", b"v");
    assert_eq!(get(&store, b"k").as_deref(), Some(&b"v"[..]));
    store.refresh().unwrap();
    assert!(store.lease("l", "me", Duration::from_secs(1)).unwrap());
    let store = Arc::new(store);
    let s = Arc::clone(&store);
    tokio::spawn(async move { get(s.as_ref(), b"k") })
        .await
        .unwrap()
        .unwrap();
}

/// The driver's cost, printed (the figures in the crate doc).
#[test]
fn round_trip_figures() {
    let Some(pg) = server() else { return };
    let store = PgStore::open(&pg.url("sslmode=disable"), "kms").unwrap();
    put(&store, b"k", b"v");
    let n = 300u32;
    let t = Instant::now();
    for i in 0..n {
        put(&store, b"k", &i.to_le_bytes());
    }
    let write = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        assert!(get(&store, b"k").is_some());
    }
    let read = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        store.lease("l", "me", Duration::from_secs(5)).unwrap();
    }
    let lease = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        store.refresh().unwrap();
    }
    let refresh = t.elapsed() / n;
    eprintln!(
        "tokio-postgres on a private runtime: write tx {write:?}, read tx (mirror) {read:?}, \
         lease (one statement) {lease:?}, refresh (catch-up query) {refresh:?}"
    );
}

#[test]
fn killed_connections_are_replaced_when_a_transaction_begins() {
    let Some(pg) = server() else { return };
    let a = PgStore::open(&pg.url("sslmode=disable"), "kms").unwrap();
    put(&a, b"k", b"1");
    a.lease("l", "me", Duration::from_secs(5)).unwrap();
    // Every other session is killed (the pooled ones and the listener's),
    // as a failover or an administrator would.
    let killed = pg
        .psql(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid <> pg_backend_pid() AND datname = 'postgres') t",
        )
        .unwrap();
    assert!(killed.parse::<u32>().unwrap() >= 2, "{killed}");
    // The next calls begin on new connections, without an error.
    put(&a, b"k", b"2");
    assert!(a.lease("l", "me", Duration::from_secs(5)).unwrap());
    a.refresh().unwrap();
    assert_eq!(get(&a, b"k").as_deref(), Some(&b"2"[..]));
    // The listener reconnects: another node's write arrives.
    let b = PgStore::open(&pg.url("sslmode=disable"), "kms").unwrap();
    put(&b, b"k", b"3");
    wait_until(Duration::from_secs(2), || {
        get(&a, b"k").as_deref() == Some(&b"3"[..])
    })
    .expect("the listener did not come back");
}

#[test]
fn a_schema_newer_than_this_code_is_refused_at_open() {
    let Some(pg) = server() else { return };
    let url = pg.url("sslmode=disable");
    drop(PgStore::open(&url, "kms").unwrap());
    assert_eq!(pg.psql("SELECT version FROM atrest_schema").unwrap(), "1");
    pg.psql("UPDATE atrest_schema SET version = 99").unwrap();
    let Err(StoreError::Backend(e)) = PgStore::open(&url, "kms") else {
        panic!("a newer schema opened")
    };
    assert!(e.contains("version 99, newer than this atrest"), "{e}");
}
