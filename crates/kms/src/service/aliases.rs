//! CreateAlias, UpdateAlias, DeleteAlias, ListAliases.

use atrest_store::ReadTx;

use super::authz::Facts;
use super::pagination::{self, Listing};
use super::{Call, KeyService};
use crate::KmsError;
use crate::api::{
    self, AliasEntry, AliasRequest, Aliases, DeleteAliasRequest, Empty, ListAliasesRequest, Page,
};
use crate::clock::epoch_seconds;
use crate::names::{KeyRef, alias_arn, validate_alias_name};
use crate::records::{self, AliasRecord, KeyRecord};

/// Aliases one key may have (AWS's quota).
pub const MAX_ALIASES_PER_KEY: usize = 50;

impl KeyService {
    /// The key an alias request targets: a key id or key ARN, not an alias.
    fn alias_target(
        &self,
        tx: &dyn ReadTx,
        call: &Call<'_>,
        target: Option<String>,
    ) -> Result<KeyRecord, KmsError> {
        let raw = api::required(target, "targetKeyId")?;
        let key_ref = KeyRef::parse(&raw)?;
        if key_ref.is_alias() {
            return Err(KmsError::Validation(format!(
                "TargetKeyId '{raw}' must be a key ID or key ARN, not an alias."
            )));
        }
        let key = self.resolve(tx, call, &key_ref)?;
        Self::require_not_pending_deletion(&key)?;
        Self::require_customer_managed(&key, "point a customer alias at")?;
        Ok(key)
    }

    fn aliases_of(tx: &dyn ReadTx, key: &KeyRecord) -> Result<usize, KmsError> {
        let prefix = records::owner_prefix(&key.region, &key.account);
        let mut n = 0;
        for (_, v) in tx.scan(records::ALIASES, &prefix, None, usize::MAX)? {
            let a: AliasRecord = records::decode(records::ALIASES, &v)?;
            if a.target == key.id {
                n += 1;
            }
        }
        Ok(n)
    }

    /// CreateAlias.
    pub fn create_alias(&self, call: &Call<'_>, req: AliasRequest) -> Result<Empty, KmsError> {
        let caller = call.caller;
        let name = api::required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        let mut tx = self.store.write()?;
        let key = self.alias_target(&*tx, call, req.target_key_id)?;
        let this_alias = alias_arn(&caller.region, caller.account.as_str(), &name);
        // AWS requires permission on the alias (identity) and on the key.
        self.authorize_identity(&*tx, call, "CreateAlias", &this_alias)?;
        self.authorize_key(&*tx, call, "CreateAlias", &key, &Facts::default())?;
        let k = records::alias_key(&caller.region, caller.account.as_str(), &name);
        if tx.get(records::ALIASES, &k)?.is_some() {
            return Err(KmsError::AlreadyExists(format!(
                "An alias with the name {} already exists",
                alias_arn(&caller.region, caller.account.as_str(), &name)
            )));
        }
        if Self::aliases_of(&*tx, &key)? >= MAX_ALIASES_PER_KEY {
            return Err(KmsError::LimitExceeded(format!(
                "{} already has {MAX_ALIASES_PER_KEY} aliases, the most a key may have.",
                Self::arn(&key)
            )));
        }
        let now = self.now_ms();
        records::put(
            &mut *tx,
            records::ALIASES,
            &k,
            &AliasRecord {
                v: 1,
                target: key.id,
                created: now,
                updated: now,
            },
        )?;
        self.commit(tx, call)?;
        Ok(Empty {})
    }

    /// UpdateAlias: points an existing alias at another key of the same
    /// account and region.
    pub fn update_alias(&self, call: &Call<'_>, req: AliasRequest) -> Result<Empty, KmsError> {
        let caller = call.caller;
        let name = api::required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        let mut tx = self.store.write()?;
        let k = records::alias_key(&caller.region, caller.account.as_str(), &name);
        let mut alias: AliasRecord =
            records::get(&*tx, records::ALIASES, &k)?.ok_or_else(|| {
                KmsError::NotFound(format!(
                    "Alias {} is not found.",
                    alias_arn(&caller.region, caller.account.as_str(), &name)
                ))
            })?;
        let key = self.alias_target(&*tx, call, req.target_key_id)?;
        let this_alias = alias_arn(&caller.region, caller.account.as_str(), &name);
        self.authorize_identity(&*tx, call, "UpdateAlias", &this_alias)?;
        self.authorize_key(&*tx, call, "UpdateAlias", &key, &Facts::default())?;
        if alias.target != key.id && Self::aliases_of(&*tx, &key)? >= MAX_ALIASES_PER_KEY {
            return Err(KmsError::LimitExceeded(format!(
                "{} already has {MAX_ALIASES_PER_KEY} aliases, the most a key may have.",
                Self::arn(&key)
            )));
        }
        alias.target = key.id;
        alias.updated = self.now_ms();
        records::put(&mut *tx, records::ALIASES, &k, &alias)?;
        self.commit(tx, call)?;
        Ok(Empty {})
    }

