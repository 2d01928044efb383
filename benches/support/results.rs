//! Figures of one benchmark run: printed, and appended as JSON lines (name, value, unit, floor,
//! ratio, commit, date) to `target/bench-results/<bench>.jsonl` so runs can be compared by a
//! script. Smoke runs (under `cargo test`) write to `target/bench-results/smoke/` instead.

use std::io::Write;
use std::path::PathBuf;

pub struct Results {
    bench: &'static str,
    file: PathBuf,
    commit: String,
    date: String,
}

impl Results {
    pub fn new(bench: &'static str) -> anyhow::Result<Self> {
        // CARGO_TARGET_TMPDIR is `<target>/tmp`: results go beside it.
        let target = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"));
        let mut dir = target.join("bench-results");
        if super::smoke() {
            dir.push("smoke");
        }
        std::fs::create_dir_all(&dir)?;
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Ok(Results {
            bench,
            file: dir.join(format!("{bench}.jsonl")),
            commit,
            date: jiff::Timestamp::now().to_string(),
        })
    }

    /// Prints and records one figure; `floor` is the same quantity the API server alone needs
    /// (same unit), when there is one, and the ratio value/floor is printed beside it.
    pub fn record(
        &self,
        name: &str,
        value: f64,
        unit: &str,
        floor: Option<f64>,
    ) -> anyhow::Result<()> {
        let ratio = floor.filter(|f| *f > 0.0).map(|f| value / f);
        match (floor, ratio) {
            (Some(floor), Some(ratio)) => println!(
                "  {name:<44} {value:>10.2} {unit:<8} floor {floor:>9.2} {unit:<8} ratio {ratio:.2}x"
            ),
            _ => println!("  {name:<44} {value:>10.2} {unit}"),
        }
        let line = serde_json::json!({
            "bench": self.bench,
            "name": name,
            "value": value,
            "unit": unit,
            "floor": floor,
            "ratio": ratio,
            "commit": self.commit,
            "date": self.date,
        });
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        writeln!(file, "{line}")?;
        Ok(())
    }

    /// Records the peak resident set size of process `pid` as `<process> peak RSS`.
    pub fn record_peak_rss(&self, process: &str, pid: u32) -> anyhow::Result<()> {
        let mib = super::peak_rss_kib(pid)? as f64 / 1024.0;
        self.record(&format!("{process} peak RSS"), mib, "MiB", None)
    }
}
