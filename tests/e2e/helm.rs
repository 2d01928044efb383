//! The chart tooling of the tests: `scripts/helm.sh` installs helm and kubernetes-validate once
//! (into the cache directory, shared by every test process); these helpers run them and parse
//! what they print.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The chart directory.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/streamspace-controller")
}

/// Paths of the tools `scripts/helm.sh` installed.
pub struct Tools {
    pub helm: PathBuf,
    pub validate: PathBuf,
}

static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();

/// Installs the tools on first use (the script is flock-guarded across processes).
pub fn tools() -> &'static Tools {
    let result = TOOLS.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/helm.sh");
        let output = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let path = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(PathBuf::from)
                .ok_or_else(|| format!("helm.sh printed no {key}: {stdout}"))
        };
        Ok(Tools {
            helm: path("HELM")?,
            validate: path("KUBERNETES_VALIDATE")?,
        })
    });
    match result {
        Ok(tools) => tools,
        Err(e) => panic!("chart tooling: {e}"),
    }
}

/// Output of a command as (success, stdout, stderr).
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            ok: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs helm with `args` (blocking); `kubeconfig` for commands that talk to a cluster.
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Run {
    let mut command = Command::new(&tools().helm);
    command.args(args);
    if let Some(path) = kubeconfig {
        command.env("KUBECONFIG", path);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("running helm {args:?}: {e}"))
        .into()
}

/// Runs helm on a blocking thread, for async tests.
pub async fn helm_async(args: Vec<String>, kubeconfig: Option<PathBuf>) -> Run {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm(&args, kubeconfig.as_deref())
    })
    .await
    .expect("helm thread")
}

/// `--set`-style arguments from (key, value) pairs.
pub fn set_args(sets: &[(&str, &str)]) -> Vec<String> {
    sets.iter()
        .flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")])
        .collect()
}

/// `helm template` of the chart with `extra` arguments; panics with helm's message on failure.
pub fn template(release: &str, namespace: &str, extra: &[String]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        namespace,
    ];
    args.extend(extra.iter().map(String::as_str));
    let run = helm(&args, None);
    assert!(run.ok, "helm {args:?} failed: {}", run.stderr);
    run.stdout
}

/// The documents of a multi-document YAML stream (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("rendered YAML: {e}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// The one document of `kind` named `name`.
pub fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let present: Vec<String> = documents
                .iter()
                .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} among {present:?}")
        })
}

/// The container arguments of a rendered Deployment.
pub fn container_args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .map(|args| {
            args.iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
