//! The Helm chart rendered offline: `helm lint` and `helm template` for the default values and
//! each option, the schema's refusal of bad values, validation of the manifests against the
//! Kubernetes 1.33 schemas (kubernetes-validate), hardening and RBAC shape.

use std::process::Command;

use serde_json::Value;

use crate::helm::{chart_dir, container_args, documents, find, helm, set_args, template, tools};

const RELEASE: &str = "ss";
const NAMESPACE: &str = "streamspace";
/// Kinds kubernetes-validate has no schema for (custom resources of cert-manager and the
/// Prometheus Operator); everything else must validate.
const CUSTOM_KINDS: [&str; 3] = ["Certificate", "Issuer", "ServiceMonitor"];

/// One option of the chart: its `--set` values and what its rendering must contain.
struct Case {
    name: &'static str,
    sets: &'static [(&'static str, &'static str)],
    check: fn(&[Value]),
}

fn controller(documents: &[Value]) -> &Value {
    find(
        documents,
        "Deployment",
        "ss-streamspace-controller-controller",
    )
}

fn api(documents: &[Value]) -> &Value {
    find(documents, "Deployment", "ss-streamspace-controller-api")
}

fn kinds(documents: &[Value]) -> Vec<String> {
    documents
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "default",
            sets: &[],
            check: |docs| {
                assert_eq!(controller(docs)["spec"]["replicas"], 2);
                assert_eq!(api(docs)["spec"]["replicas"], 2);
                let pdbs: Vec<&Value> = docs
                    .iter()
                    .filter(|d| d["kind"] == "PodDisruptionBudget")
                    .collect();
                assert_eq!(pdbs.len(), 2);
                assert!(pdbs.iter().all(|p| p["apiVersion"] == "policy/v1"));
                let args = container_args(controller(docs));
                assert!(args.contains(&"--webhook-cert-mode=self-managed".to_string()));
                for kind in ["NetworkPolicy", "ServiceMonitor", "Certificate"] {
                    assert!(!kinds(docs).iter().any(|k| k == kind), "{kind} is opt-in");
                }
            },
        },
        Case {
            name: "no legacy idle monitor",
            sets: &[("api.legacyIdle.enabled", "false")],
            check: |docs| {
                let args = container_args(api(docs));
                assert!(args.contains(&"--no-legacy-idle".to_string()), "{args:?}");
                assert!(!args.iter().any(|a| a.starts_with("--idle-")), "{args:?}");
                assert!(
                    !docs.iter().any(|d| d["kind"] == "Role"
                        && d["metadata"]["name"] == "ss-streamspace-controller-api-idle-lease"),
                    "no Lease rights without the monitor"
                );
            },
        },
        Case {
            name: "cert-manager",
            sets: &[("certificates.mode", "certManager")],
            check: |docs| {
                let certificate =
                    find(docs, "Certificate", "ss-streamspace-controller-webhook-tls");
                assert_eq!(
                    certificate["spec"]["dnsNames"][0],
                    "ss-streamspace-controller-webhook.streamspace.svc"
                );
                find(docs, "Issuer", "ss-streamspace-controller-selfsigned");
                for kind in [
                    "ValidatingWebhookConfiguration",
                    "MutatingWebhookConfiguration",
                ] {
                    let config = find(docs, kind, "ss-streamspace-controller");
                    assert_eq!(
                        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                        "streamspace/ss-streamspace-controller-webhook-tls"
                    );
                }
                let args = container_args(controller(docs));
                assert!(args.contains(&"--webhook-cert-mode=files".to_string()));
                // The controller reads the mounted files: no Secret or webhook rights.
                let text = serde_json::to_string(docs).expect("json");
                assert!(!text.contains("validatingwebhookconfigurations"));
                let self_role = find(docs, "Role", "ss-streamspace-controller-controller-self");
                assert!(
                    !serde_json::to_string(self_role)
                        .expect("json")
                        .contains("secrets")
                );
            },
        },
        Case {
            name: "network-policy",
            sets: &[("networkPolicy.enabled", "true")],
            check: |docs| {
                let policy = find(
                    docs,
                    "NetworkPolicy",
                    "ss-streamspace-controller-controller",
                );
                let ports: Vec<&Value> = policy["spec"]["ingress"]
                    .as_array()
                    .expect("ingress")
                    .iter()
                    .map(|rule| &rule["ports"][0]["port"])
                    .collect();
                assert_eq!(ports, ["webhook", "hooks", "http"]);
                find(docs, "NetworkPolicy", "ss-streamspace-controller-api");
            },
        },
        Case {
            name: "service-monitor",
            sets: &[("serviceMonitor.enabled", "true")],
            check: |docs| {
                let monitor = find(docs, "ServiceMonitor", "ss-streamspace-controller");
                assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-metrics");
                assert_eq!(monitor["spec"]["endpoints"][1]["port"], "http");
            },
        },
        Case {
            name: "one-replica",
            sets: &[("controller.replicas", "1"), ("api.replicas", "1")],
            check: |docs| {
                assert_eq!(controller(docs)["spec"]["replicas"], 1);
                assert_eq!(api(docs)["spec"]["replicas"], 1);
                // A budget of one replica would block every node drain.
                assert!(!kinds(docs).iter().any(|k| k == "PodDisruptionBudget"));
            },
        },
        Case {
            name: "legacy-first",
            sets: &[("flags.defaultMode", "legacy")],
            check: |docs| {
                for deployment in [controller(docs), api(docs)] {
                    assert!(
                        container_args(deployment).contains(&"--flag-default-mode=legacy".into())
                    );
                }
            },
        },
        Case {
            name: "session-namespace",
            sets: &[
                ("sessions.namespace", "sessions"),
                ("sessions.createNamespace", "true"),
                ("gitops.secretNames[0]", "git-credentials"),
            ],
            check: |docs| {
                let namespace = find(docs, "Namespace", "sessions");
                assert_eq!(
                    namespace["metadata"]["annotations"]["helm.sh/resource-policy"],
                    "keep"
                );
                let role = find(docs, "Role", "ss-streamspace-controller-controller");
                assert_eq!(role["metadata"]["namespace"], "sessions");
                let secrets: Vec<&Value> = role["rules"]
                    .as_array()
                    .expect("rules")
                    .iter()
                    .filter(|r| r["resources"][0] == "secrets")
                    .collect();
                assert_eq!(secrets.len(), 1);
                assert_eq!(
                    secrets[0]["resourceNames"],
                    serde_json::json!(["git-credentials"])
                );
                assert_eq!(secrets[0]["verbs"], serde_json::json!(["get"]));
                assert!(
                    container_args(controller(docs))
                        .contains(&"--watch-namespace=sessions".to_string())
                );
                assert!(container_args(api(docs)).contains(&"--namespace=sessions".to_string()));
            },
        },
    ]
}

