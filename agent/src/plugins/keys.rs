//! `read-key` on an agent: the local store's current value, checked
//! against the trust policy and decrypted exactly as for rendering.

use std::sync::Arc;

use super::host::KeyReader;
use crate::signing::KeyringCell;
use crate::store::{KeyRange, RangeRequest, Store};

pub struct StoreKeys {
    pub store: Arc<Store>,
    pub keyring: Arc<KeyringCell>,
}

impl KeyReader for StoreKeys {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let request = RangeRequest::new(KeyRange::single(key.to_vec()));
        let (response, _, sequences) = self
            .store
            .range_with_sequences(&request)
            .map_err(|err| format!("reading the store: {err}"))?;
        let Some(kv) = response.kvs.first() else {
            return Ok(None);
        };
        let sequence = sequences.first().copied().flatten();
        crate::render::plain_value(&self.keyring.get(), kv, sequence).map(Some)
    }
}
