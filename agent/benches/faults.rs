//! The long fault run, for release checks: runs of the fault suite
//! (`tests/fault_suite/`) one after another, each with its own cluster and
//! seed, until the duration is spent; prints each run's figures and the
//! totals. Exits non-zero if any run found an anomaly.
//!
//! Run: `cargo bench --bench faults -- --duration 30m [--run 3m]`.

#![allow(dead_code)]

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/fault_suite/mod.rs"]
mod fault_suite;

use std::time::{Duration, Instant};

fn main() {
    let (total, each) = match arguments() {
        Ok(durations) => durations,
        Err(problem) => {
            eprintln!("faults bench: {problem}\nusage: cargo bench --bench faults -- --duration 30m [--run 3m]");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let (mut runs, mut faults, mut ok, mut unknown, mut anomalies) = (0, 0, 0, 0, 0);
    while started.elapsed() + each / 2 < total {
        runs += 1;
        let dir = tempfile::tempdir().unwrap();
        let settings = fault_suite::Settings {
            duration: each,
            seed: runs,
            ..fault_suite::Settings::short()
        };
        let report = fault_suite::run(dir.path(), &settings);
        println!("run {runs}: {}", report.summary());
        faults += report.faults.values().sum::<usize>();
        ok += report.operations.ok;
        unknown += report.operations.unknown;
        anomalies += report.anomalies.len();
    }
    println!(
        "fault suite: {runs} runs in {:.0?}, {faults} faults injected, {ok} operations acknowledged ({unknown} unknown), {anomalies} anomalies",
        started.elapsed()
    );
    if anomalies > 0 {
        std::process::exit(1);
    }
}

/// `--duration D` (default 30m) and `--run D` (default 3m), humantime.
fn arguments() -> Result<(Duration, Duration), String> {
    let (mut total, mut each) = (Duration::from_secs(30 * 60), Duration::from_secs(180));
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let target = match arg.as_str() {
            "--duration" => &mut total,
            "--run" => &mut each,
            "--bench" => continue, // cargo bench passes it
            other => return Err(format!("unknown argument {other:?}")),
        };
        let value = args
            .next()
            .ok_or(format!("{arg} needs a duration, e.g. 30m"))?;
        *target =
            humantime::parse_duration(&value).map_err(|err| format!("{arg} {value:?}: {err}"))?;
    }
    Ok((total, each))
}
