//! The short fault run (about two minutes): every nemesis at least once
//! against a real three-member cluster, then the checks of
//! `fault_suite/mod.rs`. The long run is `cargo bench --bench faults`.

mod common;
mod fault_suite;

#[test]
fn no_fault_breaks_linearizability_loses_a_write_or_skips_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let report = fault_suite::run(dir.path(), &fault_suite::Settings::short());
    eprintln!("{}", report.summary());
    if !report.anomalies.is_empty() {
        // Keep the agents' logs and data for the post-mortem.
        let kept = dir.keep();
        panic!(
            "{}\nlogs and data kept in {}",
            report.summary(),
            kept.display()
        );
    }
    let every_fault = fault_suite::nemesis::ALL
        .iter()
        .all(|fault| report.faults.contains_key(fault));
    assert!(
        every_fault,
        "not every fault was injected: {:?}",
        report.faults
    );
    assert!(
        report.operations.ok > 1000,
        "too few operations succeeded to judge the run: {}",
        report.summary()
    );
}
