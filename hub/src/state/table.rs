//! A typed table over the [`Store`](super::Store): records of one type, JSON-encoded under one
//! key prefix, with what every table of the hub needs — reads that name the corrupt record,
//! create-if-absent, compare-and-swap, and read-modify-write with bounded retries.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::error::HubError;
use crate::store::{KeyValue, Revision, SharedStore};

/// How often a read-modify-write is retried when another writer got there first.
pub const CAS_RETRIES: usize = 16;

/// A record with the store revision it was read at (for a later compare-and-swap).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: Revision,
}

/// Records of type `T` under `prefix` (`/clusters/`, `/sources/`, …), keyed by name.
#[derive(Debug)]
pub struct Table<T> {
    store: SharedStore,
    prefix: &'static str,
    _record: PhantomData<fn() -> T>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.prefix,
            _record: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    pub fn new(store: SharedStore, prefix: &'static str) -> Self {
        Self {
            store,
            prefix,
            _record: PhantomData,
        }
    }

    pub fn prefix(&self) -> &'static str {
        self.prefix
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The store key of record `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Decodes a stored value; a value that does not parse is a [`HubError::Corrupt`] naming
    /// the key.
    pub fn decode(&self, kv: &KeyValue) -> Result<Versioned<T>, HubError> {
        let value = serde_json::from_slice(&kv.value).map_err(|source| HubError::Corrupt {
            key: kv.key.clone(),
            source,
        })?;
        Ok(Versioned {
            value,
            revision: kv.mod_revision,
        })
    }

    pub fn encode(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).expect("records serialize")
    }

    pub async fn get(&self, name: &str) -> Result<Option<Versioned<T>>, HubError> {
        match self.store.get(&self.key(name)).await? {
            Some(kv) => self.decode(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// Every record, in key order.
    pub async fn list(&self) -> Result<Vec<Versioned<T>>, HubError> {
        let (items, _) = self.store.list(self.prefix).await?;
        items.iter().map(|kv| self.decode(kv)).collect()
    }

    /// Every record's value, in key order.
    pub async fn values(&self) -> Result<Vec<T>, HubError> {
        Ok(self.list().await?.into_iter().map(|v| v.value).collect())
    }

    /// Unconditional write.
    pub async fn put(&self, name: &str, value: &T) -> Result<Revision, HubError> {
        Ok(self.store.put(&self.key(name), Self::encode(value)).await?)
    }

    /// Writes `value` only if the record is still at `expected` (`None`: absent); `None` when
    /// another writer got there first.
    pub async fn swap(
        &self,
        name: &str,
        expected: Option<Revision>,
        value: &T,
    ) -> Result<Option<Revision>, HubError> {
        Ok(self
            .store
            .compare_and_swap(&self.key(name), expected, Self::encode(value))
            .await?
            .ok())
    }

    /// Reads record `name`, lets `f` change it, and writes it back if nobody wrote it meanwhile
    /// (else again, at most [`CAS_RETRIES`] times). `missing` is the error for an absent record.
    pub async fn update<R>(
        &self,
        name: &str,
        missing: impl Fn() -> HubError,
        mut f: impl FnMut(&mut T) -> Result<R, HubError>,
    ) -> Result<(T, R), HubError> {
        for _ in 0..CAS_RETRIES {
            let Versioned {
                mut value,
                revision,
            } = self.get(name).await?.ok_or_else(&missing)?;
            let out = f(&mut value)?;
            if self.swap(name, Some(revision), &value).await?.is_some() {
                return Ok((value, out));
            }
        }
        Err(HubError::Contention(self.key(name)))
    }

    /// Deletes record `name`; `false` when it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, HubError> {
        Ok(self.store.delete(&self.key(name)).await?.is_some())
    }

    /// Deletes record `name` only if it is still at `revision`.
    pub async fn delete_at(&self, name: &str, revision: Revision) -> Result<bool, HubError> {
        Ok(self
            .store
            .compare_and_delete(&self.key(name), revision)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use serde::Deserialize;
    use std::sync::Arc;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        n: u32,
    }

    fn table() -> (Table<Rec>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        (Table::new(store, "/recs/"), dir)
    }

    #[tokio::test]
    async fn create_update_delete_and_a_corrupt_record_named_by_its_key() {
        let (t, _dir) = table();
        assert!(t.swap("a", None, &Rec { n: 1 }).await.unwrap().is_some());
        assert!(
            t.swap("a", None, &Rec { n: 2 }).await.unwrap().is_none(),
            "create-if-absent refuses an existing record"
        );
        let (after, old) = t
            .update(
                "a",
                || HubError::Invalid("gone".into()),
                |r| {
                    r.n += 10;
                    Ok(r.n - 10)
                },
            )
            .await
            .unwrap();
        assert_eq!((after.n, old), (11, 1));
        let e = t
            .update("b", || HubError::Invalid("no b".into()), |_| Ok(()))
            .await
            .unwrap_err();
        assert!(matches!(&e, HubError::Invalid(m) if m == "no b"), "{e}");
        let got = t.get("a").await.unwrap().unwrap();
        assert!(!t.delete_at("a", got.revision - 1).await.unwrap());
        assert!(t.delete_at("a", got.revision).await.unwrap());
        assert!(t.get("a").await.unwrap().is_none());

        t.store()
            .put("/recs/bad", b"{not json".to_vec())
            .await
            .unwrap();
        let e = t.list().await.unwrap_err();
        assert!(
            matches!(&e, HubError::Corrupt { key, .. } if key == "/recs/bad"),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
    }
}
