//! The AWS JSON 1.1 protocol, minus HTTP: an operation name and a JSON body
//! in, a JSON body or a typed error out. The server and the fuzz target both
//! enter here.

use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::KmsError;
use crate::service::{Call, KeyService};

macro_rules! operations {
    ($($name:ident => $read_only:expr),* $(,)?) => {
        /// The operations of the KMS API that atrest implements.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Operation { $(
            #[doc = concat!("`", stringify!($name), "`")]
            $name,
        )* }

        impl Operation {
            /// Every operation.
            pub const ALL: &'static [Operation] = &[$(Operation::$name),*];

            /// The operation's name, as in `TrentService.<name>`.
            #[must_use]
            pub fn name(self) -> &'static str {
                match self { $(Operation::$name => stringify!($name),)* }
            }

            /// Whether the operation only reads the store (and so may run on
            /// the request thread without blocking on an fsync).
            #[must_use]
            pub fn is_read_only(self) -> bool {
                match self { $(Operation::$name => $read_only,)* }
            }

            /// The operation an `X-Amz-Target` value names.
            #[must_use]
            pub fn from_target(target: &str) -> Option<Self> {
                Self::from_name(target.strip_prefix("TrentService.")?)
            }

            /// The operation of this name (as [`Operation::name`] gives it).
            #[must_use]
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $(stringify!($name) => Some(Operation::$name),)* _ => None }
            }
        }
    };
}

operations! {
    CreateKey => false,
    DescribeKey => true,
    ListKeys => true,
    UpdateKeyDescription => false,
    EnableKey => false,
    DisableKey => false,
    ScheduleKeyDeletion => false,
    CancelKeyDeletion => false,
    Encrypt => true,
    Decrypt => true,
    ReEncrypt => true,
    GenerateDataKey => true,
    GenerateDataKeyWithoutPlaintext => true,
    GenerateRandom => true,
    CreateAlias => false,
    UpdateAlias => false,
    DeleteAlias => false,
    ListAliases => true,
    EnableKeyRotation => false,
    DisableKeyRotation => false,
    GetKeyRotationStatus => true,
    RotateKeyOnDemand => false,
    ListKeyRotations => true,
    TagResource => false,
    UntagResource => false,
    ListResourceTags => true,
    PutKeyPolicy => false,
    GetKeyPolicy => true,
    ListKeyPolicies => true,
    CreateGrant => false,
    ListGrants => true,
    ListRetirableGrants => true,
    RetireGrant => false,
    RevokeGrant => false,
    // Not a write, but RSA key generation takes long: off the reactor.
    GetParametersForImport => false,
    ImportKeyMaterial => false,
    DeleteImportedKeyMaterial => false,
    // RSA-4096 signing takes milliseconds: off the reactor.
    Sign => false,
    Verify => true,
    GetPublicKey => true,
    DeriveSharedSecret => true,
    // Generates an RSA key pair: off the reactor.
    GenerateDataKeyPair => false,
    GenerateDataKeyPairWithoutPlaintext => false,
    GenerateMac => true,
    VerifyMac => true,
    ReplicateKey => false,
    UpdatePrimaryRegion => false,
    DescribeCustomKeyStores => true,
    CreateCustomKeyStore => true,
    UpdateCustomKeyStore => true,
    DeleteCustomKeyStore => true,
    ConnectCustomKeyStore => true,
    DisconnectCustomKeyStore => true,
}

impl Operation {
    /// Whether the operation only uses keys and changes nothing: the data
    /// plane, tens of thousands of calls a second, whose successes the
    /// server logs at debug (the audit trail has every call). Sign and
    /// GenerateDataKeyPair* are in it although they run off the reactor.
    #[must_use]
    pub fn is_data_plane(self) -> bool {
        self.is_read_only()
            || matches!(
                self,
                Self::Sign | Self::GenerateDataKeyPair | Self::GenerateDataKeyPairWithoutPlaintext
            )
    }

    /// Whether the operation may call a key provider (a key held in
    /// another KMS), which blocks on the network.
    #[must_use]
    pub fn may_call_provider(self) -> bool {
        matches!(
            self,
            Self::Encrypt
                | Self::Decrypt
                | Self::ReEncrypt
                | Self::GenerateDataKey
                | Self::GenerateDataKeyWithoutPlaintext
        )
    }
}

/// Parses a request body, which must be a JSON object (AWS JSON 1.1). An
/// empty body is an empty object. serde's derived deserializers would also
/// take a positional array for a struct; the protocol does not allow that.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, KmsError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(T::default()),
        Some(b'{') => {}
        Some(_) => {
            return Err(KmsError::Serialization(
                "The request body must be a JSON object.".into(),
            ));
        }
    }
    serde_json::from_slice(body)
        .map_err(|e| KmsError::Serialization(format!("The request body could not be parsed: {e}")))
}

/// Serialises a response into a buffer that is wiped when dropped (responses
/// may hold plaintext).
fn respond<T: Serialize>(value: &T) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let mut out = Zeroizing::new(Vec::with_capacity(256));
    serde_json::to_writer(&mut *out, value)
        .map_err(|e| KmsError::Internal(format!("encoding response: {e}")))?;
    Ok(out)
}

