//! Host bindings generated from `wit/plugin.wit`: one module per world,
//! sharing the imported interfaces.

pub mod validator {
    wasmtime::component::bindgen!({
        world: "validator",
        path: "../wit",
    });
}

pub mod health_check {
    wasmtime::component::bindgen!({
        world: "health-check",
        path: "../wit",
        with: {
            "edgeconf:plugin/log": super::validator::edgeconf::plugin::log,
            "edgeconf:plugin/settings": super::validator::edgeconf::plugin::settings,
            "edgeconf:plugin/keys": super::validator::edgeconf::plugin::keys,
            "edgeconf:plugin/tcp": super::validator::edgeconf::plugin::tcp,
            "edgeconf:plugin/http": super::validator::edgeconf::plugin::http,
        },
    });
}

pub use health_check::edgeconf::plugin::health::{HealthResult, Status as HealthStatus};
pub use validator::edgeconf::plugin::{http, keys, log, settings, tcp};
