//! `edgeconf-componentize new CORE.wasm OUT.wasm`: wraps a core module built
//! with the Edgeconf plugin SDK (for wasm32-unknown-unknown) into a
//! component, validates it and writes it atomically.
//!
//! `edgeconf-componentize wit COMPONENT.wasm`: prints the component's WIT
//! world, i.e. what it imports and exports.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage:
  edgeconf-componentize new CORE.wasm OUT.wasm   wrap a core module into a component
  edgeconf-componentize wit COMPONENT.wasm       print a component's imports and exports as WIT";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["new", core, out] => new(Path::new(core), Path::new(out)),
        ["wit", component] => wit(Path::new(component)),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeconf-componentize: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn new(core: &Path, out: &Path) -> Result<()> {
    let module = std::fs::read(core).with_context(|| format!("reading {}", core.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .with_context(|| {
            format!(
                "{}: not a core module built with the Edgeconf plugin SDK",
                core.display()
            )
        })?
        .validate(true)
        .encode()
        .with_context(|| format!("{}: making a component", core.display()))?;
    write_atomically(out, &component)
}

/// Writes `bytes` to a temporary file next to `path` and renames it over
/// `path`, so a reader never sees a half-written component.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", tmp.display()));
    }
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })
}

fn wit(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if !wasmparser_is_component(&bytes) {
        bail!(
            "{}: not a component (a core module? wrap it with `edgeconf-componentize new`)",
            path.display()
        );
    }
    let decoded = wit_component::decode(&bytes)
        .with_context(|| format!("{}: decoding the component", path.display()))?;
    let mut printer = wit_component::WitPrinter::default();
    printer
        .print(decoded.resolve(), decoded.package(), &[])
        .with_context(|| format!("{}: printing WIT", path.display()))?;
    print!("{}", printer.output);
    Ok(())
}

/// A component's preamble: magic, then version 0x0d and layer 1.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}
