//! Hostile commits and push-hook floods against a running controller: each is refused in
//! bounded time and memory, the controller keeps syncing, and the admission webhook served by
//! the same process keeps answering (its latency is printed, not asserted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::api::PostParams;
use serde_json::json;
use streamspace_controller::crd::Session;

use crate::admission::{Certs, WebhookEnv};
use crate::gitops::{
    Repo, create_gitsync, post, quota_policy, serve_hooks, sign, sync_status, wait_applied,
    webhook_secret,
};
use crate::gitops_security::wait_rejected;
use crate::support::{TestEnv, wait_for};

/// Peak and current resident memory of this process (the controller runs in it), in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Dry-run Session creates through the API server (which calls the admission webhook) until
/// `stop`; returns each latency.
fn probe_admission(
    w: &WebhookEnv,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Duration>> {
    let api = w.env.api::<Session>();
    tokio::spawn(async move {
        let session: Session = serde_json::from_value(json!({
            "apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "metadata": {"name": "probe"},
            "spec": {"user": "probe", "template": "none", "state": "hibernated"}
        }))
        .expect("session");
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let answered = api.create(&params, &session).await;
            assert!(answered.is_ok(), "admission answered: {answered:?}");
            latencies.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        latencies
    })
}

fn summary(latencies: &mut [Duration]) -> String {
    latencies.sort();
    let at = |q: f64| {
        let index = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(index).copied().unwrap_or_default()
    };
    format!(
        "{} calls, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

const BASE: &str = "apiVersion: stream.space/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: hostile}\nspec:\n  subject: {kind: Default}\n  limits: {maxSessions: 1}\n";

fn doubling_overlay(times: usize) -> String {
    let mut text = String::from(
        "target: {kind: QuotaPolicy, name: hostile}\npatch:\n  - {op: add, path: /metadata/annotations, value: {a: [xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx]}}\n",
    );
    for _ in 0..times {
        text.push_str(
            "  - {op: copy, from: /metadata/annotations/a, path: /metadata/annotations/a/-}\n",
        );
    }
    text
}

fn billion_laughs() -> String {
    let mut text = String::from(
        "apiVersion: stream.space/v1alpha1\nkind: QuotaPolicy\nmetadata: {name: laughs}\nspec:\n  subject: {kind: Default}\nlol0: &l0 \"lol\"\n",
    );
    for level in 1..10 {
        let refs = vec![format!("*l{}", level - 1); 10].join(", ");
        text.push_str(&format!("lol{level}: &l{level} [{refs}]\n"));
    }
    text
}

fn many_documents(files: usize, per_file: usize) -> Vec<(String, String)> {
    (0..files)
        .map(|f| {
            let docs: Vec<String> = (0..per_file)
                .map(|d| format!("apiVersion: stream.space/v1alpha1\nkind: QuotaPolicy\nmetadata: {{name: q-{f}-{d}}}\nspec: {{subject: {{kind: Default}}}}\n"))
                .collect();
            (format!("many/{f}.yaml"), docs.join("---\n"))
        })
        .collect()
}

#[tokio::test]
async fn gitops_limits_hostile_commits_are_rejected_and_the_webhook_keeps_answering() {
    let mut w = WebhookEnv::new("gitops-hostile", Certs::SelfManaged).await;
    w.env.start_controller().await;
    let env = &w.env;
    let repo = Repo::new();
    let harmless = "target: {kind: QuotaPolicy, name: hostile}\npatch:\n  - {op: test, path: /metadata/name, value: hostile}\n";
    let good = repo.commit(
        &[
            ("base.yaml", Some(BASE)),
            ("overlays/prod/p.yaml", Some(harmless)),
        ],
        "good",
    );
    create_gitsync(
        env,
        "hostile",
        json!({"url": repo.url(), "interval": "1s", "overlay": "prod"}),
    )
    .await;
    wait_applied(env, "hostile", &good).await;

    let stop = Arc::new(AtomicBool::new(false));
    let baseline = probe_admission(&w, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut before = baseline.await.expect("probe");
    println!("admission before the attacks: {}", summary(&mut before));
    let stop = Arc::new(AtomicBool::new(false));
    let during = probe_admission(&w, stop.clone());
    let (peak_before, _) = memory();

    let big = format!("# {}\n", "x".repeat(100 * 1024 * 1024));
    let many = many_documents(20, 500);
    let many_files: Vec<(&str, Option<&str>)> = many
        .iter()
        .map(|(path, text)| (path.as_str(), Some(text.as_str())))
        .collect();
    let laughs = billion_laughs();
    let bomb = doubling_overlay(40);
    type Files<'a> = Vec<(&'a str, Option<&'a str>)>;
    let attacks: Vec<(&str, Files, Files)> = vec![
        (
            "overlay doubling 40 times",
            vec![("overlays/prod/p.yaml", Some(bomb.as_str()))],
            vec![("overlays/prod/p.yaml", Some(harmless))],
        ),
        (
            "a 100 MB blob",
            vec![("big.yaml", Some(big.as_str()))],
            vec![("big.yaml", None)],
        ),
        (
            "10,000 documents",
            many_files.clone(),
            many_files.iter().map(|(p, _)| (*p, None)).collect(),
        ),
        (
            "billion laughs",
            vec![("laughs.yaml", Some(laughs.as_str()))],
            vec![("laughs.yaml", None)],
        ),
    ];
    for (what, files, undo) in attacks {
        let commit = repo.commit(&files, what);
        // Resident memory while the controller fetches, reads and rejects the commit (the
        // test's own copy of the attack is made before this starts).
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut highest = 0.0f64;
                while sampling.load(Ordering::Relaxed) {
                    highest = highest.max(memory().1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                highest
            })
        };
        let started = Instant::now();
        let status = wait_rejected(env, "hostile", &commit).await;
        let took = started.elapsed();
        sampling.store(false, Ordering::Relaxed);
        let highest = sampler.await.expect("sampler");
        let (peak, _) = memory();
        let reason = status
            .rejected
            .map(|r| format!("{}: {}", r.file, r.reason))
            .unwrap_or_default();
        println!(
            "{what}: rejected {took:?} after the commit; highest RSS meanwhile {highest:.0} MiB (process peak so far {peak:.0} MiB); {}",
            reason.chars().take(200).collect::<String>()
        );
        assert!(
            reason.contains("--gitsync-max") || reason.contains("YAML limits"),
            "{what}: {reason}"
        );
        assert_eq!(
            status.last_applied_commit.as_deref(),
            Some(good.as_str()),
            "{what}"
        );
        repo.commit(&undo, &format!("undo {what}"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut latencies = during.await.expect("probe");
    let (peak_after, _) = memory();
    println!("admission during the attacks: {}", summary(&mut latencies));
    println!("peak RSS of the process: {peak_before:.0} MiB before, {peak_after:.0} MiB after");

    // Still running and syncing.
    let fixed = repo.commit(&[("q.yaml", Some(&quota_policy("after", 2)))], "good again");
    wait_applied(env, "hostile", &fixed).await;
    w.cleanup().await;
}

/// `apiserver_request_total` for GETs of `resource`, summed over every label set.
async fn apiserver_gets(client: &kube::Client, resource: &str) -> f64 {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .expect("request");
    let text = client
        .request_text(request)
        .await
        .expect("apiserver metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains(&format!("resource=\"{resource}\"")) && l.contains("verb=\"GET\""))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn gitops_limits_unauthenticated_hooks_make_no_api_calls_and_replays_are_refused() {
    let env = TestEnv::new("gitops-hooks").await;
    let secret = b"flood-s3cret";
    webhook_secret(&env, std::str::from_utf8(secret).expect("utf8")).await;
    let (addr, server) = serve_hooks(&env).await;
    let repo = Repo::new();
    let first = repo.commit(&[("q.yaml", Some(&quota_policy("hooked", 1)))], "first");
    create_gitsync(
        &env,
        "hooked",
        json!({"url": repo.url(), "interval": "1h", "webhookSecretRef": {"name": "hook"}}),
    )
    .await;
    wait_applied(&env, "hooked", &first).await;

    let secrets_before = apiserver_gets(&env.client, "secrets").await;
    // The counter is read at all: the sync above read the webhook Secret once.
    assert!(
        secrets_before >= 1.0,
        "secrets GETs so far: {secrets_before}"
    );
    let ns = env.namespace.clone();
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let ns = ns.clone();
        workers.push(tokio::spawn(async move {
            let mut codes = std::collections::BTreeMap::<u16, usize>::new();
            for i in 0..2_500 {
                let body = format!("{{\"n\":{worker}{i}}}");
                let (path, headers) = match i % 4 {
                    0 => (
                        format!("/hooks/git/{ns}/hooked"),
                        vec![(
                            "X-Hub-Signature-256",
                            format!("sha256={}", sign(b"guess", body.as_bytes())),
                        )],
                    ),
                    1 => (
                        format!("/hooks/git/{ns}/missing-{i}"),
                        vec![("X-Gitlab-Token", "guess".to_string())],
                    ),
                    2 => (format!("/hooks/git/{ns}/BAD_NAME"), vec![]),
                    _ => (
                        format!("/hooks/git/other-{i}/hooked"),
                        vec![("X-Gitea-Signature", "00".to_string())],
                    ),
                };
                let code = post(addr, &path, &headers, body.as_bytes()).await;
                *codes.entry(code).or_default() += 1;
            }
            codes
        }));
    }
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for worker in workers {
        for (code, count) in worker.await.expect("worker") {
            *codes.entry(code).or_default() += count;
        }
    }
    let took = started.elapsed();
    let secrets = apiserver_gets(&env.client, "secrets").await - secrets_before;
    println!(
        "10,000 unauthenticated hook POSTs in {took:?}: {codes:?}; Secret GETs the API server served meanwhile (every client): {secrets}"
    );
    assert_eq!(codes.get(&401), Some(&10_000), "{codes:?}");
    // One lookup per request would be 10,000 of each; what is left is other tests' traffic.
    assert!(secrets < 500.0, "secrets GETs: {secrets}");
    assert_eq!(
        sync_status(&env, "hooked")
            .await
            .last_fetched_commit
            .as_deref(),
        Some(first.as_str())
    );

    // A genuine delivery is accepted once; the same delivery again is refused.
    let body = br#"{"ref":"refs/heads/main","after":"0123"}"#;
    let headers = [
        (
            "X-Hub-Signature-256",
            format!("sha256={}", sign(secret, body)),
        ),
        ("X-GitHub-Delivery", "delivery-1".to_string()),
    ];
    let path = format!("/hooks/git/{ns}/hooked");
    assert_eq!(post(addr, &path, &headers, body).await, 202);
    assert_eq!(
        post(addr, &path, &headers, body).await,
        409,
        "replay refused"
    );
    let second = repo.commit(&[("q.yaml", Some(&quota_policy("hooked", 2)))], "second");
    let later = br#"{"ref":"refs/heads/main","after":"4567"}"#;
    let fresh = [
        (
            "X-Hub-Signature-256",
            format!("sha256={}", sign(secret, later)),
        ),
        ("X-GitHub-Delivery", "delivery-2".to_string()),
    ];
    assert_eq!(post(addr, &path, &fresh, later).await, 202);
    wait_applied(&env, "hooked", &second).await;
    // The per-GitSync rate: a burst of distinct genuine deliveries ends in 429.
    let mut limited = false;
    for n in 0..20 {
        let body = format!("{{\"burst\":{n}}}");
        let headers = [(
            "X-Hub-Signature-256",
            format!("sha256={}", sign(secret, body.as_bytes())),
        )];
        if post(addr, &path, &headers, body.as_bytes()).await == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "a burst is rate limited");
    let accepted = wait_for(
        "the accepted metric",
        || async {
            env.controller
                .as_ref()
                .map(|c| c.metrics.encode())
                .unwrap_or_default()
        },
        |m| m.contains("reason=\"replayed\""),
    )
    .await;
    assert!(accepted.contains("reason=\"rate_limited\""));
    server.abort();
    env.cleanup().await;
}
