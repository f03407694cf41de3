//! Object records: create, change attributes, destroy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;

use cloudkey_chip::pool::PoolKey;
use cloudkey_chip::KeyBlob;
use cloudkey_protocol::msg::{ObjectId, TokenId};
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{refuse, Applied, ClusterInfo, CommandResult, Refusal, State};

/// An object as replicated: its PKCS#11 attributes and, for private and secret keys, its chip
/// blob. Attribute values never include secret key material (`CKA_VALUE` of sensitive keys,
/// private exponents): those exist only inside the blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Id (also the id bound into the blob).
    pub id: ObjectId,
    /// Owning token.
    pub token: TokenId,
    /// `CKA_*` → value (encodings as in `cloudkey_protocol::msg`).
    pub attrs: BTreeMap<u64, Vec<u8>>,
    /// The chip blob, for keys whose secret part lives in chips.
    #[serde(with = "serde_bytes")]
    pub blob: Option<Vec<u8>>,
}

/// An object in the applied view.
#[derive(Debug)]
pub struct Object {
    /// The replicated record.
    pub record: ObjectRecord,
    /// The blob ready for the chip pool, parsed once when applied.
    pub key: Option<PoolKey>,
    /// Log index that created it (creation order for `FindObjects`).
    pub created: u64,
}

impl State {
    /// An object by id.
    #[must_use]
    pub fn object(&self, id: &ObjectId) -> Option<Arc<Object>> {
        self.objects.get(id).map(|o| o.clone())
    }

    /// The objects of a token, in creation order.
    #[must_use]
    pub fn objects_of(&self, token: TokenId) -> Vec<Arc<Object>> {
        let mut v: Vec<_> = self
            .objects
            .iter()
            .filter(|o| o.record.token == token)
            .map(|o| o.clone())
            .collect();
        v.sort_by_key(|o| (o.created, o.record.id));
        v
    }

    /// Every object, in creation order.
    #[must_use]
    pub fn all_objects(&self) -> Vec<Arc<Object>> {
        let mut v: Vec<_> = self.objects.iter().map(|o| o.clone()).collect();
        v.sort_by_key(|o| (o.created, o.record.id));
        v
    }

    /// Builds the pool key of an object record's blob.
    pub(crate) fn pool_key(record: &ObjectRecord) -> Option<PoolKey> {
        record
            .blob
            .as_ref()
            .and_then(|b| PoolKey::new(KeyBlob(b.clone())).ok())
    }

    /// `PutObjects`: a batch of new objects (a key pair is two), all or none.
    pub(super) fn apply_put_objects(
        &self,
        index: u64,
        cluster: &ClusterInfo,
        records: &[ObjectRecord],
    ) -> Result<Applied, Refusal> {
        let objects = self.check_new_objects(index, cluster, records)?;
        let mut summary = String::from("put_objects");
        for o in &objects {
            let _ = write!(
                summary,
                " {}@{}{}",
                o.record.id,
                o.record.token,
                if o.key.is_some() { "+blob" } else { "" }
            );
        }
        for o in objects {
            self.objects.insert(o.record.id, Arc::new(o));
        }
        Ok(Applied {
            result: CommandResult::Done,
            summary,
        })
    }

    /// `SetAttributes`: replaces some attributes of an object.
    pub(super) fn apply_set_attributes(
        &self,
        id: &ObjectId,
        attrs: &[(u64, Vec<u8>)],
    ) -> Result<Applied, Refusal> {
        let Some(old) = self.object(id) else {
            return refuse(ErrorCode::ObjectHandleInvalid, format!("no object {id}"));
        };
        let mut record = old.record.clone();
        let mut types = BTreeSet::new();
        for (ty, value) in attrs {
            record.attrs.insert(*ty, value.clone());
            types.insert(*ty);
        }
        self.objects.insert(
            *id,
            Arc::new(Object {
                record,
                key: old.key.clone(),
                created: old.created,
            }),
        );
        // Attribute types only: values are the caller's business.
        let mut summary = format!("set_attributes id={id} types=");
        for (i, ty) in types.iter().enumerate() {
            let _ = write!(summary, "{}0x{ty:x}", if i > 0 { "," } else { "" });
        }
        Ok(Applied {
            result: CommandResult::Done,
            summary,
        })
    }

    /// `DestroyObject`.
    pub(super) fn apply_destroy_object(&self, id: &ObjectId) -> Result<Applied, Refusal> {
        match self.objects.remove(id) {
            Some((_, o)) => {
                self.prune_policies();
                Ok(Applied {
                    result: CommandResult::Done,
                    summary: format!("destroy_object id={id} token={}", o.record.token),
                })
            }
            None => refuse(ErrorCode::ObjectHandleInvalid, format!("no object {id}")),
        }
    }

    /// Validates a `PutObjects` batch and builds the objects, without changing anything.
    fn check_new_objects(
        &self,
        index: u64,
        cluster: &ClusterInfo,
        records: &[ObjectRecord],
    ) -> Result<Vec<Object>, Refusal> {
        if records.is_empty() {
            return refuse(ErrorCode::ArgumentsBad, "no objects to create");
        }
        let mut ids = BTreeSet::new();
        let mut objects = Vec::with_capacity(records.len());
        for record in records {
            self.token_or_refuse(record.token)?;
            if self.objects.contains_key(&record.id) || !ids.insert(record.id) {
                return refuse(
                    ErrorCode::TemplateInconsistent,
                    format!("object id {} exists", record.id),
                );
            }
            let key = match &record.blob {
                None => None,
                Some(blob) => {
                    let blob = KeyBlob(blob.clone());
                    let header = match blob.header() {
                        Ok(h) => h,
                        Err(e) => {
                            return refuse(
                                ErrorCode::WrappedKeyInvalid,
                                format!("object {}: blob does not parse: {e}", record.id),
                            )
                        }
                    };
                    if header.domain_kcv != cluster.domain_kcv {
                        return refuse(
                            ErrorCode::WrappedKeyInvalid,
                            format!(
                                "object {}: blob sealed under another domain (kcv {})",
                                record.id,
                                hex::encode(header.domain_kcv)
                            ),
                        );
                    }
                    Self::pool_key(record)
                }
            };
            objects.push(Object {
                record: record.clone(),
                key,
                created: index,
            });
        }
        Ok(objects)
    }

    pub(super) fn remove_objects_of(&self, token: TokenId) -> usize {
        let before = self.objects.len();
        self.objects.retain(|_, o| o.record.token != token);
        let removed = before - self.objects.len();
        self.prune_policies();
        removed
    }

    /// Drops the policies of keys and tokens that no longer exist (deterministic: it depends
    /// only on the state).
    pub(super) fn prune_policies(&self) {
        self.update_gov(|g| {
            g.policies.retain(|scope, _| match scope {
                cloudkey_protocol::gov::PolicyScope::Key(k) => self.objects.contains_key(k),
                cloudkey_protocol::gov::PolicyScope::Token(t) => self.tokens.contains_key(t),
                cloudkey_protocol::gov::PolicyScope::Cluster => true,
            });
        });
    }
}
