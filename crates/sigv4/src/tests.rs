use http::{HeaderMap, HeaderValue, Method, Uri};
use proptest::prelude::*;
use time::{Duration, OffsetDateTime};

use super::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &[u8] = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn at(amz: &str) -> OffsetDateTime {
    parse_amz_date(amz).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

struct Kat {
    method: &'static str,
    uri: &'static str,
    host: &'static str,
    extra: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    region: &'static str,
    service: &'static str,
    amz_date: &'static str,
    signed: &'static str,
    signature: &'static str,
}

/// The first is the worked example of AWS's SigV4 documentation; the others
/// were produced by botocore's `SigV4Auth`, an independent implementation.
const KATS: &[Kat] = &[
    Kat {
        method: "GET",
        uri: "/?Action=ListUsers&Version=2010-05-08",
        host: "iam.amazonaws.com",
        extra: &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )],
        body: b"",
        region: "us-east-1",
        service: "iam",
        amz_date: "20150830T123600Z",
        signed: "content-type;host;x-amz-date",
        signature: "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
    },
    Kat {
        method: "POST",
        uri: "/",
        host: "127.0.0.1:4566",
        extra: &[
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "TrentService.GenerateDataKey"),
        ],
        body: br#"{"KeyId":"alias/test","KeySpec":"AES_256"}"#,
        region: "us-east-1",
        service: "kms",
        amz_date: "20250304T050607Z",
        signed: "content-type;host;x-amz-date;x-amz-target",
        signature: "399d1e67ee0a43b45435942c8f1dc68e693f745fbc70145c5e428b6a26d4c03e",
    },
    Kat {
        method: "GET",
        uri: "/v1/keys/a%20b/./c/../d?b=2&a=1&a=0&empty=&sp=x%20y",
        host: "example.amazonaws.com",
        extra: &[],
        body: b"",
        region: "eu-west-1",
        service: "atrest",
        amz_date: "20250304T050607Z",
        signed: "host;x-amz-date",
        signature: "4fd7ab37cf0b658cdff9b6d3d93df53e3a897efd32d4b34e5c007c84e99db160",
    },
    Kat {
        method: "PUT",
        uri: "//double//slash/",
        host: "localhost:8080",
        extra: &[("x-amz-meta-spaces", "  a   b  c ")],
        body: b"body bytes",
        region: "ap-south-1",
        service: "atrest",
        amz_date: "20250304T050607Z",
        signed: "host;x-amz-date;x-amz-meta-spaces",
        signature: "83a2155299e97d9fb0476580234f4566baa24a53dea3565373b9a315f4ba8831",
    },
];

fn kat_request(k: &Kat) -> (Method, Uri, HeaderMap) {
    let mut h = headers(k.extra);
    h.insert("host", HeaderValue::from_static(k.host));
    (k.method.parse().unwrap(), k.uri.parse().unwrap(), h)
}

#[test]
fn known_answers_sign_and_verify() {
    for k in KATS {
        let (m, u, mut h) = kat_request(k);
        let creds = Credentials {
            access_key_id: AKID,
            secret_access_key: SECRET,
        };
        sign(
            &m,
            &u,
            &mut h,
            k.body,
            &creds,
            &Scope {
                region: k.region,
                service: k.service,
                time: at(k.amz_date),
            },
        )
        .unwrap();
        let want = format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/{}/{}/{}/aws4_request, SignedHeaders={}, Signature={}",
            &k.amz_date[..8],
            k.region,
            k.service,
            k.signed,
            k.signature
        );
        assert_eq!(h.get("authorization").unwrap(), want.as_str(), "{}", k.uri);

        let regions = vec![k.region.to_owned()];
        let policy = Policy {
            service: k.service,
            regions: &regions,
            now: at(k.amz_date),
        };
        let parsed = parse_request(&m, &u, &h, k.body, &policy).unwrap();
        assert_eq!(parsed.access_key_id(), AKID);
        assert_eq!(parsed.region(), k.region);
        parsed.verify(SECRET).unwrap();
        assert_eq!(
            parsed.verify(b"wrong secret").unwrap_err().aws_type(),
            "InvalidSignatureException"
        );
        // The cache gives the same answers, including after a scope change.
        let cache = SigningKeyCache::new();
        for _ in 0..2 {
            parsed.verify_cached(SECRET, Some(&cache)).unwrap();
        }
        let (m2, u2, mut h2) = kat_request(k);
        sign_cached(
            &m2,
            &u2,
            &mut h2,
            k.body,
            &creds,
            &Scope {
                region: k.region,
                service: k.service,
                time: at(k.amz_date),
            },
            Some(&cache),
        )
        .unwrap();
        assert_eq!(h2.get("authorization"), h.get("authorization"));
        // A secret that changed is never verified with the key cached for
        // the old one.
        let other = SigningKeyCache::new();
        parsed.verify_cached(SECRET, Some(&other)).unwrap();
        assert!(
            parsed
                .verify_cached(b"rotated secret", Some(&other))
                .is_err()
        );
        // A wrong secret is never accepted, and does not poison the cache.
        assert!(parsed.verify_cached(b"wrong secret", Some(&cache)).is_err());
        parsed.verify_cached(SECRET, Some(&cache)).unwrap();
        cache.forget(AKID);
        parsed.verify_cached(SECRET, Some(&cache)).unwrap();
    }
}