    /// DeleteAlias.
    pub fn delete_alias(
        &self,
        call: &Call<'_>,
        req: DeleteAliasRequest,
    ) -> Result<Empty, KmsError> {
        let caller = call.caller;
        let name = api::required(req.alias_name, "aliasName")?;
        validate_alias_name(&name)?;
        let mut tx = self.store.write()?;
        let k = records::alias_key(&caller.region, caller.account.as_str(), &name);
        let this_alias = alias_arn(&caller.region, caller.account.as_str(), &name);
        let alias: AliasRecord = records::get(&*tx, records::ALIASES, &k)?
            .ok_or_else(|| KmsError::NotFound(format!("Alias {this_alias} is not found.")))?;
        self.authorize_identity(&*tx, call, "DeleteAlias", &this_alias)?;
        if let Some(key) = records::get::<KeyRecord>(&*tx, records::KEYS, alias.target.as_bytes())?
        {
            self.authorize_key(&*tx, call, "DeleteAlias", &key, &Facts::default())?;
        }
        tx.delete(records::ALIASES, &k)?;
        self.commit(tx, call)?;
        Ok(Empty {})
    }

    /// ListAliases, optionally only those of one key.
    pub fn list_aliases(
        &self,
        call: &Call<'_>,
        req: ListAliasesRequest,
    ) -> Result<Page<Aliases>, KmsError> {
        let caller = call.caller;
        let size = pagination::page_size(req.limit, 50, 100)?;
        let after = pagination::decode(Listing::Aliases, req.marker.as_deref())?;
        let tx = self.store.read()?;
        let only = match req.key_id {
            None => {
                self.authorize_identity(&*tx, call, "ListAliases", "*")?;
                None
            }
            Some(raw) => {
                let key_ref = KeyRef::parse(&raw)?;
                if key_ref.is_alias() {
                    return Err(KmsError::Validation(format!(
                        "KeyId '{raw}' must be a key ID or key ARN, not an alias."
                    )));
                }
                let key = self.resolve(&*tx, call, &key_ref)?;
                self.authorize_key(&*tx, call, "ListAliases", &key, &Facts::default())?;
                Some(key.id)
            }
        };
        let prefix = records::owner_prefix(&caller.region, caller.account.as_str());
        let mut cursor = after.map(|a| {
            let mut k = prefix.clone();
            k.extend_from_slice(&a);
            k
        });
        let mut out = Vec::new();
        // Scan in batches until the page (plus one, to know if it is the last)
        // is full; filtering by key may skip rows.
        'scan: loop {
            let rows = tx.scan(records::ALIASES, &prefix, cursor.as_deref(), 256)?;
            let done = rows.len() < 256;
            for (k, v) in rows {
                let a: AliasRecord = records::decode(records::ALIASES, &v)?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                cursor = Some(k);
                if only.is_some_and(|id| id != a.target) {
                    continue;
                }
                out.push((name, a));
                if out.len() > size {
                    break 'scan;
                }
            }
            if done {
                break;
            }
        }
        let (rows, next) =
            pagination::finish(Listing::Aliases, out, size, |(n, _)| n.as_bytes().to_vec());
        Ok(Page {
            truncated: next.is_some(),
            next_marker: next,
            items: Aliases {
                aliases: rows
                    .into_iter()
                    .map(|(name, a)| AliasEntry {
                        alias_arn: alias_arn(&caller.region, caller.account.as_str(), &name),
                        alias_name: name,
                        // A multi-Region key's alias names its `mrk-` id.
                        target_key_id: self
                            .key_records
                            .get_shared(&*tx, a.target.as_bytes())
                            .ok()
                            .flatten()
                            .map_or_else(|| a.target.to_string(), |k| k.key_id()),
                        creation_date: epoch_seconds(a.created),
                        last_updated_date: epoch_seconds(a.updated),
                    })
                    .collect(),
            },
        })
    }
}