/// Runs kubernetes-validate (strict, Kubernetes 1.33) on rendered manifests; only the custom
/// kinds may lack a schema.
fn validate(rendered: &str, case: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{case}.yaml"));
    std::fs::write(&file, rendered).expect("write manifests");
    let output = Command::new(&tools().validate)
        .args(["--kubernetes-version", "1.33.0", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{case}: kubernetes-validate failed:\n{stdout}\n{stderr}"
    );
    for line in stdout.lines().chain(stderr.lines()) {
        let custom = CUSTOM_KINDS
            .iter()
            .any(|kind| line.contains(&format!("schema for kind {kind} ")));
        assert!(
            line.trim().is_empty() || custom,
            "{case}: unexpected kubernetes-validate output: {line}"
        );
    }
}

#[test]
fn chart_lints_renders_and_validates_for_every_option() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    for case in cases() {
        let sets = set_args(case.sets);
        let mut lint = vec!["lint", chart, "--strict", "--namespace", NAMESPACE];
        lint.extend(sets.iter().map(String::as_str));
        let run = helm(&lint, None);
        assert!(
            run.ok,
            "{}: helm lint: {}{}",
            case.name, run.stdout, run.stderr
        );
        let rendered = template(RELEASE, NAMESPACE, &sets);
        validate(&rendered, case.name);
        (case.check)(&documents(&rendered));
    }
}