impl KeyService {
    /// Runs one operation for the call on a JSON request body.
    pub fn call(
        &self,
        call: &Call<'_>,
        op: Operation,
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        use Operation as O;
        call.set_operation(op.name());
        match op {
            O::CreateKey => respond(&self.create_key(call, parse(body)?)?),
            O::DescribeKey => respond(&self.describe_key(call, parse(body)?)?),
            O::ListKeys => respond(&self.list_keys(call, parse(body)?)?),
            O::UpdateKeyDescription => respond(&self.update_key_description(call, parse(body)?)?),
            O::EnableKey => respond(&self.enable_key(call, parse(body)?)?),
            O::DisableKey => respond(&self.disable_key(call, parse(body)?)?),
            O::ScheduleKeyDeletion => respond(&self.schedule_key_deletion(call, parse(body)?)?),
            O::CancelKeyDeletion => respond(&self.cancel_key_deletion(call, parse(body)?)?),
            O::Encrypt => respond(&self.encrypt(call, parse(body)?)?),
            O::Decrypt => respond(&self.decrypt(call, parse(body)?)?),
            O::ReEncrypt => respond(&self.re_encrypt(call, parse(body)?)?),
            O::GenerateDataKey => respond(&self.generate_data_key(call, parse(body)?, true)?),
            O::GenerateDataKeyWithoutPlaintext => {
                respond(&self.generate_data_key(call, parse(body)?, false)?)
            }
            O::GenerateRandom => respond(&self.generate_random(call, parse(body)?)?),
            O::CreateAlias => respond(&self.create_alias(call, parse(body)?)?),
            O::UpdateAlias => respond(&self.update_alias(call, parse(body)?)?),
            O::DeleteAlias => respond(&self.delete_alias(call, parse(body)?)?),
            O::ListAliases => respond(&self.list_aliases(call, parse(body)?)?),
            O::EnableKeyRotation => respond(&self.enable_key_rotation(call, parse(body)?)?),
            O::DisableKeyRotation => respond(&self.disable_key_rotation(call, parse(body)?)?),
            O::GetKeyRotationStatus => respond(&self.get_key_rotation_status(call, parse(body)?)?),
            O::RotateKeyOnDemand => respond(&self.rotate_key_on_demand(call, parse(body)?)?),
            O::ListKeyRotations => respond(&self.list_key_rotations(call, parse(body)?)?),
            O::TagResource => respond(&self.tag_resource(call, parse(body)?)?),
            O::UntagResource => respond(&self.untag_resource(call, parse(body)?)?),
            O::ListResourceTags => respond(&self.list_resource_tags(call, parse(body)?)?),
            O::PutKeyPolicy => respond(&self.put_key_policy(call, parse(body)?)?),
            O::GetKeyPolicy => respond(&self.get_key_policy(call, parse(body)?)?),
            O::ListKeyPolicies => respond(&self.list_key_policies(call, parse(body)?)?),
            O::CreateGrant => respond(&self.create_grant(call, parse(body)?)?),
            O::ListGrants => respond(&self.list_grants(call, parse(body)?)?),
            O::ListRetirableGrants => respond(&self.list_retirable_grants(call, parse(body)?)?),
            O::RetireGrant => respond(&self.retire_grant(call, parse(body)?)?),
            O::RevokeGrant => respond(&self.revoke_grant(call, parse(body)?)?),
            O::GetParametersForImport => {
                respond(&self.get_parameters_for_import(call, parse(body)?)?)
            }
            O::ImportKeyMaterial => respond(&self.import_key_material(call, parse(body)?)?),
            O::DeleteImportedKeyMaterial => {
                respond(&self.delete_imported_key_material(call, parse(body)?)?)
            }
            O::Sign => respond(&self.sign(call, parse(body)?)?),
            O::Verify => respond(&self.verify(call, parse(body)?)?),
            O::GetPublicKey => respond(&self.get_public_key(call, parse(body)?)?),
            O::DeriveSharedSecret => respond(&self.derive_shared_secret(call, parse(body)?)?),
            O::GenerateDataKeyPair => {
                respond(&self.generate_data_key_pair(call, parse(body)?, true)?)
            }
            O::GenerateDataKeyPairWithoutPlaintext => {
                respond(&self.generate_data_key_pair(call, parse(body)?, false)?)
            }
            O::GenerateMac => respond(&self.generate_mac(call, parse(body)?)?),
            O::VerifyMac => respond(&self.verify_mac(call, parse(body)?)?),
            O::ReplicateKey => respond(&self.replicate_key(call, parse(body)?)?),
            O::UpdatePrimaryRegion => respond(&self.update_primary_region(call, parse(body)?)?),
            O::DescribeCustomKeyStores => {
                respond(&self.describe_custom_key_stores(call, parse(body)?)?)
            }
            O::CreateCustomKeyStore
            | O::UpdateCustomKeyStore
            | O::DeleteCustomKeyStore
            | O::ConnectCustomKeyStore
            | O::DisconnectCustomKeyStore => Err(KmsError::UnsupportedOperation(format!(
                "atrest's custom key stores are the key providers its operator configures (serve --key-providers); {} is not available through the API.",
                op.name()
            ))),
        }
    }
}
