// Shared set-up for the key-service fuzz targets: one in-memory service with
// one key, built once per process.

use std::sync::{Arc, OnceLock};

use atrest_crypto::Aes256Key;
use atrest_kms::clock::SystemClock;
use atrest_kms::names::AccountId;
use atrest_kms::root::RootKey;
use atrest_kms::{Call, Caller, KeyService, Operation, RequestMeta};
use atrest_store::MemoryStore;

pub struct Fixture {
    pub kms: KeyService,
    pub caller: Caller,
    pub key_id: String,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let kms = KeyService::open(
            Arc::new(MemoryStore::new()),
            RootKey::from_key(Aes256Key::generate().expect("rng")),
            vec!["us-east-1".into()],
            Arc::new(SystemClock),
        )
        .expect("open");
        let caller = Caller::root(
            AccountId::parse("111122223333").expect("account"),
            "us-east-1",
        );
        let meta = RequestMeta::in_process();
        let out = kms
            .call(&Call::new(&caller, &meta), Operation::CreateKey, b"{}")
            .expect("create key");
        let v: serde_json_lite::Value = serde_json_lite::parse(&out);
        Fixture {
            kms,
            caller,
            key_id: v.key_id,
        }
    })
}

impl Fixture {
    /// Runs one operation as the account root, in process.
    pub fn call(
        &self,
        op: Operation,
        body: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, atrest_kms::KmsError> {
        let meta = RequestMeta::in_process();
        self.kms.call(&Call::new(&self.caller, &meta), op, body)
    }
}

/// Just enough JSON reading to get the new key's id without another dependency.
mod serde_json_lite {
    pub struct Value {
        pub key_id: String,
    }
    pub fn parse(b: &[u8]) -> Value {
        let s = String::from_utf8_lossy(b);
        let i = s.find("\"KeyId\":\"").expect("KeyId") + 9;
        let j = s[i..].find('"').expect("end") + i;
        Value {
            key_id: s[i..j].to_owned(),
        }
    }
}
