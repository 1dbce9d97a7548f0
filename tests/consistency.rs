//! What a client reads after its own writes, on every member of a real
//! three-member cluster. A member answers a plain put as soon as its entry
//! commits, while its store is still applying it (`store::foresee`); these
//! tests hold it to etcd's promise that the member then serves that write.

mod common;

use common::cluster::{Cluster, TIMEOUT};
use etcd_client::GetOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_serializable_read_after_a_put_sees_it_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    for member in 0..3 {
        let mut client = cluster.client(member).await;
        let key = format!("/ryw/{member}");
        for n in 0..100 {
            let put = client.put(key.as_str(), n.to_string(), None).await.unwrap();
            let written = put.header().unwrap().revision();
            let read = client
                .get(key.as_str(), Some(GetOptions::new().with_serializable()))
                .await
                .unwrap();
            assert!(
                read.header().unwrap().revision() >= written,
                "member {member}: read at {:?} after a put at {written}",
                read.header()
            );
            assert_eq!(read.kvs()[0].value(), n.to_string().as_bytes());
            assert_eq!(read.kvs()[0].mod_revision(), written);
            // The revision the put named can be read at once.
            let at = client
                .get(
                    key.as_str(),
                    Some(GetOptions::new().with_serializable().with_revision(written)),
                )
                .await
                .unwrap_or_else(|e| panic!("member {member}: reading revision {written}: {e}"));
            assert_eq!(at.kvs()[0].value(), n.to_string().as_bytes());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_opened_after_a_put_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = tokio::task::block_in_place(|| Cluster::start(dir.path(), 3, 3));
    for member in 0..3 {
        let mut client = cluster.client(member).await;
        for n in 0..30 {
            let key = format!("/watch/{member}/{n}");
            let before = client.put(key.as_str(), "before", None).await.unwrap();
            let mut stream = client.watch(key.as_str(), None).await.unwrap();
            let after = client.put(key.as_str(), "after", None).await.unwrap();
            let mut seen = Vec::new();
            while seen.is_empty() {
                let response = tokio::time::timeout(TIMEOUT, stream.message())
                    .await
                    .expect("the second put is seen")
                    .unwrap()
                    .expect("the stream stays open");
                seen.extend(
                    response
                        .events()
                        .iter()
                        .map(|e| e.kv().unwrap().mod_revision()),
                );
            }
            assert_eq!(
                seen,
                [after.header().unwrap().revision()],
                "member {member}: the watch opened after the put at {}",
                before.header().unwrap().revision()
            );
        }
    }
}
