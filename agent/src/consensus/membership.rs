//! Membership changes through raft (etcd's Cluster API: add, remove,
//! promote, update) and a member publishing its own record.

use super::*;

impl Node {
    /// Members with their records, as replicated.
    pub fn members(&self) -> Result<Vec<(u64, MemberRecord)>, StoreError> {
        self.store.members()
    }

    /// Adds a member (as a learner or a voter) that will start with
    /// `initial_cluster_state = "existing"`.
    /// The newcomer publishes its name and client URLs when it starts.
    pub async fn add_member(
        &self,
        peer_urls: Vec<String>,
        is_learner: bool,
    ) -> Result<u64, ProposeError> {
        let url = peer_urls
            .first()
            .ok_or_else(|| ProposeError::Failed("a member needs at least one peer URL".into()))?;
        let id = member_id(url);
        if self.members()?.iter().any(|(known, _)| *known == id) {
            return Err(ProposeError::Failed(format!(
                "a member with peer URL {url} already exists ({id:x})"
            )));
        }
        self.check_peer_urls_free(&peer_urls, None)?;
        let record = MemberRecord {
            name: String::new(),
            peer_urls,
            client_urls: Vec::new(),
            is_learner,
        };
        let kind = if is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.change_membership(kind, id, MemberChange::Upsert { id, record })
            .await?;
        Ok(id)
    }

    pub async fn remove_member(&self, id: u64) -> Result<(), ProposeError> {
        self.known_member(id)?;
        self.change_membership(ConfChangeType::RemoveNode, id, MemberChange::Remove { id })
            .await
    }

    pub async fn promote_member(&self, id: u64) -> Result<(), ProposeError> {
        let mut record = self.known_member(id)?;
        if !record.is_learner {
            return Err(ProposeError::Failed(format!(
                "member {id:x} is not a learner"
            )));
        }
        record.is_learner = false;
        self.change_membership(
            ConfChangeType::AddNode,
            id,
            MemberChange::Upsert { id, record },
        )
        .await
    }

    /// etcd's MemberUpdate: member `id` is to be reached at `peer_urls`
    /// from now on (its id stays: it is kept in its data dir, not derived
    /// again). Every member's transport dials the new address once this
    /// applies; the member itself must be restarted listening there.
    pub async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<(), ProposeError> {
        self.known_member(id)?;
        if peer_urls.is_empty() {
            return Err(ProposeError::Failed(
                "a member needs at least one peer URL".into(),
            ));
        }
        self.check_peer_urls_free(&peer_urls, Some(id))?;
        ask(&self.inputs, |reply| Input::Propose {
            body: Body::Member(MemberChange::UpdatePeerUrls { id, peer_urls }),
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Refuses peer URLs another member (other than `except`) already has.
    pub(super) fn check_peer_urls_free(
        &self,
        urls: &[String],
        except: Option<u64>,
    ) -> Result<(), ProposeError> {
        for (id, record) in self.members()? {
            if Some(id) == except {
                continue;
            }
            if let Some(url) = urls.iter().find(|url| record.peer_urls.contains(url)) {
                return Err(ProposeError::Failed(format!(
                    "peer URL {url} is already member {id:x}'s"
                )));
            }
        }
        Ok(())
    }

    pub(super) fn known_member(&self, id: u64) -> Result<MemberRecord, ProposeError> {
        self.members()?
            .into_iter()
            .find(|(known, _)| *known == id)
            .map(|(_, record)| record)
            .ok_or_else(|| ProposeError::Failed(format!("member {id:x} not found in the cluster")))
    }

    pub(super) async fn change_membership(
        &self,
        kind: ConfChangeType,
        id: u64,
        member: MemberChange,
    ) -> Result<(), ProposeError> {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        ask(&self.inputs, |reply| Input::ConfChange {
            change,
            member,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Publishes this member's name and client URLs once a leader is known,
    /// if the replicated record lacks them (a member added by `member add`
    /// only has its peer URLs).
    pub async fn publish_self(&self) {
        loop {
            let id = self.identity.member_id;
            let current = self
                .members()
                .ok()
                .and_then(|members| members.into_iter().find(|(known, _)| *known == id));
            let Some((_, record)) = current else {
                // Not (yet) a member: wait for the snapshot or the add.
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            if record.name == self.member.name && record.client_urls == self.member.client_urls {
                return;
            }
            if self.leader() != 0 {
                let change = MemberChange::Publish {
                    id,
                    name: self.member.name.clone(),
                    client_urls: self.member.client_urls.clone(),
                };
                let published = ask(&self.inputs, |reply| Input::Propose {
                    body: Body::Member(change),
                    reply,
                })
                .await;
                if published.is_ok() {
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
