//! Taking over sessions the old StreamSpace controller built: adoption (make-before-break, the
//! shared Deployment of the old naming collision), fencing while the old controller's Lease is
//! renewed (and not with `--allow-legacy-controller`), adoption by the API's legacy handlers,
//! and `migrate preflight`'s plan.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use streamspace_controller::crd::{Session, SessionPhase, Template};
use streamspace_controller::migrate::preflight::{PreflightArgs, preflight};
use streamspace_controller::ownership::ResourceType;
use streamspace_controller::session::fence::{CONDITION_FENCED, FenceSettings, REASON_ACTIVE};

use crate::http_client::{API_TOKEN, Http, RunningApi, counter};
use crate::support::{TestEnv, wait_for, wait_object};

/// Field manager of the old controller (controller-runtime names it after its `/manager`
/// binary).
const OLD_MANAGER: &str = "manager";
const OLD_DOMAIN: &str = "streamspace.local";

fn template() -> serde_json::Value {
    json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Template",
        "metadata": {"name": "firefox"},
        "spec": {
            "displayName": "Firefox", "baseImage": "lscr.io/linuxserver/firefox:latest",
            "env": [{"name": "PUID", "value": "1000"}],
            "vnc": {"enabled": true, "port": 3000},
            "defaultResources": {"requests": {"cpu": "500m", "memory": "1Gi"}}
        }
    })
}

async fn create_session(env: &TestEnv, name: &str, user: &str) -> Session {
    env.create::<Session>(json!({
        "apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": name},
        "spec": {"user": user, "template": "firefox", "state": "running"}
    }))
    .await
}

/// The home claim exactly as the old controller creates it.
async fn old_home(env: &TestEnv, user: &str) -> PersistentVolumeClaim {
    env.create(json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": format!("home-{user}"),
            "labels": {"app": "streamspace-user-home", "user": user}},
        "spec": {"accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": "50Gi"}}}
    }))
    .await
}

/// The Deployment, Service and Ingress the old controller builds for `owner` (named after
/// user + template, selected by the full label set, owned by the Session).
async fn old_children(env: &TestEnv, owner: &Session) {
    let user = &owner.spec.user;
    let name = format!("ss-{user}-firefox");
    let labels = json!({"app": "streamspace-session", "user": user, "template": "firefox",
        "session": owner.name_any()});
    let owner_ref = json!([{"apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "name": owner.name_any(), "uid": owner.uid(), "controller": true,
        "blockOwnerDeletion": true}]);
    let metadata = json!({"name": name, "labels": labels, "ownerReferences": owner_ref});
    env.create::<Deployment>(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "session", "image": "lscr.io/linuxserver/firefox:latest",
                    "ports": [{"name": "vnc", "containerPort": 3000, "protocol": "TCP"}],
                    "env": [{"name": "PUID", "value": "1000"}],
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                    "volumeMounts": [{"name": "user-home", "mountPath": "/config"}]}],
                "volumes": [{"name": "user-home",
                    "persistentVolumeClaim": {"claimName": format!("home-{user}")}}]}}}
    }))
    .await;
    let mut service_meta = metadata.clone();
    service_meta["name"] = json!(format!("{name}-svc"));
    env.create::<Service>(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": service_meta,
        "spec": {"type": "ClusterIP", "selector": labels,
            "ports": [{"name": "vnc", "port": 3000}]}
    }))
    .await;
    // The old controller also sets the `kubernetes.io/ingress.class` annotation; this API
    // server refuses it together with the field, so only the field is set here.
    env.create::<Ingress>(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata,
        "spec": {"ingressClassName": "traefik", "rules": [{
            "host": format!("{}.{OLD_DOMAIN}", owner.name_any()),
            "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {"service": {
                "name": format!("{name}-svc"), "port": {"number": 3000}}}}]}}]}
    }))
    .await;
}

