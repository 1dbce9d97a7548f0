//! A cluster of real agent processes on loopback for the replication
//! tests: node keys made up front, configs written, members started,
//! killed and restarted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;

use super::{free_port, ok, run_with_timeout, Agent, BIN};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// One member's settings, fixed for the cluster's life.
pub struct Slot {
    pub name: String,
    pub client_port: u16,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub key: String,
}

/// Agents `n1..nN` with keys made up front, so every member trusts every
/// slot (including spare slots for members added later).
pub struct Cluster {
    pub dir: PathBuf,
    pub slots: Vec<Slot>,
    pub agents: Vec<Option<Agent>>,
    /// TOML appended to every member's config (per member: `member_config`).
    pub extra_config: String,
    pub member_config: Vec<String>,
    /// Top-level TOML keys per member (written before any table).
    pub member_head: Vec<String>,
    /// The first this many slots are (or may become) voters: their keys
    /// are listed in `[peer_trust] voters`, which edges take attestations
    /// from and voters accept raft from.
    pub voter_slots: usize,
}

impl Cluster {
    pub fn new(dir: &Path, slots: usize) -> Cluster {
        let slots = (1..=slots)
            .map(|i| {
                let data_dir = dir.join(format!("n{i}"));
                let key = ok(run_with_timeout(
                    Command::new(BIN).args(["node-key", "--data-dir", data_dir.to_str().unwrap()]),
                    Duration::from_secs(20),
                ));
                Slot {
                    name: format!("n{i}"),
                    client_port: free_port(),
                    peer_url: format!("quic://127.0.0.1:{}", free_port()),
                    data_dir,
                    key: key.trim().to_string(),
                }
            })
            .collect::<Vec<_>>();
        let agents = slots.iter().map(|_| None).collect();
        let voter_slots = slots.len().min(3);
        let member_config: Vec<String> = slots.iter().map(|_| String::new()).collect();
        Cluster {
            dir: dir.to_path_buf(),
            slots,
            agents,
            extra_config: String::new(),
            member_head: member_config.clone(),
            member_config,
            voter_slots,
        }
    }

    /// Starts the first `voters` slots as a new cluster.
    pub fn start(dir: &Path, voters: usize, slots: usize) -> Cluster {
        Self::start_with(dir, voters, slots, "")
    }

    /// [`Cluster::start`] with `extra` TOML in every member's config.
    pub fn start_with(dir: &Path, voters: usize, slots: usize, extra: &str) -> Cluster {
        let mut cluster = Cluster::new(dir, slots);
        // Spare slots are for members added later.
        cluster.voter_slots = slots;
        cluster.extra_config = extra.to_string();
        let initial = cluster.initial_cluster(0..voters);
        for i in 0..voters {
            cluster.write_config(i, &initial, "new");
            cluster.run(i);
        }
        cluster.wait_for_leader();
        cluster
    }

    pub fn initial_cluster(&self, members: std::ops::Range<usize>) -> String {
        self.slots[members]
            .iter()
            .map(|s| format!("{}={}", s.name, s.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.toml", self.slots[i].name))
    }

    pub fn write_config(&self, i: usize, initial_cluster: &str, state: &str) {
        let slot = &self.slots[i];
        let keys: Vec<String> = self.slots.iter().map(|s| format!("{:?}", s.key)).collect();
        let voters = &keys[..self.voter_slots];
        let config = format!(
            "name = {:?}\ndata_dir = {:?}\nlisten_client_urls = [\"http://127.0.0.1:{}\"]\n\
             listen_peer_urls = [{:?}]\ninitial_cluster = {:?}\ninitial_cluster_state = {:?}\n\
             heartbeat_interval = 50\nelection_timeout = 500\nsnapshot_count = 200\n\
             snapshot_catchup_entries = 20\n{}\n\n[peer_trust]\nkeys = [{}]\nvoters = [{}]\n",
            slot.name,
            slot.data_dir.display().to_string(),
            slot.client_port,
            slot.peer_url,
            initial_cluster,
            state,
            self.member_head[i],
            keys.join(", "),
            voters.join(", ")
        );
        let config = format!(
            "{config}\n{}\n{}\n",
            self.member_config[i], self.extra_config
        );
        std::fs::write(self.config_path(i), config).unwrap();
    }

    pub fn run(&mut self, i: usize) {
        let args = vec![
            "--config".to_string(),
            self.config_path(i).display().to_string(),
        ];
        let slot = &self.slots[i];
        self.agents[i] = Some(Agent::spawn(
            &self.dir,
            slot.data_dir.clone(),
            slot.client_port,
            &args,
        ));
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.slots[i].client_port)
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.agents[*i].is_some())
            .collect()
    }

    pub fn all_endpoints(&self) -> Vec<String> {
        self.running()
            .iter()
            .map(|i| format!("http://{}", self.endpoint(*i)))
            .collect()
    }

    pub async fn client(&self, i: usize) -> etcd_client::Client {
        etcd_client::Client::connect([format!("http://{}", self.endpoint(i))], None)
            .await
            .unwrap()
    }

    /// The slot index of the leader all running members agree on.
    pub fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // Edge agents are not raft members: only voters know a leader.
            let voters: Vec<usize> = self
                .running()
                .into_iter()
                .filter(|&i| !self.member_head[i].contains("role = \"edge\""))
                .collect();
            let leaders: Vec<(usize, u64, u64)> = rt.block_on(async {
                let mut seen = Vec::new();
                for &i in &voters {
                    let Ok(Ok(mut client)) = tokio::time::timeout(
                        Duration::from_secs(1),
                        etcd_client::Client::connect(
                            [format!("http://{}", self.endpoint(i))],
                            None,
                        ),
                    )
                    .await
                    else {
                        continue;
                    };
                    if let Ok(Ok(status)) =
                        tokio::time::timeout(Duration::from_secs(1), client.status()).await
                    {
                        let me = status.header().map_or(0, |h| h.member_id());
                        seen.push((i, me, status.leader()));
                    }
                }
                seen
            });
            if leaders.len() == voters.len() {
                let leader = leaders[0].2;
                if leader != 0 && leaders.iter().all(|(_, _, l)| *l == leader) {
                    if let Some((i, _, _)) = leaders.iter().find(|(_, me, _)| *me == leader) {
                        return *i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {TIMEOUT:?}: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            agent.kill9();
        }
    }

    pub fn stop(&mut self, i: usize) {
        if let Some(mut agent) = self.agents[i].take() {
            assert!(agent.stop(), "{} did not stop cleanly", self.slots[i].name);
        }
    }
}

/// Every key under `prefix` with its value and mod revision, as member `i`
/// has it (serializable: that member's own state).
pub async fn local_state(
    cluster: &Cluster,
    i: usize,
    prefix: &str,
) -> HashMap<String, (String, i64)> {
    let mut client = cluster.client(i).await;
    let resp = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_serializable()),
        )
        .await
        .unwrap();
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                ),
            )
        })
        .collect()
}

/// Waits until member `i` has applied at least `revision`.
pub async fn wait_for_revision(cluster: &Cluster, i: usize, revision: i64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut client = cluster.client(i).await;
        let current = client
            .get("x", Some(GetOptions::new().with_serializable()))
            .await
            .map(|r| r.header().map_or(0, |h| h.revision()))
            .unwrap_or(0);
        if current >= revision {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} stuck at revision {current} < {revision}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
