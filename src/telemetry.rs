//! Logging set-up: `RUST_LOG`-style filtering, text or JSON output.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

fn filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(json: bool) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global subscriber writing to `path` (truncated first) and, with `also_stderr`,
/// to standard error too: `dev` keeps its terminal for the session table.
pub fn init_file(json: bool, path: &Path, also_stderr: bool) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let file = Arc::new(Mutex::new(std::fs::File::create(path)?));
    let to_file = move || FileWriter(file.clone());
    let stderr = std::io::stderr.with_filter(move |_| also_stderr);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_ansi(false)
        .with_writer(to_file.and(stderr));
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// One log line's writer of the shared file.
struct FileWriter(Arc<Mutex<std::fs::File>>);

impl std::io::Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut file) => file.write(buf),
            Err(poisoned) => poisoned.into_inner().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock() {
            Ok(mut file) => file.flush(),
            Err(poisoned) => poisoned.into_inner().flush(),
        }
    }
}
