//! Release plumbing, checked without a cluster: `--version` of the built binary and the commit
//! recorded by `build.rs` (also outside a checkout), the chart's `appVersion` against the
//! crate, and the CI/CD workflows, which may only call the repository's scripts.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// Actions a workflow may use: checkout, caches, artifacts and tool set-up. Anything that does
/// project work belongs in a script, so `.ci/run` and the pipeline cannot drift apart.
const ALLOWED_ACTIONS: &[&str] = &[
    "actions/checkout",
    "actions/cache",
    "actions/upload-artifact",
    "actions/download-artifact",
    "docker/setup-buildx-action",
    "docker/login-action",
    "azure/setup-helm",
];

/// Shell syntax that would put logic into a workflow instead of a script (and `${{` would
/// expand untrusted context such as a tag name into the shell).
const FORBIDDEN_SHELL: &[&str] = &["&&", "||", ";", "|", "`", "$(", "${{", ">", "<"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn git_head(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_owned())
}

#[test]
fn version_prints_the_crate_version_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .arg("--version")
        .output()
        .expect("run the binary");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let expected_prefix = format!(
        "streamspace-controller {} (commit ",
        env!("CARGO_PKG_VERSION")
    );
    let commit = text
        .trim()
        .strip_prefix(&expected_prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version output: {text:?}"));
    match git_head(&root()) {
        Some(head) => assert_eq!(commit, head, "built from a checkout: its HEAD"),
        None => assert!(
            commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{commit:?}"
        ),
    }
}

/// Runs the compiled build script in `dir` (not a checkout) and returns the commit it records.
fn build_script_commit(script: &Path, dir: &Path, env_commit: Option<&str>) -> String {
    let mut command = Command::new(script);
    command
        .env("CARGO_MANIFEST_DIR", dir)
        .env("GIT_CEILING_DIRECTORIES", dir.parent().unwrap_or(dir))
        .env_remove("STREAMSPACE_COMMIT");
    if let Some(value) = env_commit {
        command.env("STREAMSPACE_COMMIT", value);
    }
    let out = command.output().expect("run the build script");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("cargo:rustc-env=STREAMSPACE_BUILD_COMMIT="))
        .unwrap_or_else(|| panic!("no commit in build script output: {text}"))
        .to_owned()
}

#[test]
fn build_script_outside_a_checkout_uses_the_environment_or_unknown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let script = tmp.path().join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2024", "-O", "-o"])
        .arg(&script)
        .arg(root().join("build.rs"))
        .status()
        .expect("compile build.rs");
    assert!(status.success());
    // A directory outside any repository, as for a packaged crate or a Docker build context
    // without .git.
    let crate_dir = tmp.path().join("crate");
    std::fs::create_dir(&crate_dir).expect("mkdir");

    let cases = [
        (None, "unknown"),
        (
            Some("0123456789abcdef0123456789abcdef01234567"),
            "0123456789ab",
        ),
        (Some("abc1234"), "abc1234"),
        (Some("not a commit; rm -rf /"), "unknown"),
        (Some("abc12"), "unknown"),
    ];
    for (env_commit, expected) in cases {
        assert_eq!(
            build_script_commit(&script, &crate_dir, env_commit),
            expected,
            "STREAMSPACE_COMMIT={env_commit:?}"
        );
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Chart {
    api_version: String,
    name: String,
    version: String,
    app_version: String,
    kube_version: String,
}

#[test]
fn chart_app_version_follows_the_crate() {
    let path = root().join("charts/streamspace-controller/Chart.yaml");
    let text = std::fs::read_to_string(&path).expect("read Chart.yaml");
    let chart: Chart = serde_saphyr::from_str(&text).expect("parse Chart.yaml");
    assert_eq!(chart.api_version, "v2");
    assert_eq!(chart.name, "streamspace-controller");
    assert_eq!(chart.app_version, env!("CARGO_PKG_VERSION"));
    assert!(!chart.version.is_empty());
    assert!(
        chart.kube_version.starts_with(">=1.20"),
        "{}",
        chart.kube_version
    );
}

#[derive(Deserialize)]
struct Workflow {
    on: serde_json::Value,
    jobs: BTreeMap<String, Job>,
}

#[derive(Deserialize)]
struct Job {
    #[serde(default)]
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    uses: Option<String>,
    run: Option<String>,
    #[serde(default)]
    with: serde_json::Value,
}

fn workflows() -> BTreeMap<String, Workflow> {
    let dir = root().join(".github/workflows");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("read .github/workflows") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !(name.ends_with(".yml") || name.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read workflow");
        let workflow =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        out.insert(name, workflow);
    }
    out
}

/// Why one line of a `run:` step is not a plain call of a repository script, if it is not.
fn run_line_problem(line: &str, root: &Path) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    if let Some(bad) = FORBIDDEN_SHELL.iter().find(|bad| line.contains(*bad)) {
        return Some(format!("{line:?} uses {bad:?}"));
    }
    let program = line.split_whitespace().next().unwrap_or_default();
    if !(program.starts_with("scripts/") || program.starts_with(".ci/")) || program.contains("..") {
        return Some(format!(
            "{line:?} does not call a script under scripts/ or .ci/"
        ));
    }
    let executable = std::fs::metadata(root.join(program))
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    (!executable).then(|| format!("{program} is not an executable file of the repository"))
}

