//! Raft frames: a run of raft messages, each a big-endian `u32` length and
//! the protobuf bytes. A member sends its messages in order on one
//! long-lived QUIC stream per connection. A snapshot message goes alone on
//! a stream of its own, and its copy follows it in chunks (see
//! `snapshot_stream`).
//!
//! Sent by: raft members only (the connection's key was admitted first).
//! Checked by the receiver, as it reads, so that no member (any may hold a
//! stolen key) can make it hold more than a bounded amount of memory:
//! - a message is at most [`MAX_MESSAGE`] bytes, and the bytes being read
//!   at once, over every stream of every peer, stay within [`READ_BUDGET`]
//!   (a stream waits for room);
//! - each message is screened (who sent it) before it is delivered, and a
//!   snapshot before its copy is read;
//! - a snapshot is first in its frame, its copy is checked as
//!   `snapshot_stream` says, and nothing follows it.
//!
//! Messages are read one after another, as the bytes come; each is
//! delivered once read.

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::Semaphore;

use super::snapshot_stream::{self, SnapshotDir, SnapshotRef};

/// Largest raft message: appends carry at most 1 MiB of entries
/// (`max_size_per_msg`), or one entry of a client request of at most
/// 1.5 MiB; a snapshot message carries only a reference to its copy.
pub const MAX_MESSAGE: usize = 16 << 20;
/// Bytes of messages read at once, from all peers.
pub const READ_BUDGET: usize = 256 << 20;
/// A frame the sender fills up to about this many bytes.
const FRAME_TARGET: usize = 4 << 20;

/// Why a frame was dropped.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a raft message or snapshot of {0} bytes, over the limit")]
    TooBig(u64),
    #[error("a snapshot that is not alone in its frame")]
    SnapshotNotAlone,
    #[error("a snapshot while another is being received")]
    SnapshotBusy,
    #[error("a snapshot whose data is not a reference to a copy")]
    SnapshotUnreferenced,
    #[error("a snapshot copy that ended after {0} bytes, short of its reference")]
    SnapshotShort(u64),
    #[error("a snapshot copy longer than its reference")]
    SnapshotLong,
    #[error("a snapshot copy whose chunks stopped coming")]
    SnapshotStalled,
    #[error("a snapshot copy whose SHA-256 differs from its reference")]
    SnapshotDigest,
    #[error("a snapshot from a sender refused")]
    SnapshotRefused,
    #[error("writing a received snapshot: {0}")]
    Store(String),
    #[error("undecodable raft message: {0}")]
    Undecodable(String),
    #[error("reading the stream: {0}")]
    Read(String),
}

impl FrameError {
    /// The reason as counted in `edgeconf_raft_refused_total` (`None`: not
    /// the sender's doing, or already counted).
    pub fn label(&self) -> Option<&'static str> {
        match self {
            FrameError::TooBig(_) => Some("oversized"),
            FrameError::SnapshotBusy => Some("snapshot_busy"),
            FrameError::SnapshotNotAlone
            | FrameError::SnapshotUnreferenced
            | FrameError::SnapshotShort(_)
            | FrameError::SnapshotLong
            | FrameError::SnapshotStalled
            | FrameError::SnapshotDigest => Some("snapshot_invalid"),
            FrameError::Undecodable(_) => Some("undecodable"),
            FrameError::SnapshotRefused | FrameError::Store(_) | FrameError::Read(_) => None,
        }
    }
}

/// What bounds the reads of all raft streams together.
pub struct ReadLimits {
    /// Permits in KiB of message bytes.
    budget: Semaphore,
    snapshots: Semaphore,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            budget: Semaphore::new(READ_BUDGET >> 10),
            snapshots: Semaphore::new(1),
        }
    }
}

/// The messages of a batch as frames of about [`FRAME_TARGET`] bytes each
/// (every frame holds at least one message).
pub fn encode(messages: &[Message]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut frame = Vec::new();
    for message in messages {
        let bytes = message
            .write_to_bytes()
            .expect("encoding a raft message into memory cannot fail");
        if !frame.is_empty() && frame.len() + bytes.len() > FRAME_TARGET {
            frames.push(std::mem::take(&mut frame));
        }
        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        frame.extend_from_slice(&bytes);
    }
    if !frame.is_empty() {
        frames.push(frame);
    }
    frames
}

