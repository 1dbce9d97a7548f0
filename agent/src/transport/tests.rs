//! The transport between two agents on loopback.

use super::*;

/// A dial-out agent ignores connections, yet gets answers over the
/// connection it makes: the peer sends back to the address it sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_nat_is_reached_over_the_connection_it_dialed() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key_a = NodeKey::load_or_create(dir_a.path()).unwrap();
    let key_b = NodeKey::load_or_create(dir_b.path()).unwrap();
    let keys = [key_a.public_key_raw(), key_b.public_key_raw()];
    let any = "127.0.0.1:0".parse().unwrap();
    let behind = Transport::start(any, &key_a, &keys, true).unwrap();
    let open = Transport::start(any, &key_b, &keys, false).unwrap();
    let (addr_a, addr_b) = (behind.local_addr().unwrap(), open.local_addr().unwrap());
    let inbox = |transport: &Transport| {
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, SocketAddr)>();
        let tx = Mutex::new(tx);
        transport.attach_gossip(Arc::new(move |bytes, via, _| {
            let _ = tx.lock().unwrap().send((bytes, via));
        }));
        rx
    };
    let (to_a, to_b) = (inbox(&behind), inbox(&open));
    let wait = |rx: &std::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>| {
        rx.recv_timeout(Duration::from_secs(3))
    };

    // The open agent cannot dial in.
    open.gossip().send(addr_a, b"knock".to_vec());
    tokio::time::sleep(CONNECT_TIMEOUT + Duration::from_millis(500)).await;
    assert!(
        to_a.try_recv().is_err(),
        "a dial-out agent took a connection"
    );

    // Once the agent behind NAT dials out, answers come back over it.
    behind.gossip().send(addr_b, b"ping".to_vec());
    let got = tokio::task::block_in_place(|| wait(&to_b)).unwrap();
    assert_eq!(got, (b"ping".to_vec(), addr_a));
    open.gossip().send(addr_a, b"ack".to_vec());
    let got = tokio::task::block_in_place(|| wait(&to_a)).unwrap();
    assert_eq!(got, (b"ack".to_vec(), addr_b));

    // An announced address that differs (address translation) is an
    // alias of the connection.
    let announced: SocketAddr = "127.0.0.9:9".parse().unwrap();
    open.gossip().alias(announced, addr_a);
    open.gossip().send(announced, b"via alias".to_vec());
    let got = tokio::task::block_in_place(|| wait(&to_a)).unwrap();
    assert_eq!(got.0, b"via alias".to_vec());
}

#[test]
fn heartbeats_votes_and_read_rounds_go_apart_from_appends_and_snapshots() {
    let of = |kind| {
        let mut message = Message::default();
        message.set_msg_type(kind);
        is_urgent(&message)
    };
    for kind in [
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgRequestPreVote,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgReadIndex,
        MessageType::MsgReadIndexResp,
    ] {
        assert!(of(kind), "{kind:?}");
    }
    // Anything that carries entries, or whose order raft relies on.
    for kind in [
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgSnapshot,
        MessageType::MsgPropose,
        MessageType::MsgTimeoutNow,
    ] {
        assert!(!of(kind), "{kind:?}");
    }
}