/// A running session `name` of `user` exactly as the old controller leaves it (Template, home
/// claim, children, status), its pod ready; returns the home claim.
async fn old_running_session(env: &TestEnv, user: &str, name: &str) -> PersistentVolumeClaim {
    env.create::<Template>(template()).await;
    let home = old_home(env, user).await;
    let session = create_session(env, name, user).await;
    old_children(env, &session).await;
    old_status(env, name, &format!("ss-{user}-firefox")).await;
    wait_for(
        "the old pod to run",
        || ready_pods(env),
        |pods| pods.get(name).is_some_and(|p| p.len() == 1),
    )
    .await;
    home
}

/// The status the old controller writes: Running at once, `podName` = the Deployment name.
async fn old_status(env: &TestEnv, session: &str, deployment: &str) {
    let params = PatchParams {
        field_manager: Some(OLD_MANAGER.into()),
        ..PatchParams::default()
    };
    env.api::<Session>()
        .patch_status(
            session,
            &params,
            &Patch::Merge(json!({"status": {"phase": "Running", "podName": deployment,
                "url": format!("https://{session}.{OLD_DOMAIN}")}})),
        )
        .await
        .expect("old status");
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Ready pods per `session` label.
async fn ready_pods(env: &TestEnv) -> BTreeMap<String, Vec<String>> {
    let pods = env
        .api::<Pod>()
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut by_session: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| ready(p)) {
        if let Some(session) = pod.labels().get("session") {
            by_session
                .entry(session.clone())
                .or_default()
                .push(pod.name_any());
        }
    }
    by_session
}

async fn event_notes(env: &TestEnv, object: &str, reason: &str) -> Vec<String> {
    env.api::<Event>()
        .list(&ListParams::default())
        .await
        .map(|list| {
            list.items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some(object))
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(|e| e.message.unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// Fencing reads the old controller's Lease in the test's namespace; writes of the old field
/// manager count for `writer_window`.
fn fence_settings(env: &TestEnv, writer_window: Duration) -> FenceSettings {
    FenceSettings {
        namespace: env.namespace.clone(),
        writer_window,
        ..FenceSettings::default()
    }
}

/// The session runs on a ready pod of its own Deployment and says so.
async fn converged(env: &TestEnv, name: &str) -> bool {
    let own_prefix = format!("ss-{name}-");
    let pods = ready_pods(env).await;
    let Some(pods) = pods.get(name) else {
        return false;
    };
    let session = env.api::<Session>().get(name).await.ok();
    let status = session.as_ref().and_then(|s| s.status.as_ref());
    pods.len() == 1
        && pods[0].starts_with(&own_prefix)
        && status.is_some_and(|s| {
            s.phase == Some(SessionPhase::Running)
                && s.pod_name.as_deref() == Some(pods[0].as_str())
                && s.url.as_deref() == Some(&format!("https://{name}.test.local"))
        })
}

async fn old_objects_left(env: &TestEnv, users: &[&str]) -> Vec<String> {
    let mut left = Vec::new();
    for user in users {
        let name = format!("ss-{user}-firefox");
        if env
            .api::<Deployment>()
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            left.push(format!("Deployment {name}"));
        }
        let svc = format!("{name}-svc");
        if env
            .api::<Service>()
            .get_opt(&svc)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            left.push(format!("Service {svc}"));
        }
        if env
            .api::<Ingress>()
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            left.push(format!("Ingress {name}"));
        }
    }
    // ReplicaSets of an old Deployment (`<old name>-<pod-template-hash>`); ours are named
    // `ss-<session>-<hash>` and start alike, so the owner decides.
    let sets = env.api::<ReplicaSet>().list(&ListParams::default()).await;
    for set in sets.map(|l| l.items).unwrap_or_default() {
        let old = set.owner_references().iter().any(|o| {
            o.kind == "Deployment" && users.iter().any(|u| o.name == format!("ss-{u}-firefox"))
        });
        if old {
            left.push(format!("ReplicaSet {}", set.name_any()));
        }
    }
    // Pods of an old Deployment: their ReplicaSet is `<old name>-<pod-template-hash>`.
    let pods = env.api::<Pod>().list(&ListParams::default()).await;
    for pod in pods.map(|l| l.items).unwrap_or_default() {
        let hash = pod
            .labels()
            .get("pod-template-hash")
            .cloned()
            .unwrap_or_default();
        let old = pod.owner_references().iter().any(|o| {
            users
                .iter()
                .any(|u| o.name == format!("ss-{u}-firefox-{hash}"))
        });
        if old {
            left.push(format!("Pod {}", pod.name_any()));
        }
    }
    left
}

