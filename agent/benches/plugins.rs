//! Cost of WebAssembly plugins: compiling a component, loading it from the
//! disk cache, instantiating it from the pool, and whole calls (a fresh
//! instance each, as the agent makes them) of the example validators and
//! of a TCP health check against a local listener.
//!
//! Run: `cargo bench --bench plugins` after `./plugins/build.sh` (prints
//! medians and p99s; asserts nothing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgeconf::config::{Capabilities, HostPort, Limits, PluginEntry, PluginKind};
use edgeconf::plugins::{CallContext, Compiled, Plugins};

fn wasm(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run ./plugins/build.sh",
        path.display()
    );
    path
}

fn entry(name: &str, kind: PluginKind, capabilities: Capabilities) -> PluginEntry {
    PluginEntry {
        name: name.into(),
        path: wasm(name),
        kind,
        limits: Limits::default(),
        capabilities,
    }
}

/// Median and 99th percentile, in microseconds, of `samples` timings of `f`.
fn distribution(samples: usize, mut f: impl FnMut() -> Duration) -> (f64, f64) {
    let mut times: Vec<f64> = (0..samples).map(|_| f().as_secs_f64() * 1e6).collect();
    times.sort_by(f64::total_cmp);
    (times[samples / 2], times[samples * 99 / 100])
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn context(settings: &[(&str, &str)]) -> CallContext {
    CallContext {
        settings: Arc::new(
            settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        keys: None,
    }
}

fn main() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let entries = [
        entry(
            "json-schema",
            PluginKind::Validator,
            Capabilities::default(),
        ),
        entry("allow-list", PluginKind::Validator, Capabilities::default()),
        entry(
            "tcp-check",
            PluginKind::HealthCheck,
            Capabilities {
                tcp: vec![HostPort::parse(&addr).unwrap()],
                ..Capabilities::default()
            },
        ),
    ];
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().join("cache");

    println!("== load (3 components) ==");
    let mut cold = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&cache_dir);
        cold.push(timed(|| {
            Plugins::load(&entries, Some(cache_dir.clone())).unwrap();
        }));
    }
    cold.sort();
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(timed(|| {
            let plugins = Plugins::load(&entries, Some(cache_dir.clone())).unwrap();
            assert_eq!(
                plugins.get("json-schema").unwrap().compiled,
                Compiled::FromCache
            );
        }));
    }
    warm.sort();
    println!(
        "compile all:        median {:>9.1} ms\nfrom disk cache:    median {:>9.1} ms   ({:.0}x faster)",
        cold[1].as_secs_f64() * 1e3,
        warm[2].as_secs_f64() * 1e3,
        cold[1].as_secs_f64() / warm[2].as_secs_f64()
    );
    for name in ["json-schema", "allow-list", "tcp-check"] {
        let size = std::fs::metadata(wasm(name)).unwrap().len();
        println!("  {name:<12} {:>7.1} KiB", size as f64 / 1024.0);
    }

    let plugins = Plugins::load(&entries, Some(cache_dir.clone())).unwrap();
    const SAMPLES: usize = 20_000;
    println!("\n== per call ({SAMPLES} samples, microseconds) ==");
    for name in ["json-schema", "allow-list", "tcp-check"] {
        let plugin = plugins.get(name).unwrap();
        let (p50, p99) = distribution(SAMPLES, || plugin.time_instantiate().unwrap());
        println!("instantiate {name:<12}  p50 {p50:>7.2}  p99 {p99:>7.2}");
    }
    let schema = r#"{"type":"object","required":["max","name"],"properties":{"max":{"type":"integer","minimum":0,"maximum":100},"name":{"type":"string","maxLength":32}}}"#;
    let json = context(&[("schema", schema)]);
    let value = br#"{"max":42,"name":"edge-cache"}"#;
    let (p50, p99) = distribution(SAMPLES, || {
        timed(|| {
            let verdict = plugins.validate("json-schema", &json, "/app/limits/a", value);
            assert_eq!(verdict, Ok(Ok(())));
        })
    });
    println!(
        "validate json-schema     p50 {p50:>7.2}  p99 {p99:>7.2}   (instance + call + verdict)"
    );
    let allow = context(&[("pattern", "^[a-z0-9-]{1,63}$")]);
    let (p50, p99) = distribution(SAMPLES, || {
        timed(|| {
            let verdict = plugins.validate("allow-list", &allow, "/app/name", b"edge-cache-01");
            assert!(verdict.is_ok());
        })
    });
    println!("validate allow-list      p50 {p50:>7.2}  p99 {p99:>7.2}");
    let tcp = context(&[]);
    let args = vec![addr.clone()];
    let (p50, p99) = distribution(2_000, || {
        timed(|| {
            plugins.check("tcp-check", &tcp, &args).unwrap();
        })
    });
    println!("check tcp-check          p50 {p50:>7.2}  p99 {p99:>7.2}   (includes a loopback TCP connect)");
}
