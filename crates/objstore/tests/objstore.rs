//! One conformance suite run against every backend: a local directory and
//! a real Garage server (started here; skipped with a notice only when
//! `garage` is missing and `ATREST_REQUIRE_GARAGE` is unset). Then the
//! error mapping against Garage: wrong secret, missing bucket, closed port.

#![allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

#[path = "support/garage.rs"]
mod garage;

use std::time::{Duration, Instant};

use atrest_objstore::{ObjError, Objects, S3Credentials, StoreConfig};
use bytes::Bytes;
use garage::Garage;

/// Deterministic bytes of `len`, different per `seed`.
fn data(seed: u8, len: usize) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn names(metas: &[atrest_objstore::ObjectMeta]) -> Vec<String> {
    let mut v: Vec<String> = metas.iter().map(|m| m.name.clone()).collect();
    v.sort();
    v
}

/// What every backend must do. `o` must be empty.
fn conformance(o: &Objects) {
    assert!(o.list("").unwrap().is_empty(), "store not empty");

    // put / get / head
    o.put("blocks/ab/cdef", data(1, 1000)).unwrap();
    assert_eq!(o.get("blocks/ab/cdef").unwrap(), data(1, 1000));
    let m = o.head("blocks/ab/cdef").unwrap().unwrap();
    assert_eq!((m.name.as_str(), m.size), ("blocks/ab/cdef", 1000));
    let age = time::OffsetDateTime::now_utc() - m.last_modified;
    assert!(
        age.abs() < time::Duration::minutes(5),
        "last_modified {age}"
    );

    // absent objects
    assert!(o.head("blocks/none").unwrap().is_none());
    match o.get("blocks/none") {
        Err(ObjError::NotFound { object }) => assert_eq!(object, "blocks/none"),
        other => panic!("get of an absent object: {other:?}"),
    }
    o.delete("blocks/none").unwrap();

    // overwrite
    o.put("blocks/ab/cdef", data(2, 10)).unwrap();
    assert_eq!(o.get("blocks/ab/cdef").unwrap(), data(2, 10));
    assert_eq!(o.head("blocks/ab/cdef").unwrap().unwrap().size, 10);

    // an empty object and a 5 MiB one
    o.put("empty", Bytes::new()).unwrap();
    assert_eq!(o.get("empty").unwrap().len(), 0);
    let big = data(3, 5 << 20);
    o.put("big/object", big.clone()).unwrap();
    assert!(o.get("big/object").unwrap() == big);

    // put_many / get_many (in order)
    let items: Vec<(String, Bytes)> = (0..40u8)
        .map(|i| (format!("many/{i:02}"), data(i, 512 + usize::from(i))))
        .collect();
    o.put_many(items.clone(), 8).unwrap();
    let wanted: Vec<String> = items.iter().rev().map(|(n, _)| n.clone()).collect();
    let got = o.get_many(wanted, 8).unwrap();
    let expect: Vec<Bytes> = items.iter().rev().map(|(_, d)| d.clone()).collect();
    assert!(got == expect, "get_many out of order or wrong");
    match o.get_many(vec!["many/00".into(), "many/missing".into()], 4) {
        Err(ObjError::NotFound { object }) => assert_eq!(object, "many/missing"),
        other => panic!("get_many with an absent object: {other:?}"),
    }

    // list: recursive, relative names, whole-segment prefixes
    let all = o.list("").unwrap();
    assert_eq!(all.len(), 43);
    let many = o.list("many").unwrap();
    assert_eq!(
        names(&many),
        items.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    assert_eq!(names(&o.list("blocks/").unwrap()), vec!["blocks/ab/cdef"]);
    assert!(o.list("nothing/here").unwrap().is_empty());
    let big_meta = all.iter().find(|m| m.name == "big/object").unwrap();
    assert_eq!(big_meta.size, 5 << 20);

    // delete
    o.delete("blocks/ab/cdef").unwrap();
    assert!(o.head("blocks/ab/cdef").unwrap().is_none());
    o.delete("blocks/ab/cdef").unwrap();

    // check() leaves nothing behind
    o.check().unwrap();
    assert!(o.list("probe").unwrap().is_empty());

    streaming(o);

    // clean up
    for m in o.list("").unwrap() {
        o.delete(&m.name).unwrap();
    }
    assert!(o.list("").unwrap().is_empty());
}

/// Streaming writes and reads: small (one PUT), multipart (over
/// [`atrest_objstore::PART`], with a short last part), an exact multiple
/// of the part size, and an abandoned writer that leaves nothing behind.
fn streaming(o: &Objects) {
    use std::io::{Read, Write};
    let part = atrest_objstore::PART;
    for (name, len) in [
        ("stream/empty", 0),
        ("stream/small", 1000),
        ("stream/multi", 2 * part + 12_345),
        ("stream/exact", 2 * part),
    ] {
        let want = data(7, len);
        let mut w = o.writer(name).unwrap();
        // Odd-sized writes cross part boundaries.
        for piece in want.chunks(777_777) {
            w.write_all(piece).unwrap();
        }
        assert!(
            o.head(name).unwrap().is_none(),
            "{name} visible before finish"
        );
        assert_eq!(w.finish().unwrap(), len as u64);
        assert_eq!(o.head(name).unwrap().unwrap().size, len as u64);
        let mut r = o.reader(name).unwrap();
        assert_eq!(r.size(), len as u64);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert!(got == want, "{name}: read back different bytes");
        assert!(o.get(name).unwrap() == want);
        o.delete(name).unwrap();
    }
    // A writer dropped before finish: no object.
    let mut w = o.writer("stream/abandoned").unwrap();
    w.write_all(&data(9, part + 10)).unwrap();
    drop(w);
    assert!(o.head("stream/abandoned").unwrap().is_none());
    // A reader of an absent object: NotFound naming it.
    match o.reader("stream/none") {
        Err(ObjError::NotFound { object }) => assert_eq!(object, "stream/none"),
        other => panic!("reader of an absent object: {other:?}"),
    }
    assert!(matches!(o.writer("a//b"), Err(ObjError::Config(_))));
}

#[test]
fn local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let o = Objects::open(&StoreConfig {
        url: format!("file://{}", root.display()),
        ..StoreConfig::default()
    })
    .unwrap();
    conformance(&o);
    // The same store, without the scheme, with a prefix-like subdir.
    let o2 = Objects::open(&StoreConfig {
        url: root.join("sub").display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    conformance(&o2);
}

fn s3_config(g: &Garage, url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        endpoint: Some(g.endpoint.clone()),
        region: Some(g.region.clone()),
        path_style: true,
    }
}

fn creds(g: &Garage) -> S3Credentials {
    S3Credentials::new(&g.access_key_id, &g.secret, None)
}

#[test]
fn garage() {
    let Some(g) = Garage::start().unwrap() else {
        return;
    };
    let c = creds(&g);

    // The whole bucket, then a prefix of a second bucket.
    let o =
        Objects::open_with_credentials(&s3_config(&g, &format!("s3://{}", g.bucket)), &c).unwrap();
    assert_eq!(
        o.location(),
        format!("s3://{} (endpoint {})", g.bucket, g.endpoint)
    );
    o.check().unwrap();
    conformance(&o);

    g.new_bucket("second").unwrap();
    let p = Objects::open_with_credentials(&s3_config(&g, "s3://second/snaps/x"), &c).unwrap();
    conformance(&p);
    // The prefix is really a prefix of the keys in the bucket.
    p.put("k", Bytes::from_static(b"v")).unwrap();
    let whole = Objects::open_with_credentials(&s3_config(&g, "s3://second"), &c).unwrap();
    assert_eq!(names(&whole.list("").unwrap()), vec!["snaps/x/k"]);
    assert_eq!(whole.get("snaps/x/k").unwrap(), Bytes::from_static(b"v"));

    // Wrong secret: AccessDenied naming the object, no credential in it.
    let bad = S3Credentials::new(&g.access_key_id, &"0".repeat(64), None);
    let o_bad = Objects::open_with_credentials(&s3_config(&g, &format!("s3://{}", g.bucket)), &bad)
        .unwrap();
    for (what, r) in [
        ("put", o_bad.put("blocks/x", Bytes::from_static(b"x")).err()),
        ("get", o_bad.get("blocks/x").err()),
        ("head", o_bad.head("blocks/x").err()),
        ("delete", o_bad.delete("blocks/x").err()),
    ] {
        let e = r.unwrap_or_else(|| panic!("{what} with a wrong secret succeeded"));
        eprintln!("{what} with a wrong secret: {e}");
        match &e {
            ObjError::AccessDenied { object, .. } => assert_eq!(object, "blocks/x", "{what}"),
            other => panic!("{what} with a wrong secret: {other:?}"),
        }
        let text = format!("{e} {e:?}");
        assert!(!text.contains(&g.secret), "secret in {text}");
        assert!(!text.contains(&g.access_key_id), "key id in {text}");
    }
    assert!(matches!(o_bad.list(""), Err(ObjError::AccessDenied { .. })));
    // A streaming write fails typed: at the first full part, or at finish.
    {
        use std::io::Write;
        let mut w = o_bad.writer("stream/big").unwrap();
        let e = w
            .write_all(&data(1, atrest_objstore::PART + 1))
            .unwrap_err();
        let e = ObjError::from_io(e).unwrap();
        assert!(
            matches!(&e, ObjError::AccessDenied { object, .. } if object == "stream/big"),
            "{e:?}"
        );
        let w = o_bad.writer("stream/small").unwrap();
        assert!(matches!(w.finish(), Err(ObjError::AccessDenied { .. })));
        assert!(matches!(
            o_bad.reader("stream/small"),
            Err(ObjError::AccessDenied { .. })
        ));
    }
    assert!(matches!(o_bad.check(), Err(ObjError::AccessDenied { .. })));

    // Unknown access key.
    let unknown = S3Credentials::new("GK00000000000000000000aaaa", &"1".repeat(64), None);
    let o_unknown =
        Objects::open_with_credentials(&s3_config(&g, &format!("s3://{}", g.bucket)), &unknown)
            .unwrap();
    let e = o_unknown.get("blocks/y").unwrap_err();
    eprintln!("get with an unknown key: {e}");
    assert!(
        matches!(&e, ObjError::AccessDenied { object, .. } if object == "blocks/y"),
        "{e:?}"
    );
    assert!(!e.to_string().contains("GK00000000000000000000aaaa"));

    // A bucket that does not exist.
    let nb = Objects::open_with_credentials(&s3_config(&g, "s3://no-such-bucket"), &c).unwrap();
    for (what, r) in [
        ("put", nb.put("a", Bytes::from_static(b"x")).err()),
        ("get", nb.get("a").err()),
        ("list", nb.list("").err()),
        ("check", nb.check().err()),
    ] {
        let e = r.unwrap_or_else(|| panic!("{what} on a missing bucket succeeded"));
        eprintln!("{what} on a missing bucket: {e}");
        assert!(
            matches!(&e, ObjError::NoSuchBucket { location, .. } if location.contains("s3://no-such-bucket")),
            "{what}: {e:?}"
        );
    }

    // A HEAD answer has no body: Garage's 404 for the missing bucket reads
    // as an absent object (documented on Objects::head).
    assert!(nb.head("a").unwrap().is_none());

    // Stopping garage makes its port a closed one.
    let endpoint = g.endpoint.clone();
    let bucket = g.bucket.clone();
    drop(g);
    let gone = Objects::open_with_credentials(
        &StoreConfig {
            url: format!("s3://{bucket}"),
            endpoint: Some(endpoint),
            region: Some("garage".into()),
            path_style: true,
        },
        &c,
    )
    .unwrap();
    let t = Instant::now();
    let e = gone.get("a").unwrap_err();
    assert!(matches!(e, ObjError::Unreachable { .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(15));
}

/// A closed loopback port fails fast as Unreachable (no garage needed).
#[test]
fn closed_port_is_unreachable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = Objects::open_with_credentials(
        &StoreConfig {
            url: "s3://bucket/p".into(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("garage".into()),
            path_style: true,
        },
        &S3Credentials::new("GKakid", "secret-value", None),
    )
    .unwrap();
    let t = Instant::now();
    for r in [
        o.get("a").err(),
        o.put("a", Bytes::new()).err(),
        o.list("").err(),
        o.check().err(),
    ] {
        let e = r.expect("a closed port answered");
        eprintln!("closed port: {e}");
        match &e {
            ObjError::Unreachable { location, .. } => {
                assert_eq!(
                    location,
                    &format!("s3://bucket/p (endpoint http://127.0.0.1:{port})")
                );
            }
            other => panic!("closed port: {other:?}"),
        }
        assert!(!e.to_string().contains("secret-value"));
    }
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// Calls work from inside a tokio runtime's worker thread too.
#[test]
fn callable_inside_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let o = Objects::open(&StoreConfig {
        url: dir.path().display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        o.put("x", Bytes::from_static(b"y")).unwrap();
        assert_eq!(o.get("x").unwrap(), Bytes::from_static(b"y"));
    });
}

/// Without credentials in the environment, opening an S3 store is a
/// configuration error (the instance metadata service is not tried).
#[test]
fn s3_without_credentials_is_config() {
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_some()
        || std::env::var_os("AWS_SECRET_ACCESS_KEY").is_some()
        || std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || std::env::var_os("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || std::env::var_os("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
    {
        return;
    }
    let r = Objects::open(&StoreConfig {
        url: "s3://b".into(),
        ..StoreConfig::default()
    });
    assert!(matches!(r, Err(ObjError::Config(_))), "{r:?}");
}