/// What b's first pod may take beyond one pod start: the controller's caches loading and its
/// first reconcile, on a shared machine.
const B_SLACK: Duration = Duration::from_secs(8);

/// Session `name` of `user` runs on its own pod, the old objects are gone and one `Adopted`
/// Event says so.
async fn wait_adopted(env: &TestEnv, user: &str, name: &str) {
    let users = [user];
    wait_for(
        "the session to be adopted",
        || converged(env, name),
        |done| *done,
    )
    .await;
    wait_for(
        "the old objects to go",
        || old_objects_left(env, &users),
        Vec::is_empty,
    )
    .await;
    wait_for(
        "the Adopted event",
        || event_notes(env, name, "Adopted"),
        |notes| notes.len() == 1,
    )
    .await;
}

#[tokio::test]
async fn old_sessions_are_adopted_make_before_break() {
    let mut env = TestEnv::without_controller("adopt").await;
    env.create::<Template>(template()).await;
    let homes = [old_home(&env, "alice").await, old_home(&env, "bob").await];
    // a and b: one user and template, so the old controller gave them one Deployment (a's).
    let (a, b, c) = (
        "alice-firefox-0000000a",
        "alice-firefox-0000000b",
        "bob-firefox-0000000c",
    );
    let session_a = create_session(&env, a, "alice").await;
    create_session(&env, b, "alice").await;
    let session_c = create_session(&env, c, "bob").await;
    // How long a pod start takes on this machine now: the old Deployments' pods.
    let built = tokio::time::Instant::now();
    old_children(&env, &session_a).await;
    old_children(&env, &session_c).await;
    old_status(&env, a, "ss-alice-firefox").await;
    old_status(&env, b, "ss-alice-firefox").await;
    old_status(&env, c, "ss-bob-firefox").await;
    wait_for(
        "the old pods to run",
        || ready_pods(&env),
        |pods| {
            pods.get(a).is_some_and(|p| p.len() == 1) && pods.get(c).is_some_and(|p| p.len() == 1)
        },
    )
    .await;
    let pod_start = built.elapsed();

    let fence = fence_settings(&env, Duration::from_secs(2));
    let started = tokio::time::Instant::now();
    env.start_controller_with(|config| config.legacy_controller = fence)
        .await;

    // Sample until every session has converged, and a while after.
    let mut zero_ready: BTreeMap<&str, u32> = BTreeMap::new();
    // b never had a pod of its own (the shared one is a's): when its first one is ready.
    let mut b_first_ready = None;
    let mut after_convergence = 0;
    let deadline = tokio::time::Instant::now() + crate::support::WAIT;
    loop {
        let pods = ready_pods(&env).await;
        for session in [a, c] {
            if pods.get(session).is_none_or(Vec::is_empty) {
                *zero_ready.entry(session).or_default() += 1;
            }
        }
        let b_own = format!("ss-{b}-");
        if b_first_ready.is_none()
            && pods
                .get(b)
                .is_some_and(|p| p.iter().any(|pod| pod.starts_with(&b_own)))
        {
            b_first_ready = Some(started.elapsed());
        }
        let mut all = true;
        for session in [a, b, c] {
            all &= converged(&env, session).await;
        }
        let clean = old_objects_left(&env, &["alice", "bob"]).await.is_empty();
        if all && clean {
            for session in [a, b, c] {
                let count = pods.get(session).map_or(0, Vec::len);
                assert!(
                    count <= 1,
                    "{session} has {count} ready pods after convergence: {pods:?}"
                );
            }
            after_convergence += 1;
            if after_convergence >= 20 {
                break;
            }
        } else {
            assert_eq!(after_convergence, 0, "converged, then diverged: {pods:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not converged: {pods:?}; old objects left: {:?}",
            old_objects_left(&env, &["alice", "bob"]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The owners of old pods kept a ready pod throughout (make-before-break); b had none of its
    // own and got its first within one pod start of the controller's start (with room for the
    // controller's caches to load and the first reconcile): it did not wait for a's adoption.
    assert!(
        zero_ready.is_empty(),
        "sessions without a ready pod: {zero_ready:?}"
    );
    let b_waited = b_first_ready.unwrap_or_else(|| panic!("{b} never had a ready pod"));
    println!(
        "b's first own pod ready {b_waited:?} after the controller started; a pod start took {pod_start:?}"
    );
    assert!(
        b_waited <= pod_start + B_SLACK,
        "{b} waited {b_waited:?} for its first pod; a pod start takes {pod_start:?}"
    );
    // b answers through objects of its own, not the old shared ones.
    let child = format!("ss-{b}");
    let service = env.api::<Service>().get(&child).await.expect("b's service");
    assert!(service.owner_references().iter().any(|o| o.name == b));
    let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    assert_eq!(selector.get("session").map(String::as_str), Some(b));
    let ingress = env.api::<Ingress>().get(&child).await.expect("b's ingress");
    assert!(ingress.owner_references().iter().any(|o| o.name == b));
    let rules = ingress.spec.and_then(|s| s.rules).unwrap_or_default();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0].host.as_deref(),
        Some(format!("{b}.test.local").as_str())
    );
    let backend = rules[0]
        .http
        .as_ref()
        .and_then(|h| h.paths.first())
        .and_then(|p| p.backend.service.as_ref())
        .map(|s| s.name.clone());
    assert_eq!(backend.as_deref(), Some(child.as_str()));
    for (session, expected) in [(a, 1), (b, 0), (c, 1)] {
        let notes = event_notes(&env, session, "Adopted").await;
        assert_eq!(notes.len(), expected, "{session}: {notes:?}");
    }
    assert!(
        event_notes(&env, a, "Adopted").await[0].contains("Deployment ss-alice-firefox"),
        "the event names what was replaced"
    );
    assert_eq!(
        env.metric("streamspace_adoptions_total", "outcome=\"adopted\""),
        2.0
    );
    for home in &homes {
        let now = env
            .api::<PersistentVolumeClaim>()
            .get(&home.name_any())
            .await
            .expect("home claim stays");
        assert_eq!(now.uid(), home.uid());
        // Only the volume binder's `volumeName` may have been added.
        let (mut before, mut after) = (home.spec.clone(), now.spec.clone());
        for spec in [&mut before, &mut after].into_iter().flatten() {
            spec.volume_name = None;
        }
        assert_eq!(after, before);
        assert_eq!(now.labels(), home.labels());
        assert!(now.metadata.deletion_timestamp.is_none());
        assert!(now.owner_references().is_empty(), "never owned");
    }
    env.cleanup().await;
}

/// Renews the old controller's Lease in the test namespace every second until aborted; returns
/// once the Lease exists.
async fn renew_lease(env: &TestEnv) -> tokio::task::JoinHandle<()> {
    let leases = env.api::<Lease>();
    let renewer = tokio::spawn(async move {
        loop {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "streamspace.io"},
                "spec": {"holderIdentity": "streamspace-kubernetes-controller-1_abc",
                    "leaseDurationSeconds": 3,
                    "renewTime": MicroTime(Timestamp::now())}
            });
            let params = PatchParams::apply("manager").force();
            if let Err(error) = leases
                .patch("streamspace.io", &params, &Patch::Apply(lease))
                .await
            {
                eprintln!("renewing the lease: {error}");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    wait_object(&env.api::<Lease>(), "streamspace.io", "the lease", |_| true).await;
    renewer
}

#[tokio::test]
async fn a_renewed_old_lease_fences_sessions_until_it_expires() {
    let mut env = TestEnv::without_controller("fence").await;
    let name = "carol-firefox-0000000d";
    old_running_session(&env, "carol", name).await;
    let renewer = renew_lease(&env).await;

    let fence = fence_settings(&env, Duration::from_millis(500));
    env.start_controller_with(|config| config.legacy_controller = fence)
        .await;
    // Evidence the controller looked and refused: its condition and Event.
    let fenced = wait_object(&env.api::<Session>(), name, "the fence condition", |s| {
        s.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == CONDITION_FENCED && c.reason == REASON_ACTIVE)
        })
    })
    .await;
    let condition = fenced
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == CONDITION_FENCED))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        condition.contains("Lease") && condition.contains("streamspace.io"),
        "{condition}"
    );
    let notes = wait_for(
        "the LegacyControllerActive event",
        || event_notes(&env, name, REASON_ACTIVE),
        |notes| !notes.is_empty(),
    )
    .await;
    assert!(notes[0].contains("--allow-legacy-controller"), "{notes:?}");
    assert!(env.metric("streamspace_legacy_controller_active", "") >= 1.0);
    // Nothing was built or taken: no Deployment of ours, the old one and the old status stay.
    let child = format!("ss-{name}");
    assert!(
        env.api::<Deployment>()
            .get_opt(&child)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        env.api::<Service>()
            .get_opt(&child)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        env.api::<Deployment>()
            .get_opt("ss-carol-firefox")
            .await
            .expect("get")
            .is_some()
    );
    let status = fenced.status.clone().unwrap_or_default();
    assert_eq!(status.pod_name.as_deref(), Some("ss-carol-firefox"));
    assert_eq!(status.observed_generation, None, "never reconciled by us");

    // The old controller stops: its Lease is no longer renewed and expires.
    renewer.abort();
    let _ = renewer.await;
    wait_adopted(&env, "carol", name).await;
    let adopted = wait_object(
        &env.api::<Session>(),
        name,
        "the fence condition gone",
        |s| {
            s.status
                .as_ref()
                .is_some_and(|st| !st.conditions.iter().any(|c| c.type_ == CONDITION_FENCED))
        },
    )
    .await;
    assert_eq!(
        adopted.status.and_then(|s| s.phase),
        Some(SessionPhase::Running)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn preflight_lists_the_adoption_it_plans() {
    let env = TestEnv::without_controller("preflight").await;
    env.create::<Template>(template()).await;
    old_home(&env, "erin").await;
    let name = "erin-firefox-0000000e";
    let session = create_session(&env, name, "erin").await;
    old_children(&env, &session).await;
    old_status(&env, name, "ss-erin-firefox").await;
    let ns = env.namespace.clone();
    let expected = format!(
        "{ns}/{name} (user erin, template firefox, running): builds ss-{name}; \
         Deployment ss-erin-firefox: delete once the replacement pod is ready; \
         Service ss-erin-firefox-svc: delete once the replacement pod is ready; \
         Ingress ss-erin-firefox: delete once the replacement pod is ready"
    );

    let args = PreflightArgs {
        namespace: ns.clone(),
        legacy_controller_namespace: ns.clone(),
        legacy_controller_lease: "streamspace.io".into(),
    };
    let report = preflight(&env.client, &args).await.to_string();
    assert!(report.contains(&expected), "{report}");
    assert!(
        report.contains("ok   crds       sessions.stream.space: v1alpha1 (served, storage)"),
        "{report}"
    );
    assert!(report.contains("ok   old-ctrl   not active"), "{report}");
    // The old controller wrote the status a moment ago.
    assert!(
        report.contains(&format!(
            "warn sessions   {ns}/{name}: field manager \"manager\""
        )),
        "{report}"
    );
    assert!(
        report.contains("ok   rbac       sessions/status.stream.space in"),
        "{report}"
    );

    // The subcommand prints the same plan; the exit code says whether anything failed.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_streamspace-controller"))
        .args(["migrate", "preflight", "--namespace", &ns])
        .args(["--legacy-controller-namespace", &ns])
        .arg(format!(
            "--kubeconfig={}",
            crate::support::kubeconfig().display()
        ))
        .output()
        .await
        .expect("run migrate preflight");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&expected), "{stdout}");
    let failed = stdout.lines().any(|l| l.starts_with("FAIL"));
    assert_eq!(output.status.code(), Some(i32::from(failed)), "{stdout}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_allowed_old_controller_does_not_fence_adoption() {
    let mut env = TestEnv::without_controller("fence-allowed").await;
    let name = "frank-firefox-00000011";
    old_running_session(&env, "frank", name).await;
    let renewer = renew_lease(&env).await;

    // `--allow-legacy-controller`: the operator takes the responsibility.
    let fence = FenceSettings {
        allow: true,
        ..fence_settings(&env, Duration::from_millis(500))
    };
    env.start_controller_with(|config| config.legacy_controller = fence)
        .await;
    wait_adopted(&env, "frank", name).await;

    // All of that happened while the old controller's Lease was held and renewed.
    assert!(!renewer.is_finished(), "the renewer kept going");
    let lease = env
        .api::<Lease>()
        .get("streamspace.io")
        .await
        .expect("the lease");
    let renewed = lease
        .spec
        .and_then(|s| s.renew_time)
        .map(|t| t.0)
        .expect("renewed");
    let age = Timestamp::now().duration_since(renewed);
    assert!(
        age < k8s_openapi::jiff::SignedDuration::from_secs(3),
        "the lease is current (renewed {age:?} ago)"
    );
    // And nothing was fenced: no condition, no Event, no fenced reconcile.
    let adopted = env.api::<Session>().get(name).await.expect("session");
    let status = adopted.status.unwrap_or_default();
    assert!(
        !status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_FENCED),
        "{:?}",
        status.conditions
    );
    assert!(event_notes(&env, name, REASON_ACTIVE).await.is_empty());
    assert_eq!(env.metric("streamspace_fenced_reconciles_total", ""), 0.0);
    assert_eq!(
        env.metric("streamspace_adoptions_total", "outcome=\"adopted\""),
        1.0
    );
    renewer.abort();
    let _ = renewer.await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_legacy_api_adopts_an_old_session_it_acts_on() {
    let env = TestEnv::without_controller("adopt-legacy").await;
    let name = "dave-firefox-0000000f";
    let home = old_running_session(&env, "dave", name).await;
    let api = RunningApi::start_static(&env, |_| {}).await;
    crate::api_sessions::set_flag(&env, &api, ResourceType::Sessions, "legacy", 100).await;

    // Hibernating needs no desktop: the legacy handler deletes the old objects at once.
    let body = json!({"state": "hibernated"}).to_string();
    let (code, reply) = Http::connect(api.addr)
        .await
        .request(
            "PATCH",
            &format!("/api/v1/sessions/{name}"),
            Some(API_TOKEN),
            Some(&body),
        )
        .await;
    assert_eq!(code, 202, "{reply}");
    wait_for(
        "the old objects to go",
        || old_objects_left(&env, &["dave"]),
        Vec::is_empty,
    )
    .await;
    let notes = wait_for(
        "the Adopted event",
        || event_notes(&env, name, "Adopted"),
        |notes| !notes.is_empty(),
    )
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("Deployment ss-dave-firefox"), "{notes:?}");
    assert_eq!(
        counter(
            &api.metrics,
            "streamspace_adoptions_total",
            "outcome=\"adopted\""
        ),
        1
    );
    wait_object(&env.api::<Session>(), name, "hibernated", |s| {
        s.status.as_ref().and_then(|st| st.phase.clone()) == Some(SessionPhase::Hibernated)
    })
    .await;
    let now = env
        .api::<PersistentVolumeClaim>()
        .get(&home.name_any())
        .await
        .expect("home claim stays");
    assert_eq!(now.uid(), home.uid());

    drop(api);
    crate::api_sessions::delete_flags(&env).await;
    env.cleanup().await;
}