#[test]
fn kubernetes_1_20_gets_v1beta1_budgets_and_a_label_selector() {
    let rendered = template(
        RELEASE,
        NAMESPACE,
        &["--kube-version".into(), "1.20.0".into()],
    );
    let docs = documents(&rendered);
    let pdbs: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .collect();
    assert_eq!(pdbs.len(), 2);
    assert!(pdbs.iter().all(|p| p["apiVersion"] == "policy/v1beta1"));
    let config = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "ss-streamspace-controller",
    );
    assert_eq!(
        config["webhooks"][0]["namespaceSelector"],
        serde_json::json!({"matchLabels": {"stream.space/sessions": "ss-streamspace-controller"}})
    );
    let modern = documents(&template(RELEASE, NAMESPACE, &[]));
    let config = find(
        &modern,
        "ValidatingWebhookConfiguration",
        "ss-streamspace-controller",
    );
    assert_eq!(
        config["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!([NAMESPACE])
    );
}

#[test]
fn bad_values_fail_with_the_schema_message() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--set", "controller.replicas=two"],
            "/controller/replicas",
        ),
        (&["--set-string", "api.replicas=2"], "/api/replicas"),
        (&["--set", "certificates.mode=vault"], "/certificates/mode"),
        (
            &["--set", "webhook.failurePolicy=Never"],
            "/webhook/failurePolicy",
        ),
        (&["--set", "controller.replicaz=2"], "replicaz"),
    ];
    for (sets, path) in cases {
        let mut args = vec!["template", "bad", chart];
        args.extend_from_slice(sets);
        let run = helm(&args, None);
        assert!(!run.ok, "{sets:?} was accepted");
        assert!(
            run.stderr
                .contains("values don't meet the specifications of the schema")
                && run.stderr.contains(path),
            "{sets:?}: unclear message: {}",
            run.stderr
        );
    }
    let run = helm(
        &["template", "bad", chart, "--set", "controller.replicas=two"],
        None,
    );
    assert!(
        run.stderr.contains("got string, want integer"),
        "{}",
        run.stderr
    );
}

