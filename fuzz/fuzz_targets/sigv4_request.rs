//! Any Authorization header, date, path and body: SigV4 parsing and
//! verification return an error or a result, never a panic.
#![no_main]

use http::{HeaderMap, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts: Vec<&[u8]> = data.splitn(4, |b| *b == b'\n').collect();
    let get = |i: usize| parts.get(i).copied().unwrap_or_default();
    let _ = atrest_sigv4::parse_authorization(&String::from_utf8_lossy(get(0)));
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(get(0)) {
        headers.insert("authorization", v);
    }
    if let Ok(v) = HeaderValue::from_bytes(get(1)) {
        headers.insert("x-amz-date", v);
    }
    headers.insert("host", HeaderValue::from_static("127.0.0.1:1"));
    let uri = std::str::from_utf8(get(2))
        .ok()
        .and_then(|s| s.parse::<Uri>().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    let regions = vec!["us-east-1".to_owned()];
    let policy = atrest_sigv4::Policy {
        service: "kms",
        regions: &regions,
        now: time::OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("time"),
    };
    let _ = atrest_sigv4::canonical_uri(&uri);
    let _ = atrest_sigv4::canonical_query(&uri);
    if let Ok(parsed) = atrest_sigv4::parse_request(&Method::POST, &uri, &headers, get(3), &policy)
    {
        let _ = parsed.verify(b"secret");
    }
});
