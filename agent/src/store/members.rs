//! The cluster's member records (names and URLs), replicated with the data
//! so that every member and every snapshot knows who is who.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{MEMBERS, META, META_APPLIED_INDEX};
use super::types::{Result, StoreError};
use super::Store;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    Upsert {
        id: u64,
        record: MemberRecord,
    },
    Remove {
        id: u64,
    },
    /// A member announces its own name and client URLs; nothing else of
    /// its record changes, and an unknown member is ignored.
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// etcd's MemberUpdate, proposed by the leader: the member's peer URLs
    /// change; its id, name, client URLs and role stay. An unknown member
    /// is ignored. (A new variant: members older than it cannot apply it,
    /// so upgrade every member before moving one.)
    UpdatePeerUrls {
        id: u64,
        peer_urls: Vec<String>,
    },
}

impl Store {
    pub fn members(&self) -> Result<Vec<(u64, MemberRecord)>> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(MEMBERS)?;
        let mut members = Vec::new();
        for row in table.iter()? {
            let (id, bytes) = row?;
            let record = postcard::from_bytes(bytes.value()).map_err(|err| {
                StoreError::Corrupt(format!("member record {:x}: {err}", id.value()))
            })?;
            members.push((id.value(), record));
        }
        Ok(members)
    }

    /// Records a membership change applied at raft index `applied_index`.
    pub fn apply_member_change(&self, change: &MemberChange, applied_index: u64) -> Result<()> {
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(MEMBERS)?;
            match change {
                MemberChange::Upsert { id, record } => {
                    let bytes = postcard::to_allocvec(record).expect("encoding into memory");
                    table.insert(*id, bytes.as_slice())?;
                }
                MemberChange::Remove { id } => {
                    table.remove(*id)?;
                }
                MemberChange::Publish {
                    id,
                    name,
                    client_urls,
                } => update_record(&mut table, *id, |record| {
                    record.name = name.clone();
                    record.client_urls = client_urls.clone();
                })?,
                MemberChange::UpdatePeerUrls { id, peer_urls } => {
                    update_record(&mut table, *id, |record| {
                        record.peer_urls = peer_urls.clone()
                    })?
                }
            }
            txn.open_table(META)?
                .insert(META_APPLIED_INDEX, applied_index)?;
        }
        txn.commit()?;
        Ok(())
    }
}

/// Changes the record of member `id` in place, if there is one.
fn update_record(
    table: &mut redb::Table<u64, &[u8]>,
    id: u64,
    change: impl FnOnce(&mut MemberRecord),
) -> Result<()> {
    let Some(bytes) = table.get(id)?.map(|bytes| bytes.value().to_vec()) else {
        return Ok(());
    };
    let mut record: MemberRecord = postcard::from_bytes(&bytes)
        .map_err(|err| StoreError::Corrupt(format!("member record {id:x}: {err}")))?;
    change(&mut record);
    let bytes = postcard::to_allocvec(&record).expect("encoding into memory");
    table.insert(id, bytes.as_slice())?;
    Ok(())
}
