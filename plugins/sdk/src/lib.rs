//! Guest SDK for Edgeconf WebAssembly plugins.
//!
//! A plugin is a `cdylib` crate that enables exactly one of this crate's
//! features, `validator` or `health-check`, writes a plain function and
//! registers it with the matching macro:
//!
//! ```ignore
//! // Cargo.toml: edgeconf-plugin = { path = "...", features = ["validator"] }
//! fn validate(key: &str, value: &[u8]) -> Result<(), String> {
//!     if value.is_empty() {
//!         return Err(format!("{key}: empty value"));
//!     }
//!     Ok(())
//! }
//! edgeconf_plugin::validator!(validate);
//! ```
//!
//! ```ignore
//! // Cargo.toml: edgeconf-plugin = { path = "...", features = ["health-check"] }
//! use edgeconf_plugin::Health;
//! fn check(args: &[String]) -> Health {
//!     Health::passing(format!("{} args", args.len()))
//! }
//! edgeconf_plugin::health_check!(check);
//! ```
//!
//! The host functions ([`log`], [`setting`], [`read_key`], [`tcp_connect`],
//! [`http_get`]) are available in both worlds. A component imports only the
//! host interfaces whose functions it actually calls (unused ones are dropped
//! when the component is made), and the agent refuses a component that
//! imports an interface its `[[plugin]]` entry does not grant.
//!
//! There is no clock, filesystem, environment or network in a plugin beyond
//! these functions: do not use `std::time::Instant`, `SystemTime`, `std::fs`
//! or `std::env`.

#[cfg(all(feature = "validator", feature = "health-check"))]
compile_error!(
    "edgeconf-plugin: enable exactly one of the features \"validator\" and \"health-check\", not both \
     (build validators and health checks in separate cargo invocations)"
);

#[cfg(not(any(feature = "validator", feature = "health-check")))]
compile_error!("edgeconf-plugin: enable one of the features \"validator\" or \"health-check\"");

// The generated bindings name the runtime through this crate, so plugins do
// not need a direct dependency on wit-bindgen.
extern crate self as edgeconf_plugin;

use std::time::Duration;

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    #[cfg(feature = "validator")]
    pub mod bindings {
        wit_bindgen::generate!({
            world: "validator",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "__export_validator",
            default_bindings_module: "edgeconf_plugin::__private::bindings",
            runtime_path: "edgeconf_plugin::__private::wit_bindgen::rt",
        });
    }

    #[cfg(all(feature = "health-check", not(feature = "validator")))]
    pub mod bindings {
        wit_bindgen::generate!({
            world: "health-check",
            path: "../../wit",
            pub_export_macro: true,
            export_macro_name: "__export_health_check",
            default_bindings_module: "edgeconf_plugin::__private::bindings",
            runtime_path: "edgeconf_plugin::__private::wit_bindgen::rt",
        });
    }

    #[cfg(feature = "validator")]
    pub use bindings::Guest as ValidatorGuest;

    #[cfg(all(feature = "health-check", not(feature = "validator")))]
    pub use bindings::Guest as HealthCheckGuest;

    #[cfg(all(feature = "health-check", not(feature = "validator")))]
    pub fn health_result(h: crate::Health) -> bindings::edgeconf::plugin::health::HealthResult {
        use bindings::edgeconf::plugin::health::{HealthResult, Status};
        HealthResult {
            status: match h.status {
                crate::Status::Passing => Status::Passing,
                crate::Status::Warning => Status::Warning,
                crate::Status::Critical => Status::Critical,
            },
            output: h.output,
        }
    }
}

#[cfg(any(feature = "validator", feature = "health-check"))]
use __private::bindings::edgeconf::plugin as host;

