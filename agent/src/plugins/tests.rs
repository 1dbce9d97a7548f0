//! Unit tests against the example plugins built by plugins/build.sh.
