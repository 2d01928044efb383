//! What `--version` prints: the crate version and the commit the binary was built from
//! (recorded by `build.rs`; `unknown` when the build had neither a checkout nor
//! `STREAMSPACE_COMMIT`).

/// Crate version, as in `Cargo.toml` and the chart's `appVersion`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Abbreviated commit of the build, or `unknown`.
pub const COMMIT: &str = env!("STREAMSPACE_BUILD_COMMIT");

/// `<version> (commit <commit>)`, the text after the binary's name in `--version`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STREAMSPACE_BUILD_COMMIT"),
    ")"
);