/// Registers `fn(key: &str, value: &[u8]) -> Result<(), String>` as the
/// plugin's `validate` export (feature `validator`).
///
/// `Ok(())` accepts the value; `Err(message)` refuses it and the writer sees
/// `rejected by plugin NAME: message`.
#[cfg(feature = "validator")]
#[macro_export]
macro_rules! validator {
    ($f:path) => {
        const _: () = {
            struct EdgeconfValidator;
            impl $crate::__private::ValidatorGuest for EdgeconfValidator {
                fn validate(
                    key: ::std::string::String,
                    value: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<(), ::std::string::String> {
                    let f: fn(&str, &[u8]) -> ::std::result::Result<(), ::std::string::String> = $f;
                    f(&key, &value)
                }
            }
            $crate::__private::bindings::__export_validator!(
                EdgeconfValidator with_types_in $crate::__private::bindings
            );
        };
    };
}

/// Registers `fn(args: &[String]) -> Health` as the plugin's `check`
/// export (feature `health-check`). `args` are the `args` of the `[[check]]`
/// entry.
#[cfg(all(feature = "health-check", not(feature = "validator")))]
#[macro_export]
macro_rules! health_check {
    ($f:path) => {
        const _: () = {
            struct EdgeconfHealthCheck;
            impl $crate::__private::HealthCheckGuest for EdgeconfHealthCheck {
                fn check(
                    args: ::std::vec::Vec<::std::string::String>,
                ) -> $crate::__private::bindings::edgeconf::plugin::health::HealthResult {
                    let f: fn(&[::std::string::String]) -> $crate::Health = $f;
                    $crate::__private::health_result(f(&args))
                }
            }
            $crate::__private::bindings::__export_health_check!(
                EdgeconfHealthCheck with_types_in $crate::__private::bindings
            );
        };
    };
}

/// The status of a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

/// The verdict of a health check: a status and a short human-readable
/// explanation shown in status output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub status: Status,
    pub output: String,
}

impl Health {
    pub fn new(status: Status, output: impl Into<String>) -> Health {
        Health {
            status,
            output: output.into(),
        }
    }

    pub fn passing(output: impl Into<String>) -> Health {
        Health::new(Status::Passing, output)
    }

    pub fn warning(output: impl Into<String>) -> Health {
        Health::new(Status::Warning, output)
    }

    pub fn critical(output: impl Into<String>) -> Health {
        Health::new(Status::Critical, output)
    }
}

/// Log lines, tagged with the plugin's name in the agent's log.
/// Needs `capabilities.log = true`.
///
/// Messages longer than 4 KiB are cut; at most 64 lines per call.
pub mod log {
    #[cfg(any(feature = "validator", feature = "health-check"))]
    use crate::host::log::{log, Level};

    #[cfg(any(feature = "validator", feature = "health-check"))]
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }

    #[cfg(any(feature = "validator", feature = "health-check"))]
    pub fn info(message: &str) {
        log(Level::Info, message)
    }

    #[cfg(any(feature = "validator", feature = "health-check"))]
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }

    #[cfg(any(feature = "validator", feature = "health-check"))]
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// The value of one of the plugin's settings (the `settings` table of the
/// `[[validate]]` or `[[check]]` entry that runs it), if it is set.
/// Always granted.
#[cfg(any(feature = "validator", feature = "health-check"))]
pub fn setting(name: &str) -> Option<String> {
    host::settings::get(name)
}

/// The current value of `key` in the local agent's store (signed values
/// verified, secrets decrypted). `Ok(None)` if the key does not exist; an
/// error if the key is outside the granted prefixes or fails verification.
/// Needs `capabilities.read_keys = ["/prefix/", ...]`.
#[cfg(any(feature = "validator", feature = "health-check"))]
pub fn read_key(key: &str) -> Result<Option<Vec<u8>>, String> {
    host::keys::read_key(key)
}

/// Opens a TCP connection to `host:port` and closes it again; returns how
/// long the connection took. An address not on the allow list is an error
/// and no packet is sent. Needs `capabilities.tcp = ["host:port", ...]`.
#[cfg(any(feature = "validator", feature = "health-check"))]
pub fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<Duration, String> {
    host::tcp::connect(host, port, millis(timeout)).map(Duration::from_micros)
}

/// An HTTP response: the status code and the body (cut at 64 KiB by the
/// host).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// HTTP/1.1 GET of a plain `http://` URL. A URL whose `host:port` is not on
/// the allow list is an error and no connection is made. The timeout is
/// also capped by the time left in the plugin's call.
/// Needs `capabilities.http = ["host:port", ...]`.
#[cfg(any(feature = "validator", feature = "health-check"))]
pub fn http_get(url: &str, timeout: Duration) -> Result<Response, String> {
    host::http::get(url, millis(timeout)).map(|r| Response {
        status: r.status,
        body: r.body,
    })
}

/// A timeout in whole milliseconds for the host, rounded up (so 1µs is not
/// "no time at all") and saturating at `u32::MAX`.
fn millis(timeout: Duration) -> u32 {
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}