fn kms_request(
    now: OffsetDateTime,
    region: &str,
    service: &str,
) -> (Method, Uri, HeaderMap, Vec<u8>) {
    let m = Method::POST;
    let u: Uri = "/".parse().unwrap();
    let mut h = headers(&[
        ("host", "127.0.0.1:9000"),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "TrentService.ListKeys"),
    ]);
    let body = b"{}".to_vec();
    let creds = Credentials {
        access_key_id: AKID,
        secret_access_key: SECRET,
    };
    sign(
        &m,
        &u,
        &mut h,
        &body,
        &creds,
        &Scope {
            region,
            service,
            time: now,
        },
    )
    .unwrap();
    (m, u, h, body)
}

fn check(
    req: &(Method, Uri, HeaderMap, Vec<u8>),
    now: OffsetDateTime,
) -> Result<ParsedRequest, AuthError> {
    let regions = vec!["us-east-1".to_owned(), "eu-west-1".to_owned()];
    parse_request(
        &req.0,
        &req.1,
        &req.2,
        &req.3,
        &Policy {
            service: "kms",
            regions: &regions,
            now,
        },
    )
}

#[test]
fn rejections_name_the_aws_error() {
    let now = at("20250304T050607Z");
    let ok = kms_request(now, "eu-west-1", "kms");
    check(&ok, now).unwrap().verify(SECRET).unwrap();

    // Wrong region and wrong service in the credential scope.
    let e = check(&kms_request(now, "ap-south-9", "kms"), now).unwrap_err();
    assert_eq!(e.aws_type(), "InvalidSignatureException");
    assert!(
        e.to_string().contains("valid region, not 'ap-south-9'"),
        "{e}"
    );
    let e = check(&kms_request(now, "us-east-1", "s3"), now).unwrap_err();
    assert!(e.to_string().contains("correct service: 'kms'"), "{e}");

    // Six minutes either way.
    for offset in [Duration::minutes(6), Duration::minutes(-6)] {
        let e = check(&kms_request(now + offset, "us-east-1", "kms"), now).unwrap_err();
        assert_eq!(e.aws_type(), "InvalidSignatureException", "{e}");
        assert!(e.to_string().starts_with("Signature "), "{e}");
    }
    // Four minutes is within the window.
    check(
        &kms_request(now - Duration::minutes(4), "us-east-1", "kms"),
        now,
    )
    .unwrap();

    // No Authorization at all.
    let mut bare = ok.clone();
    bare.2.remove("authorization");
    assert_eq!(
        check(&bare, now).unwrap_err(),
        AuthError::MissingAuthenticationToken
    );

    // Missing X-Amz-Date.
    let mut nodate = ok.clone();
    nodate.2.remove("x-amz-date");
    assert_eq!(
        check(&nodate, now).unwrap_err().aws_type(),
        "IncompleteSignatureException"
    );

    // A credential scope dated another day than X-Amz-Date.
    let mut other_day = ok.clone();
    let auth = other_day.2["authorization"]
        .to_str()
        .unwrap()
        .replace("/20250304/", "/20250303/");
    other_day
        .2
        .insert("authorization", HeaderValue::from_str(&auth).unwrap());
    let e = check(&other_day, now).unwrap_err();
    assert_eq!(e.aws_type(), "InvalidSignatureException");
    assert!(e.to_string().contains("'20250303' != '20250304'"), "{e}");

    // Body, target and header tampering all break the signature.
    let mut body = ok.clone();
    body.3 = b"{ }".to_vec();
    assert!(check(&body, now).unwrap().verify(SECRET).is_err());
    let mut target = ok.clone();
    target.2.insert(
        "x-amz-target",
        HeaderValue::from_static("TrentService.Decrypt"),
    );
    assert!(check(&target, now).unwrap().verify(SECRET).is_err());

    // A signed header that is missing.
    let mut gone = ok;
    gone.2.remove("x-amz-target");
    assert_eq!(
        check(&gone, now).unwrap_err().aws_type(),
        "InvalidSignatureException"
    );

    // A body hash header that lies (signed, so that the hash check is what
    // refuses it).
    let lying = signed_request(
        now,
        &[
            ("host", "127.0.0.1:9000"),
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", "TrentService.ListKeys"),
            ("x-amz-content-sha256", "00"),
        ],
        &[],
    );
    let e = check(&lying, now).unwrap_err();
    assert_eq!(e.aws_type(), "InvalidSignatureException");
    assert!(e.to_string().contains("x-amz-content-sha256"), "{e}");
    assert!(!matches!(e, AuthError::UnsignedHeader(_)), "{e}");
}

