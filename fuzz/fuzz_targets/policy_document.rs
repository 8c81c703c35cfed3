//! Any bytes as a key policy or identity policy: parsing returns a document
//! or a MalformedPolicyDocument message, and evaluating any parsed document
//! never panics.
#![no_main]

use atrest_policy::{Context, PolicyDocument, PolicyKind, Principal, PrincipalKind, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut ctx = Context::new();
    ctx.set("kms:CallerAccount", "111122223333");
    ctx.set("kms:ViaService", "disk.us-east-1.atrest");
    ctx.set("kms:EncryptionContext:app", "billing");
    ctx.set_many(
        "kms:EncryptionContextKeys",
        vec!["app".into(), "team".into()],
    );
    for kind in [PolicyKind::Resource, PolicyKind::Identity] {
        let Ok(doc) = PolicyDocument::parse(text, kind) else {
            continue;
        };
        for principal in [
            Principal {
                account: "111122223333".into(),
                kind: PrincipalKind::Root,
            },
            Principal {
                account: "111122223333".into(),
                kind: PrincipalKind::User("alice".into()),
            },
            Principal {
                account: "999999999999".into(),
                kind: PrincipalKind::Service("disk.atrest".into()),
            },
        ] {
            let e = doc.evaluate(&Request {
                principal: &principal,
                action: "kms:Encrypt",
                resource: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                context: &ctx,
            });
            // A document that allows and denies at once is fine; one that is
            // evaluated twice must say the same.
            let again = doc.evaluate(&Request {
                principal: &principal,
                action: "kms:Encrypt",
                resource: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                context: &ctx,
            });
            assert_eq!(e, again);
        }
    }
});