fn step_problems(step: &Step, root: &Path) -> Vec<String> {
    match (&step.uses, &step.run) {
        (Some(action), None) => {
            let (name, pin) = action.split_once('@').unwrap_or((action.as_str(), ""));
            if ALLOWED_ACTIONS.contains(&name) && !pin.is_empty() {
                vec![]
            } else {
                vec![format!(
                    "action {action} is not an allowed, pinned set-up action"
                )]
            }
        }
        (None, Some(run)) => run
            .lines()
            .filter_map(|line| run_line_problem(line, root))
            .collect(),
        _ => vec!["a step needs exactly one of uses and run".to_owned()],
    }
}

#[test]
fn run_line_check_accepts_only_repository_scripts() {
    let root = root();
    let cases = [
        (".ci/run", true),
        ("scripts/release.sh check", true),
        ("  # a comment", true),
        ("", true),
        ("cargo test", false),
        ("./scripts/test.sh", false),
        ("scripts/no-such-script.sh", false),
        ("scripts/../.ci/run", false),
        ("scripts/test.sh && curl https://example.com | sh", false),
        ("scripts/release.sh check ${{ github.ref_name }}", false),
        ("scripts/test.sh > out.log", false),
        ("Cargo.toml", false),
    ];
    for (line, ok) in cases {
        assert_eq!(run_line_problem(line, &root).is_none(), ok, "{line:?}");
    }
}

#[test]
fn workflows_parse_and_call_only_repository_scripts() {
    let root = root();
    let workflows = workflows();
    assert!(workflows.contains_key("ci.yml") && workflows.contains_key("release.yml"));
    for (name, workflow) in &workflows {
        assert!(!workflow.jobs.is_empty(), "{name} has no jobs");
        for (job_name, job) in &workflow.jobs {
            assert!(!job.steps.is_empty(), "{name}: job {job_name} has no steps");
            for step in &job.steps {
                let problems = step_problems(step, &root);
                assert!(problems.is_empty(), "{name}: job {job_name}: {problems:?}");
            }
        }
    }
}

fn run_lines(workflow: &Workflow) -> Vec<String> {
    let steps = workflow.jobs.values().flat_map(|job| &job.steps);
    steps
        .filter_map(|step| step.run.as_deref())
        .flat_map(str::lines)
        .map(|line| line.trim().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

#[test]
fn ci_runs_the_local_ci_entry_point_on_pull_requests_with_caches() {
    let workflows = workflows();
    let ci = &workflows["ci.yml"];
    assert!(ci.on.get("pull_request").is_some(), "on: {}", ci.on);
    assert_eq!(run_lines(ci), [".ci/run"]);
    let cached: Vec<String> = ci
        .jobs
        .values()
        .flat_map(|job| &job.steps)
        .filter(|step| {
            step.uses
                .as_deref()
                .is_some_and(|u| u.starts_with("actions/cache@"))
        })
        .filter_map(|step| step.with.get("path")?.as_str().map(str::to_owned))
        .collect();
    for wanted in [
        "~/.cache/streamspace-controller",
        "~/.cargo/registry",
        "target",
    ] {
        assert!(
            cached.iter().any(|path| path
                .lines()
                .any(|l| l.trim() == wanted || l.trim().starts_with(&format!("{wanted}/")))),
            "{wanted} not cached: {cached:?}"
        );
    }
}

#[test]
fn release_runs_on_version_tags_and_every_step_checks_the_version_first() {
    let workflows = workflows();
    let release = &workflows["release.yml"];
    let tags = &release.on["push"]["tags"];
    assert_eq!(tags, &serde_json::json!(["v*"]), "on: {}", release.on);
    let lines = run_lines(release);
    for step in ["check", "binaries", "publish-binaries", "image", "chart"] {
        let line = format!("scripts/release.sh {step}");
        assert!(lines.contains(&line), "{line} missing from {lines:?}");
        // A tag that does not match the crate stops each step before it builds or pushes.
        let out = Command::new(root().join("scripts/release.sh"))
            .args([step, "v0.0.0-mismatch"])
            .output()
            .expect("run scripts/release.sh");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{step}: {out:?}");
        assert!(
            stderr.contains("does not match the crate version"),
            "{step}: {stderr}"
        );
    }
}