/// A KMS `POST /` with body `{}`: `signed` present when it is signed (all of
/// them are: [`sign`] signs every `content-type` and `x-amz-*` header),
/// `unsigned` added afterwards, so that the signature is valid over exactly
/// the headers it lists.
fn signed_request(
    now: OffsetDateTime,
    signed: &[(&str, &str)],
    unsigned: &[(&str, &str)],
) -> (Method, Uri, HeaderMap, Vec<u8>) {
    let (m, u, body) = (Method::POST, "/".parse::<Uri>().unwrap(), b"{}".to_vec());
    let mut h = headers(signed);
    sign(
        &m,
        &u,
        &mut h,
        &body,
        &Credentials {
            access_key_id: AKID,
            secret_access_key: SECRET,
        },
        &Scope {
            region: "us-east-1",
            service: "kms",
            time: now,
        },
    )
    .unwrap();
    for (k, v) in unsigned {
        h.append(
            http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    (m, u, h, body)
}

fn signed_headers_of(req: &(Method, Uri, HeaderMap, Vec<u8>)) -> String {
    parse_authorization(req.2["authorization"].to_str().unwrap())
        .unwrap()
        .signed_headers()
        .to_owned()
}

#[test]
fn every_x_amz_header_and_content_type_must_be_signed() {
    let now = at("20250304T050607Z");
    let host = ("host", "127.0.0.1:9000");
    let ctype = ("content-type", "application/x-amz-json-1.1");
    let describe = ("x-amz-target", "TrentService.DescribeKey");

    // Everything signed: accepted.
    let ok = signed_request(now, &[host, ctype, describe], &[]);
    assert_eq!(
        signed_headers_of(&ok),
        "content-type;host;x-amz-date;x-amz-target"
    );
    check(&ok, now).unwrap().verify(SECRET).unwrap();

    // One header left out of SignedHeaders, the signature valid over the
    // rest (without the header, the same request verifies): refused, naming
    // the header, whatever the signature.
    let body_hash = hex_sha256(b"{}");
    let x_amz_sha = ("x-amz-content-sha256", body_hash.as_str());
    let others = [host, ctype, describe, x_amz_sha];
    for left_out in [describe, ctype, x_amz_sha] {
        let rest: Vec<_> = others.iter().copied().filter(|h| *h != left_out).collect();
        let without = signed_request(now, &rest, &[]);
        check(&without, now).unwrap().verify(SECRET).unwrap();
        let replay = signed_request(now, &rest, &[left_out]);
        assert!(!signed_headers_of(&replay).contains(left_out.0));
        let e = check(&replay, now).unwrap_err();
        assert_eq!(e, AuthError::UnsignedHeader(left_out.0.to_owned()));
        assert_eq!(e.aws_type(), "InvalidSignatureException");
        assert_eq!(
            e.to_string(),
            format!(
                "The request's {} header is not signed; every x-amz-* header present and \
                 content-type must be among SignedHeaders.",
                left_out.0
            )
        );
    }

    // The replay itself: DescribeKey signed without its target, sent as
    // DisableKey.
    let replay = signed_request(
        now,
        &[host, ctype],
        &[("x-amz-target", "TrentService.DisableKey")],
    );
    assert_eq!(
        check(&replay, now).unwrap_err(),
        AuthError::UnsignedHeader("x-amz-target".into())
    );

    // Any other x-amz-* header too; several unsigned: the first by name.
    for extra in [
        ("x-amz-security-token", "token"),
        ("x-amz-user-agent", "aws-sdk-js/2"),
        ("x-amz-meta-anything", "1"),
    ] {
        let e = check(
            &signed_request(now, &[host, ctype, describe], &[extra]),
            now,
        )
        .unwrap_err();
        assert_eq!(e, AuthError::UnsignedHeader(extra.0.to_owned()));
    }
    let e = check(
        &signed_request(
            now,
            &[host],
            &[describe, ("x-amz-security-token", "t"), ctype],
        ),
        now,
    )
    .unwrap_err();
    assert_eq!(e, AuthError::UnsignedHeader("content-type".into()));

    // Other headers may stay unsigned, as AWS's SDKs leave them
    // (user-agent, content-length, AWS's own x-amzn-* trace headers).
    let loose = signed_request(
        now,
        &[host, ctype, describe],
        &[
            ("user-agent", "Boto3/1.35"),
            ("content-length", "2"),
            ("x-amzn-trace-id", "Root=1-0"),
            ("amz-sdk-invocation-id", "0"),
        ],
    );
    check(&loose, now).unwrap().verify(SECRET).unwrap();

    // A REST request: no X-Amz-Target, no Content-Type, nothing to require.
    let rest = signed_request(now, &[host], &[]);
    assert_eq!(signed_headers_of(&rest), "host;x-amz-date");
    check(&rest, now).unwrap().verify(SECRET).unwrap();
}

#[test]
fn header_names_are_compared_case_insensitively() {
    let now = at("20250304T050607Z");
    // Sent in mixed case (as botocore and the aws CLI write them); signed
    // lower-case, as SigV4 lists them.
    let ok = signed_request(
        now,
        &[
            ("Host", "127.0.0.1:9000"),
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "TrentService.DescribeKey"),
        ],
        &[],
    );
    assert_eq!(
        signed_headers_of(&ok),
        "content-type;host;x-amz-date;x-amz-target"
    );
    check(&ok, now).unwrap().verify(SECRET).unwrap();
    let e = check(
        &signed_request(
            now,
            &[
                ("Host", "127.0.0.1:9000"),
                ("X-Amz-Target", "TrentService.DescribeKey"),
            ],
            &[("CONTENT-TYPE", "application/x-amz-json-1.1")],
        ),
        now,
    )
    .unwrap_err();
    assert_eq!(e, AuthError::UnsignedHeader("content-type".into()));
    let e = check(
        &signed_request(
            now,
            &[("Host", "127.0.0.1:9000")],
            &[("X-AMZ-Target", "TrentService.DisableKey")],
        ),
        now,
    )
    .unwrap_err();
    assert_eq!(e, AuthError::UnsignedHeader("x-amz-target".into()));
}

#[test]
fn malformed_authorization_headers() {
    let cases = [
        ("", "IncompleteSignatureException"),
        (
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/e",
            "IncompleteSignatureException",
        ),
        ("AWS4-HMAC-SHA256", "IncompleteSignatureException"),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms, SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws5_request, SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/2025x304/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request, SignedHeaders=Host, Signature=00",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=zz",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request, Credential=B, SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request, Bogus=1, SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
        ),
    ];
    for (value, want) in cases {
        let e = parse_authorization(value).unwrap_err();
        assert_eq!(e.aws_type(), want, "{value:?}: {e}");
    }
    let missing =
        parse_authorization("AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request")
            .unwrap_err()
            .to_string();
    assert!(
        missing.contains("requires 'Signature'") && missing.contains("requires 'SignedHeaders'"),
        "{missing}"
    );
}

