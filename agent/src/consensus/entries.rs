//! What a normal raft entry holds (who proposed it, and what), its wire
//! form, and the leader's check of the entries followers forward.

use std::sync::Arc;

use raft::eraftpb::{EntryType, Message};
use serde::{Deserialize, Serialize};

use crate::auth::Credential;
use crate::store::{Command, MemberChange, Proposal};

/// The payload of a normal log entry.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Body {
    Command(Proposal),
    /// A member's own record (name, URLs) changed.
    Member(MemberChange),
    /// A client's command as a follower proposes it: with the client's
    /// credential, which the leader checks and drops before the entry
    /// enters the log (so no log holds a token). Last, so older logs decode.
    CommandAs(Proposal, Credential),
}

/// Who proposed an entry, so that member can answer its client.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Origin {
    pub node: u64,
    pub seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EntryData {
    pub origin: Origin,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ConfContext {
    pub origin: Origin,
    pub member: MemberChange,
}

/// Checks a command a follower forwarded, with the credential of the
/// client it came from, before the leader takes it into the log: the
/// leader's own policy applies to what followers forward, not only to what
/// its own clients send.
pub type Admission = Arc<dyn Fn(&Command, &Credential) -> Result<(), String> + Send + Sync>;

/// Keeps the entries of a forwarded proposal that `check` admits (with
/// their credentials dropped); logs the others.
///
/// Sent by: a follower (its `from` is bound to its node key by the
/// transport), for its clients' writes. Checked here, on the leader: a
/// membership change (conf change) never comes this way (a follower's
/// Cluster API forwards the request to the leader's), a member record
/// change only as the sender's own `Publish`, and every command passes
/// `check` with the credential the follower says its client gave.
/// Returns how many entries it refused.
pub(crate) fn retain_admitted(message: &mut Message, check: &Admission) -> u64 {
    retain_checked(message, check, true)
}

/// Keeps the entries of a forwarded proposal that `check` admits, as they
/// came (the screening before [`retain_admitted`]). Returns how many
/// entries it refused.
pub(crate) fn retain_screened(message: &mut Message, check: &Admission) -> u64 {
    retain_checked(message, check, false)
}

fn retain_checked(message: &mut Message, check: &Admission, drop_credentials: bool) -> u64 {
    let from = message.from;
    let entries = std::mem::take(&mut message.entries);
    let offered = entries.len();
    let kept: Vec<raft::eraftpb::Entry> = entries
        .into_iter()
        .filter_map(|mut entry| {
            admitted(&mut entry, from, check, drop_credentials).then_some(entry)
        })
        .collect();
    let refused = (offered - kept.len()) as u64;
    message.entries = kept.into();
    refused
}

/// Whether the leader takes `entry` (see [`retain_admitted`]); with
/// `drop_credentials`, rewritten without the client's credential.
fn admitted(
    entry: &mut raft::eraftpb::Entry,
    from: u64,
    check: &Admission,
    drop_credentials: bool,
) -> bool {
    if entry.get_entry_type() != EntryType::EntryNormal {
        tracing::warn!(from = format_args!("{from:x}"), "refused a membership change forwarded by a follower (they go through the leader's Cluster API)");
        return false;
    }
    if entry.data.is_empty() {
        return true;
    }
    let Ok(data) = postcard::from_bytes::<EntryData>(&entry.data) else {
        tracing::warn!(
            from = format_args!("{from:x}"),
            "refused an undecodable entry forwarded by a follower"
        );
        return false;
    };
    let (proposal, credential) = match data.body {
        Body::Command(proposal) => (proposal, Credential::None),
        Body::CommandAs(proposal, credential) => (proposal, credential),
        Body::Member(MemberChange::Publish { id, .. }) if id == from => return true,
        Body::Member(change) => {
            tracing::warn!(from = format_args!("{from:x}"), ?change, "refused a member record change forwarded by a follower (a member may only publish its own name and URLs)");
            return false;
        }
    };
    if let Err(reason) = check(&proposal.command, &credential) {
        tracing::warn!(from = format_args!("{from:x}"), %reason, "refused a command forwarded by a follower");
        return false;
    }
    if !drop_credentials {
        return true;
    }
    entry.data = entry_bytes(data.origin.node, data.origin.seq, Body::Command(proposal)).into();
    true
}

/// A normal entry's wire form: who proposed it (so that member can answer
/// its client), and what.
pub(super) fn entry_bytes(node: u64, seq: u64, body: Body) -> Vec<u8> {
    postcard::to_allocvec(&EntryData {
        origin: Origin { node, seq },
        body,
    })
    .expect("encoding into memory")
}

/// The wire form of a client's write as a follower forwards it to the
/// leader (`Origin` names the proposer, so it can answer its client).
/// Public for the tests that play a hostile follower.
pub fn forwarded_entry(node: u64, seq: u64, command: Command, credential: Credential) -> Vec<u8> {
    let proposal = Proposal {
        command,
        time_unix_ms: 0,
    };
    entry_bytes(node, seq, Body::CommandAs(proposal, credential))
}

/// The wire form of a member record change a follower would forward (the
/// leader takes only a member's own `Publish` this way). Public for the
/// tests that play a hostile follower.
pub fn forwarded_member_change(node: u64, seq: u64, change: MemberChange) -> Vec<u8> {
    entry_bytes(node, seq, Body::Member(change))
}