/// Reads the messages of `stream`. Each message is passed to `screen` (who
/// sent it: `false` drops it, and for a snapshot ends the stream before its
/// copy is read), then handed to `deliver` once read. Ends at the end of
/// the stream, or at the first message that breaks a limit (the rest of
/// the stream is dropped).
pub async fn read(
    stream: &mut quinn::RecvStream,
    limits: &ReadLimits,
    snapshots: &SnapshotDir,
    mut screen: impl FnMut(&Message) -> bool,
    mut deliver: impl FnMut(Message),
) -> Result<(), FrameError> {
    let mut first = true;
    loop {
        let mut header = [0u8; 4];
        match stream.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(()),
            Err(err) => return Err(FrameError::Read(err.to_string())),
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_MESSAGE {
            return Err(FrameError::TooBig(len as u64));
        }
        let message = {
            // Held until the message is decoded.
            let _room = limits
                .budget
                .acquire_many((len >> 10).max(1) as u32)
                .await
                .map_err(|err| FrameError::Read(err.to_string()))?;
            let bytes = read_growing(stream, len).await?;
            decode(bytes).await?
        };
        let admitted = screen(&message);
        if message.get_msg_type() == MessageType::MsgSnapshot {
            if !first {
                return Err(FrameError::SnapshotNotAlone);
            }
            if !admitted {
                return Err(FrameError::SnapshotRefused);
            }
            let reference = SnapshotRef::decode(&message.get_snapshot().data)
                .ok_or(FrameError::SnapshotUnreferenced)?;
            let _slot = limits
                .snapshots
                .try_acquire()
                .map_err(|_| FrameError::SnapshotBusy)?;
            snapshot_stream::receive(stream, snapshots, &reference).await?;
            deliver(message);
            return Ok(());
        }
        if admitted {
            deliver(message);
        }
        first = false;
    }
}

/// Messages at least this big are encoded and decoded on a blocking
/// thread: the transport shares the raft thread (`consensus::runtime`),
/// which must not spend tens of milliseconds on one large append while
/// heartbeats wait. A peer cannot use this to take many blocking threads:
/// `read` holds the frame's share of the read budget until it is decoded.
pub const OFF_THREAD_BYTES: usize = 1 << 20;

async fn decode(bytes: Vec<u8>) -> Result<Message, FrameError> {
    let large = bytes.len() >= OFF_THREAD_BYTES;
    let parse = move || {
        Message::parse_from_bytes(&bytes).map_err(|e| FrameError::Undecodable(e.to_string()))
    };
    if !large {
        return parse();
    }
    tokio::task::spawn_blocking(parse)
        .await
        .map_err(|err| FrameError::Read(err.to_string()))?
}

/// Reads `len` bytes, growing the buffer as they arrive rather than
/// allocating what the header claims: a peer that announces a large frame
/// and sends little costs little memory.
async fn read_growing(stream: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, FrameError> {
    const STEP: usize = 1 << 20;
    let mut bytes = Vec::with_capacity(len.min(STEP));
    while bytes.len() < len {
        let start = bytes.len();
        bytes.resize(start + (len - start).min(STEP), 0);
        stream
            .read_exact(&mut bytes[start..])
            .await
            .map_err(|err| FrameError::Read(err.to_string()))?;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(bytes: usize) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.context = vec![7u8; bytes].into();
        message
    }

    #[test]
    fn batches_are_split_into_frames_of_a_few_mebibytes() {
        let messages: Vec<Message> = (0..10).map(|_| append(1 << 20)).collect();
        let frames = encode(&messages);
        assert_eq!(frames.len(), 4, "three of 1 MiB fit in 4 MiB");
        assert!(frames.iter().all(|f| f.len() <= FRAME_TARGET + (2 << 20)));
        // One message bigger than the target still goes, alone.
        let frames = encode(&[append(8 << 20), append(10)]);
        assert_eq!(frames.len(), 2);
    }
}