#[test]
fn canonical_uri_and_query_rules() {
    let u = |s: &str| s.parse::<Uri>().unwrap();
    assert_eq!(canonical_uri(&u("/")), "/");
    assert_eq!(canonical_uri(&u("/a/./b/../c/")), "/a/c/");
    assert_eq!(canonical_uri(&u("/../..")), "/");
    assert_eq!(canonical_uri(&u("/a%2Fb")), "/a%252Fb");
    assert_eq!(
        canonical_query(&u("/?b=%2f&a=x+y&a=&c")),
        "a=&a=x%2By&b=%2F&c="
    );
    // A stray % and non-ASCII bytes do not panic and are encoded.
    assert_eq!(
        canonical_query(&u("/?k=%zz%e2%82%ac%")),
        "k=%25zz%E2%82%AC%25"
    );
}

#[test]
fn authorization_parts_are_where_the_header_says() {
    let a = parse_authorization(&format!(
        "  AWS4-HMAC-SHA256 Credential=AKID/20250304/eu-west-1/kms/aws4_request,SignedHeaders=host;x-amz-date, Signature={}  ",
        "0a".repeat(32)
    ))
    .unwrap();
    assert_eq!(a.access_key_id(), "AKID");
    assert_eq!(a.date(), "20250304");
    assert_eq!(a.region(), "eu-west-1");
    assert_eq!(a.service(), "kms");
    assert_eq!(a.signed_headers(), "host;x-amz-date");
    assert_eq!(a.signature(), &[0x0a; 32]);
    for bad in [
        "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request/x, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/aws4_request, SignedHeaders=host, Signature=00",
        "AWS4-HMAC-SHA256 Credential=A/20250304/us-east-1/kms/aws4_request, SignedHeaders=host;;x-amz-date, Signature=00",
    ] {
        assert_eq!(
            parse_authorization(bad).unwrap_err().aws_type(),
            "IncompleteSignatureException",
            "{bad}"
        );
    }
}

