//! The `edgeconf` binary: parses the command line and runs the agent or a
//! client command. Errors end here: one line on stderr and exit code 1.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edgeconf::cli::{self, Cli, Command};
use edgeconf::config::Config;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Agent(ref args) => run_agent(args),
        _ => {
            quiet_on_closed_stdout();
            runtime(None).and_then(|rt| rt.block_on(cli::run_client(cli)))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Client commands end quietly when their reader goes away (`| head`), as
/// Unix tools do, instead of failing to print. SIGPIPE stays ignored (Rust's
/// default), so a socket the agent closes is an error, not a death; a
/// closed standard output makes `println!` panic, and that panic alone
/// ends the process quietly.
fn quiet_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("failed printing to stdout") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
}

/// A multi-thread runtime with `workers` worker threads, or as many as
/// `TOKIO_WORKER_THREADS` says, or tokio's default (one per CPU).
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let workers = match workers {
        Some(workers) => Some(workers),
        None => workers_from_env()?,
    };
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    Ok(builder.enable_all().build()?)
}

/// The agent's runtime. An edge host is small and an edge agent is off
/// every write path, so an edge runs one worker thread and one malloc
/// arena: about 0.7 MiB less resident memory (BENCHMARKS.md, issue 19).
///
/// A voter runs one worker fewer than it has CPUs (at least one), which
/// leaves a CPU to the raft thread: every write waits on it, and a busy
/// worker taking its CPU delays every write at once. On two CPUs that is
/// a quarter more linearizable gets, each for a fifth less CPU, and 7% off
/// a lone put's latency (BENCHMARKS.md). `TOKIO_WORKER_THREADS` still sets
/// the count. It runs one malloc arena per two CPUs ([`voter_arenas`]).
fn agent_runtime(config: &Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (workers, arenas) = if config.role == edgeconf::config::Role::Edge {
        (1, 1)
    } else {
        let workers = workers_from_env()?.unwrap_or_else(|| voter_workers(cpus));
        (workers, voter_arenas(cpus))
    };
    limit_malloc_arenas(arenas);
    runtime(Some(workers))
}

/// Caps glibc's malloc arenas, unless the environment already does
/// (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`).
///
/// glibc gives each thread that allocates an arena of its own (up to eight
/// per CPU), and keeps resident what an arena frees. redb's page cache
/// frees pages on whichever thread evicts them and allocates them on
/// whichever thread reads: pages freed by the raft thread's applies stay
/// resident in its arena while the workers' reads allocate new ones in
/// theirs. Three members on two CPUs, after 200,000 linearizable gets:
/// 27 MiB each with glibc's arenas, 23.5 MiB with one, at the same rates
/// (BENCHMARKS.md, issue 19).
fn limit_malloc_arenas(arenas: usize) {
    let tuned = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if tuned {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets one of the allocator's tunables, under the
    // allocator's own lock. Called before the runtime's threads start, so
    // every thread they start shares the arenas allowed.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas.try_into().unwrap_or(i32::MAX));
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Malloc arenas of a voter with `cpus` CPUs: one per two CPUs, so that on
/// a small host its threads share one, and on a large one the workers do
/// not all wait on one arena's lock.
fn voter_arenas(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

/// Worker threads of a voter with `cpus` CPUs: one CPU is the raft
/// thread's.
fn voter_workers(cpus: usize) -> usize {
    cpus.saturating_sub(1).max(1)
}

/// The worker count `TOKIO_WORKER_THREADS` asks for, if it is set
/// (tokio itself would panic on a bad one).
fn workers_from_env() -> anyhow::Result<Option<usize>> {
    std::env::var_os("TOKIO_WORKER_THREADS")
        .map(|value| parse_workers(&value))
        .transpose()
}

fn parse_workers(value: &std::ffi::OsStr) -> anyhow::Result<usize> {
    value
        .to_str()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|workers| *workers > 0)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "TOKIO_WORKER_THREADS is {value:?}: expected a number of worker threads, 1 or more (or unset it for the default)"
            )
        })
}

fn run_agent(args: &cli::AgentArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), args.overrides())?;
    if args.check {
        edgeconf::render::Plan::load(&config).map_err(anyhow::Error::msg)?;
        // Compiles every plugin and checks its world and imports.
        edgeconf::plugins::Plugins::load(&config.plugins.plugins, None)?;
        let source = args
            .config
            .as_ref()
            .map_or("the defaults".to_string(), |p| p.display().to_string());
        println!(
            "config {source} is valid:
{config:#?}"
        );
        return Ok(());
    }
    // `log_level` was checked with the config; RUST_LOG is checked alike.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log_level.clone());
    if !edgeconf::config::is_log_filter(&filter) {
        anyhow::bail!(
            "RUST_LOG is {filter:?}: expected a level such as \"info\" or \"edgeconf=debug\""
        );
    }
    let filter: tracing_subscriber::filter::Targets = filter.parse()?;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match args.log_format {
        cli::LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .with(filter)
            .init(),
        cli::LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true))
            .with(filter)
            .init(),
    }
    let rt = agent_runtime(&config)?;
    let reload = {
        let (path, overrides) = (args.config.clone(), args.overrides());
        move || Ok(Config::load(path.as_deref(), overrides.clone())?)
    };
    let writer = rt.block_on(edgeconf::agent::run(config, reload))?;
    // Shutting the runtime down drops every task and with them the proposal
    // queue, so the writer thread finishes its batch and closes the store.
    // Blocking work still running (a plugin call, a compile) gets a bounded
    // wait, not an unbounded one.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let _ = writer.join();
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{parse_workers, voter_arenas, voter_workers};

    #[test]
    fn a_voter_leaves_one_cpu_to_the_raft_thread() {
        assert_eq!(voter_workers(8), 7);
        assert_eq!(voter_workers(2), 1);
        // With one CPU (or none reported) it still has a worker.
        assert_eq!(voter_workers(1), 1);
        assert_eq!(voter_workers(0), 1);
    }

    #[test]
    fn a_voter_shares_one_malloc_arena_per_two_cpus() {
        assert_eq!(voter_arenas(2), 1);
        assert_eq!(voter_arenas(3), 1);
        assert_eq!(voter_arenas(8), 4);
        assert_eq!(voter_arenas(1), 1);
        assert_eq!(voter_arenas(0), 1);
    }

    #[test]
    fn a_worker_count_from_the_environment_is_checked() {
        assert_eq!(parse_workers("4".as_ref()).unwrap(), 4);
        for bad in ["0", "many", "-1", ""] {
            let err = parse_workers(bad.as_ref()).unwrap_err().to_string();
            assert!(err.contains("TOKIO_WORKER_THREADS"), "{err}");
        }
    }
}
