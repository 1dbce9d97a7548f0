//! Put → file latency: how long after a write is acknowledged its rendered
//! file holds the new value, on a three-member cluster where every member
//! renders the key (debounce 1 ms, atomic rename with fsyncs).
//!
//! Run: `cargo bench --bench render` (prints p50/p99; asserts nothing).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::edgeconf_cluster_with;

const WRITES: usize = 300;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("out-{i}")))
        .collect();
    for out in &outs {
        std::fs::create_dir_all(out).unwrap();
    }
    let members = edgeconf_cluster_with(dir.path(), 3, |i| {
        format!(
            "render_root = {:?}\n[[render]]\nkey = \"/bench/config\"\ndest = \"config\"\ndebounce = \"1ms\"\n",
            outs[i].display().to_string()
        )
    });
    std::thread::sleep(Duration::from_secs(3));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut client = rt.block_on(async {
        etcd_client::Client::connect([format!("http://{}", members[0].endpoint)], None)
            .await
            .unwrap()
    });
    let files: Vec<PathBuf> = outs.iter().map(|o| o.join("config")).collect();
    let mut first = Vec::new();
    let mut all = Vec::new();
    let mut writer_member = Vec::new();
    for n in 0..WRITES {
        let value = format!("value {n} {}", "x".repeat(200));
        let start = Instant::now();
        rt.block_on(client.put("/bench/config", value.clone(), None))
            .unwrap();
        let mut done = [None; 3];
        let deadline = start + Duration::from_secs(10);
        while done.iter().any(Option::is_none) {
            for (i, file) in files.iter().enumerate() {
                if done[i].is_none() && std::fs::read(file).is_ok_and(|c| c == value.as_bytes()) {
                    done[i] = Some(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            assert!(
                Instant::now() < deadline,
                "write {n} never reached every file"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        let times: Vec<f64> = done.iter().map(|d| d.unwrap()).collect();
        writer_member.push(times[0]);
        first.push(times.iter().copied().fold(f64::MAX, f64::min));
        all.push(times.iter().copied().fold(0.0, f64::max));
    }
    println!("put -> rendered file, 3 members, {WRITES} sequential writes of ~210 B (ms, from the put's start)");
    println!("{:<44} {:>8} {:>8}", "", "p50", "p99");
    for (label, mut samples) in [
        ("file on the member the client wrote to", writer_member),
        ("first member's file", first),
        ("every member's file", all),
    ] {
        samples.sort_by(f64::total_cmp);
        println!(
            "{label:<44} {:>8.2} {:>8.2}",
            percentile(&samples, 0.5),
            percentile(&samples, 0.99)
        );
    }
}