#[test]
fn amz_dates_outside_the_calendar_are_refused() {
    for bad in [
        "20250230T000000Z",
        "20251301T000000Z",
        "20250304T240000Z",
        "20250304T236000Z",
        "20250304T000000",
        "20250304 000000Z",
        "2025030T0000000Z",
        "+2025030T000000Z",
        "20250304T000000Z ",
        "",
    ] {
        assert!(parse_amz_date(bad).is_none(), "{bad:?}");
    }
    assert_eq!(
        parse_amz_date("20240229T235959Z").unwrap(),
        time::macros::datetime!(2024-02-29 23:59:59 UTC)
    );
}

proptest! {
    /// The hand-written `X-Amz-Date` parser agrees with the time crate's
    /// parser of the same format, on dates and on near-misses.
    #[test]
    fn amz_date_parser_agrees_with_the_format_description(
        s in "[0-9]{8}T[0-9]{6}Z|[0-9+-]{4}[0-9]{4}T[0-9 ]{6}Z|[0-9TZ]{14,17}",
    ) {
        let reference = time::PrimitiveDateTime::parse(&s, AMZ_DATE)
            .ok()
            .map(time::PrimitiveDateTime::assume_utc);
        prop_assert_eq!(parse_amz_date(&s), reference);
    }

    #[test]
    fn parse_authorization_never_panics(s in "\\PC{0,200}") {
        let _ = parse_authorization(&s);
    }

    /// Any `x-amz-*` header added after signing is refused; any header of
    /// another name is not the signature's concern.
    #[test]
    fn an_unsigned_x_amz_header_is_always_refused(
        suffix in "[a-z0-9-]{1,20}",
        other in "[a-wyz][a-z0-9-]{0,20}",
    ) {
        let now = at("20250304T050607Z");
        let signed = [("host", "h:1"), ("x-amz-target", "TrentService.ListKeys")];
        let name = format!("x-amz-{suffix}");
        let e = check(&signed_request(now, &signed, &[(&name, "v")]), now).unwrap_err();
        prop_assert_eq!(e, AuthError::UnsignedHeader(name));
        prop_assume!(other != "content-type" && other != "host" && other != "authorization");
        let loose = signed_request(now, &signed, &[(&other, "v")]);
        prop_assert!(check(&loose, now).unwrap().verify(SECRET).is_ok());
    }

    #[test]
    fn sign_then_verify_round_trips(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        target in "[A-Za-z.]{1,30}",
        path in "(/[a-z0-9%._~-]{0,8}){1,4}",
        secs in 0i64..2_000_000_000,
    ) {
        let now = OffsetDateTime::from_unix_timestamp(secs).unwrap();
        let m = Method::POST;
        let u: Uri = path.parse().unwrap();
        let mut h = headers(&[("host", "h:1"), ("x-amz-target", &target)]);
        let creds = Credentials { access_key_id: AKID, secret_access_key: SECRET };
        sign(&m, &u, &mut h, &body, &creds, &Scope { region: "us-east-1", service: "kms", time: now }).unwrap();
        let regions = vec!["us-east-1".to_owned()];
        let parsed = parse_request(&m, &u, &h, &body, &Policy { service: "kms", regions: &regions, now }).unwrap();
        prop_assert!(parsed.verify(SECRET).is_ok());
        prop_assert!(parsed.verify(b"not the secret").is_err());
    }
}
