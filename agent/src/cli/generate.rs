//! `edgeconf completion SHELL` and `edgeconf man`: shell completions and
//! manual pages generated from the command-line definition itself, so they
//! never drift from it. The Debian package ships both.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use super::Cli;

/// Prints the completion script for `shell` on standard output.
pub fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "edgeconf", &mut script);
    print(&script)
}

/// Writes `bytes` to standard output; a reader that went away (`| head`)
/// ends the command quietly, as Unix tools do.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("cannot write to standard output"),
    }
}

/// Prints `edgeconf(1)` on standard output or, with `out_dir`, writes one
/// page per command there (`edgeconf.1`, `edgeconf-put.1`, ...).
pub fn man(out_dir: Option<&Path>) -> anyhow::Result<()> {
    let command = Cli::command();
    match out_dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            print(&page)
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("cannot write the manual pages into {}", dir.display()))
        }
    }
}