fn security_context_is_hardened(deployment: &Value) {
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    let context = &container["securityContext"];
    assert_eq!(context["runAsUser"], 65532);
    assert_eq!(context["readOnlyRootFilesystem"], true);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(context["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    let spread = pod["topologySpreadConstraints"].as_array().expect("spread");
    assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname");
    assert!(
        pod["volumes"]
            .as_array()
            .is_some_and(|v| v.iter().all(|v| v["emptyDir"].is_object()))
    );
}

#[test]
fn default_deployments_are_hardened_and_follow_the_flag_contract() {
    let docs = documents(&template(RELEASE, NAMESPACE, &[]));
    for deployment in [controller(&docs), api(&docs)] {
        security_context_is_hardened(deployment);
    }
    let args = container_args(controller(&docs));
    for expected in [
        "controller",
        "--leader-elect",
        "--lease-name=ss-streamspace-controller-controller",
        "--lease-namespace=$(POD_NAMESPACE)",
        "--http-addr=0.0.0.0:8080",
        "--hooks-addr=0.0.0.0:8081",
        "--webhook-addr=0.0.0.0:8443",
        "--watch-namespace=streamspace",
        "--git-cache-dir=/var/cache/streamspace/git",
        "--validating-webhook-config=ss-streamspace-controller",
        "--webhook-secret=ss-streamspace-controller-webhook-tls",
    ] {
        assert!(
            args.contains(&expected.to_string()),
            "{expected} not in {args:?}"
        );
    }
    let mounts = &controller(&docs)["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .as_array()
            .expect("mounts")
            .iter()
            .any(|m| m["mountPath"] == "/var/cache/streamspace/git")
    );
    let env = &controller(&docs)["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["name"], "POD_NAMESPACE");
    assert_eq!(
        env["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let api_args = container_args(api(&docs));
    assert!(api_args.contains(&"--http-addr=0.0.0.0:8000".to_string()));
    assert!(api_args.contains(&"--auth=kubernetes".to_string()));
    // The legacy idle monitor: its Lease in the release namespace, and the rights to it.
    for expected in [
        "--idle-interval=1m",
        "--idle-grace=5m",
        "--idle-lease-name=ss-streamspace-controller-api-idle",
        &format!("--idle-lease-namespace={NAMESPACE}"),
    ] {
        assert!(
            api_args.contains(&expected.to_string()),
            "{expected} not in {api_args:?}"
        );
    }
    let lease_role = find(&docs, "Role", "ss-streamspace-controller-api-idle-lease");
    assert_eq!(
        lease_role["rules"][1]["resourceNames"][0],
        "ss-streamspace-controller-api-idle"
    );
    // Each audience gets its own Service and port.
    let port = |service: &str| find(&docs, "Service", service)["spec"]["ports"][0].clone();
    let webhook = port("ss-streamspace-controller-webhook");
    assert_eq!(
        (webhook["port"].clone(), webhook["targetPort"].clone()),
        (443.into(), "webhook".into())
    );
    assert_eq!(port("ss-streamspace-controller-hooks")["port"], 8081);
    assert_eq!(port("ss-streamspace-controller-controller")["port"], 8080);
    assert_eq!(port("ss-streamspace-controller-api")["port"], 80);
    let webhook_config = find(
        &docs,
        "ValidatingWebhookConfiguration",
        "ss-streamspace-controller",
    );
    let hook = &webhook_config["webhooks"][0];
    assert_eq!(hook["clientConfig"]["service"]["path"], "/validate-session");
    assert_eq!(hook["failurePolicy"], "Fail");
    let mutating = find(
        &docs,
        "MutatingWebhookConfiguration",
        "ss-streamspace-controller",
    );
    assert_eq!(
        mutating["webhooks"][0]["clientConfig"]["service"]["path"],
        "/mutate-session"
    );
}

/// Every rule of every Role and ClusterRole in the rendering.
fn rules(docs: &[Value]) -> Vec<(String, String, Value)> {
    docs.iter()
        .filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole")
        .flat_map(|d| {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            d["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |rule| (kind.clone(), name.clone(), rule))
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn rbac_has_no_wildcards_and_keeps_namespaced_work_in_roles() {
    let sets = set_args(&[
        ("sessions.namespace", "sessions"),
        ("gitops.secretNames[0]", "git"),
    ]);
    let docs = documents(&template(RELEASE, NAMESPACE, &sets));
    let namespaced_writes = [
        "deployments",
        "services",
        "ingresses",
        "persistentvolumeclaims",
    ];
    for (kind, name, rule) in rules(&docs) {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strings(&rule[field]).iter().any(|s| s.contains('*')),
                "{kind} {name}: {rule}"
            );
        }
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        let writes = verbs
            .iter()
            .any(|v| v != "get" && v != "list" && v != "watch");
        let user_role = name.ends_with("-operator") || name.ends_with("-admin");
        if kind == "ClusterRole" && !user_role {
            // The components' cluster-wide rights never write session objects or read Secrets
            // (the user roles are for people, bound by the operator).
            assert!(
                !(writes
                    && resources
                        .iter()
                        .any(|r| namespaced_writes.contains(&r.as_str()) || r == "sessions")),
                "{name} writes namespaced objects cluster-wide: {rule}"
            );
            assert!(!resources.iter().any(|r| r == "secrets"), "{name}: {rule}");
        }
        if resources.iter().any(|r| r == "secrets") {
            // Secrets: create (the webhook certificate) or named ones only.
            let named = rule["resourceNames"]
                .as_array()
                .is_some_and(|n| !n.is_empty());
            assert!(
                named || verbs == ["create"],
                "{name}: unrestricted Secret access {rule}"
            );
            assert!(
                !verbs.iter().any(|v| v == "list" || v == "watch"),
                "{name}: {rule}"
            );
        }
        if resources.iter().any(|r| r == "persistentvolumeclaims") {
            assert!(
                !verbs.iter().any(|v| v == "delete"),
                "home claims are never deleted: {rule}"
            );
        }
    }
    let api_role = find(&docs, "Role", "ss-streamspace-controller-api");
    assert_eq!(api_role["metadata"]["namespace"], "sessions");
}

#[test]
fn chart_user_roles_match_the_development_roles() {
    let docs = documents(&template(RELEASE, NAMESPACE, &[]));
    let development = documents(streamspace_controller::rbac::USER_ROLES_YAML);
    for (chart_name, dev_name) in [
        ("ss-streamspace-controller-operator", "streamspace-operator"),
        ("ss-streamspace-controller-admin", "streamspace-admin"),
    ] {
        let chart_role = find(&docs, "ClusterRole", chart_name);
        let dev_role = find(&development, "ClusterRole", dev_name);
        assert_eq!(chart_role["rules"], dev_role["rules"], "{chart_name}");
    }
}

#[test]
fn chart_metadata_and_image_follow_the_contract() {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml parses");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "streamspace-controller");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["appVersion"], env!("CARGO_PKG_VERSION"));
    assert_eq!(chart["kubeVersion"], ">=1.20.0-0");
    let dockerfile = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"),
    )
    .expect("Dockerfile");
    assert!(dockerfile.contains("USER 65532:65532"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/streamspace-controller\"]"));
    assert!(dockerfile.contains("cargo build --release --locked"));
    let docs = documents(&template(RELEASE, NAMESPACE, &[]));
    let image = controller(&docs)["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(
        image,
        format!(
            "ghcr.io/streamspace/streamspace-controller:{}",
            env!("CARGO_PKG_VERSION")
        )
    );
}

/// Dotted keys of the leaf values of `values.yaml`, each with whether a `# --` comment
/// describes it (the file's convention: two-space indentation, one value per line).
fn documented_values(text: &str) -> Vec<(String, bool)> {
    let mut path: Vec<String> = Vec::new();
    let mut described = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            described = false;
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            described |= comment.trim_start().starts_with("-- ");
            continue;
        }
        let Some((key, value)) = trimmed.split_once(':') else {
            continue;
        };
        path.truncate((line.len() - trimmed.len()) / 2);
        path.push(key.to_string());
        if !value.trim().is_empty() {
            out.push((path.join("."), described));
        }
        described = false;
    }
    out
}

#[test]
fn every_value_is_commented_and_in_the_deployment_guide() {
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml");
    let guide = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/DEPLOYMENT_GUIDE.md"),
    )
    .expect("deployment guide");
    let values = documented_values(&values);
    assert!(values.len() > 50, "{values:?}");
    for (key, described) in values {
        assert!(described, "values.yaml: {key} has no `# --` comment");
        assert!(
            guide.contains(&format!("| `{key}` |")),
            "docs/DEPLOYMENT_GUIDE.md: {key} is missing from the values table"
        );
    }
}

/// Top-level directories of the files the sources embed (`include_str!`/`include_bytes!`).
fn embedded_directories(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(dir).expect("source directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            embedded_directories(&path, out);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for part in text.split(macro_name).skip(1) {
                let relative = part.split('"').next().unwrap_or_default();
                let parent = path.parent().expect("parent");
                let target = parent.join(relative);
                let target = std::fs::canonicalize(&target)
                    .unwrap_or_else(|e| panic!("{}: {relative}: {e}", path.display()));
                let inside = target.strip_prefix(root).expect("inside the crate");
                if let Some(first) = inside.components().next() {
                    out.insert(first.as_os_str().to_string_lossy().into_owned());
                }
            }
        }
    }
}

#[test]
fn the_image_build_context_holds_every_embedded_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut directories = std::collections::BTreeSet::new();
    embedded_directories(&root.join("src"), &mut directories);
    assert!(directories.contains("scripts"), "{directories:?}");
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).expect(".dockerignore");
    for directory in directories {
        assert!(
            dockerfile.contains(&format!("COPY {directory}")),
            "Dockerfile does not copy {directory}/, which the sources embed"
        );
        assert!(
            !ignore
                .lines()
                .any(|l| l.trim_end_matches(['/', '*']) == directory),
            ".dockerignore leaves out {directory}/, which the sources embed"
        );
    }
}
