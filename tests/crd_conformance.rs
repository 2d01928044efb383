//! CRD conformance on both test beds.
//!
//! Kubernetes 1.20 (the main control plane): every CRD installs although it carries CEL rules
//! 1.20 does not know, every example is accepted, and each invalid object of the table is either
//! refused by the schema or stored and then refused by the webhook or controller as the table
//! says. A current API server (the standalone `apiextensions-apiserver`, see
//! `devcluster::CrdServer`): every CRD installs, every example is accepted, each invalid object
//! is refused with its CEL rule's message naming the field, and status conditions merge per
//! condition type under server-side apply.
//!
//! The modern-server tests are `#[ignore]`d in the plain `cargo test` run because they need the
//! CRD server build (several minutes, cached); `scripts/test.sh` runs them with `--ignored`.

mod crd_conformance {
    pub mod cases;
    pub mod examples;
}

use crd_conformance::cases::{self, Case, Legacy};
use crd_conformance::examples;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use serde_json::{Value, json};
use streamspace_controller::crd::{self, FeatureFlag, NodeOperation, QuotaPolicy, Session};
use streamspace_controller::devcluster::{
    ControlPlane, ControlPlaneOptions, CrdServer, CrdServerOptions,
};
use streamspace_controller::nodeop::edits::{self, NodeView};

/// Namespace of the namespaced objects (created on 1.20; the CRD server has no namespaces).
const NAMESPACE: &str = "crd-conformance";

/// Node the 1.20 test sends the controller's Node edits to (dry run).
const NODE: &str = "crd-conformance-node";

/// The API resource of one of our kinds.
fn resource(kind: &str) -> (ApiResource, bool) {
    let crd = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("{kind} is not one of our kinds"));
    let namespaced = crd.spec.scope == "Namespaced";
    let resource = match kind {
        "Session" => ApiResource::erase::<Session>(&()),
        "NodeOperation" => ApiResource::erase::<NodeOperation>(&()),
        "QuotaPolicy" => ApiResource::erase::<QuotaPolicy>(&()),
        "FeatureFlag" => ApiResource::erase::<FeatureFlag>(&()),
        _ => ApiResource {
            group: crd.spec.group.clone(),
            version: crd.spec.versions[0].name.clone(),
            api_version: format!("{}/{}", crd.spec.group, crd.spec.versions[0].name),
            kind: kind.to_string(),
            plural: crd.spec.names.plural.clone(),
        },
    };
    (resource, namespaced)
}

/// The API of `object`'s kind, namespaced into [`NAMESPACE`] when the kind is.
fn api_for(client: &Client, object: &mut Value) -> Api<DynamicObject> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let (resource, namespaced) = resource(&kind);
    if namespaced {
        object["metadata"]["namespace"] = json!(NAMESPACE);
        Api::namespaced_with(client.clone(), NAMESPACE, &resource)
    } else {
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.remove("namespace");
        }
        Api::all_with(client.clone(), &resource)
    }
}

/// Creates `object`; the API server's error as `Err((code, message))`.
async fn create(client: &Client, mut object: Value) -> Result<DynamicObject, (u16, String)> {
    let api = api_for(client, &mut object);
    let object: DynamicObject = serde_json::from_value(object).map_err(|e| (0, e.to_string()))?;
    api.create(&PostParams::default(), &object)
        .await
        .map_err(|e| match e {
            kube::Error::Api(status) => (status.code, status.message),
            other => (0, other.to_string()),
        })
}

/// Deletes `object` again (1.20 stores most invalid objects).
async fn delete(client: &Client, mut object: Value) {
    let api = api_for(client, &mut object);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let _ = api.delete(name, &DeleteParams::default()).await;
}

/// Every CRD applies and becomes Established.
async fn install_all(client: &Client) {
    crd::install::install(client, "crd-conformance")
        .await
        .expect("every CRD installs and is established");
}

/// Every example of our kinds is accepted (and removed again).
async fn accept_examples(client: &Client) {
    let documents = examples::all();
    assert!(
        documents.len() >= 10,
        "too few examples found: {}",
        documents.len()
    );
    for (file, document) in documents {
        let name = document["metadata"]["name"].clone();
        match create(client, document.clone()).await {
            Ok(_) => delete(client, document).await,
            Err((code, message)) => panic!("{file}: {name} refused ({code}): {message}"),
        }
    }
}

async fn modern_server() -> (CrdServer, Client) {
    let server = CrdServer::start(CrdServerOptions::default())
        .await
        .expect("the CRD server starts (run scripts/crd-server-binaries.sh)");
    eprintln!("CRD server built from:\n{}", server.versions());
    let client = server.client().await.expect("client");
    install_all(&client).await;
    (server, client)
}

#[tokio::test]
#[ignore = "needs the modern CRD server; scripts/test.sh runs it with --ignored"]
async fn modern_server_installs_every_crd_and_accepts_every_example() {
    let (server, client) = modern_server().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let stored = crds.get(&name).await.expect("CRD stored");
        let schema = serde_json::to_string(&stored.spec.versions[0].schema).unwrap_or_default();
        let generated = serde_json::to_string(&crd.spec.versions[0].schema).unwrap_or_default();
        assert_eq!(
            schema.contains("x-kubernetes-validations"),
            generated.contains("x-kubernetes-validations"),
            "{name}: the server kept the CEL rules"
        );
    }
    accept_examples(&client).await;
    server.stop().await;
}

#[tokio::test]
#[ignore = "needs the modern CRD server; scripts/test.sh runs it with --ignored"]
async fn modern_server_refuses_each_invalid_object_with_the_rule_message() {
    let (server, client) = modern_server().await;
    let mut failures = Vec::new();
    for case in cases::all() {
        match create(&client, case.object.clone()).await {
            Ok(_) => failures.push(format!("{}: accepted", case.name)),
            Err((code, message)) => {
                let named = message.contains(case.field) && message.contains(case.message);
                if code != 422 || !named {
                    failures.push(format!(
                        "{}: expected 422 naming {} with {:?}, got {code}: {message}",
                        case.name, case.field, case.message
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.stop().await;
}

/// Every CEL rule in the generated CRDs has a row whose message is the rule's.
#[test]
fn every_cel_rule_has_an_invalid_row() {
    let table = cases::all();
    let text = serde_json::to_string(&crd::all()).unwrap_or_default();
    let messages: Vec<String> = serde_json::from_str::<Value>(&text)
        .map(|v| collect_messages(&v))
        .unwrap_or_default();
    assert!(messages.len() >= 14, "rules found: {messages:?}");
    for message in messages {
        assert!(
            table.iter().any(|c| message.starts_with(c.message)),
            "no invalid row for the rule {message:?}"
        );
    }
}

fn collect_messages(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => {
            let mut found: Vec<String> = map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|rule| rule["message"].as_str().map(str::to_owned))
                .collect();
            found.extend(map.values().flat_map(collect_messages));
            found
        }
        Value::Array(items) => items.iter().flat_map(collect_messages).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
#[ignore = "needs the modern CRD server; scripts/test.sh runs it with --ignored"]
async fn modern_server_merges_conditions_of_two_field_managers() {
    let (server, client) = modern_server().await;
    let sessions: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let session = json!({"apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": "two-managers", "namespace": NAMESPACE},
        "spec": {"user": "alice", "template": "firefox"}});
    sessions
        .create(
            &PostParams::default(),
            &serde_json::from_value(session).expect("session"),
        )
        .await
        .expect("session created");
    let keep = write_conditions_as_two_managers(&sessions).await;
    assert_eq!(
        keep,
        ["Idle", "Ready"],
        "both managers' conditions are kept on a current server"
    );
    server.stop().await;
}

/// `session-controller` applies `Ready`, then `idle-controller` applies `Idle`, then the first
/// applies `Ready` again with a new status; returns the condition types stored, sorted.
async fn write_conditions_as_two_managers(sessions: &Api<Session>) -> Vec<String> {
    let condition = |type_: &str, status: &str| {
        json!({"apiVersion": "stream.space/v1alpha1", "kind": "Session",
            "status": {"conditions": [{"type": type_, "status": status, "reason": "Test",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    };
    let writes = [
        ("session-controller", condition("Ready", "True")),
        ("idle-controller", condition("Idle", "False")),
        ("session-controller", condition("Ready", "False")),
    ];
    for (manager, body) in writes {
        sessions
            .patch_status(
                "two-managers",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(body),
            )
            .await
            .unwrap_or_else(|e| panic!("{manager} applies its condition: {e}"));
    }
    let stored = sessions
        .get_status("two-managers")
        .await
        .expect("read back");
    let conditions = stored.status.unwrap_or_default().conditions;
    if let Some(ready) = conditions.iter().find(|c| c.type_ == "Ready") {
        assert_eq!(ready.status, "False", "the second Ready write won");
    }
    let mut types: Vec<String> = conditions.into_iter().map(|c| c.type_).collect();
    types.sort();
    types
}

/// Kubernetes 1.20: CRDs with CEL rules install, examples pass, the table's invalid objects are
/// refused where the table says, and conditions are one atomic list under server-side apply.
#[tokio::test]
async fn kubernetes_1_20_installs_the_crds_and_refuses_invalid_objects_where_the_table_says() {
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let client = plane.client().await.expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).expect("ns"),
        )
        .await
        .expect("namespace");
    // As `helm install` (or `kubectl create`) does it: with the CEL rules, which 1.20 drops.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::all() {
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{:?} with CEL rules is accepted by a plain create: {e}",
                    crd.metadata.name
                )
            });
    }
    // As the controller and the tests do it: server-side apply, without the rules on 1.20.
    install_all(&client).await;
    accept_examples(&client).await;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NODE}})).expect("node"),
        )
        .await
        .expect("node");
    let mut failures = Vec::new();
    for case in cases::all() {
        if let Err(problem) = check_on_1_20(&client, &nodes, &case).await {
            failures.push(format!(
                "{} [{}]: {problem}",
                case.name,
                case.legacy.describe()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    let sessions: Api<Session> = Api::namespaced(client.clone(), NAMESPACE);
    let session = json!({"apiVersion": "stream.space/v1alpha1", "kind": "Session",
        "metadata": {"name": "two-managers", "namespace": NAMESPACE},
        "spec": {"user": "alice", "template": "firefox"}});
    sessions
        .create(
            &PostParams::default(),
            &serde_json::from_value(session).expect("session"),
        )
        .await
        .expect("session created");
    let kept = write_conditions_as_two_managers(&sessions).await;
    assert_eq!(kept, ["Ready"], "1.20 replaces the whole conditions list");
    plane.stop().await;
}

/// One row on 1.20: refused by the schema, or stored and refused by the named component.
async fn check_on_1_20(client: &Client, nodes: &Api<Node>, case: &Case) -> Result<(), String> {
    let created = create(client, case.object.clone()).await;
    if let Legacy::Schema = case.legacy {
        return match created {
            // 1.20 reports list items without their index.
            Err((422, message)) if message.contains(&case.field.replace("[0]", "")) => Ok(()),
            Err((code, message)) => Err(format!("refused with {code}: {message}")),
            Ok(_) => Err("accepted, but the schema should refuse it".into()),
        };
    }
    let stored = created.map_err(|(code, message)| format!("refused ({code}): {message}"))?;
    let stored = serde_json::to_value(&stored).map_err(|e| e.to_string())?;
    delete(client, case.object.clone()).await;
    let refused = match &case.legacy {
        Legacy::Controller(check) | Legacy::Webhook(check) => check(&stored),
        Legacy::NodeUpdate => node_update_refusal(nodes, &stored).await,
        Legacy::Nobody(why) => {
            eprintln!("{}: not refused on 1.20: {why}", case.name);
            return Ok(());
        }
        Legacy::Schema => return Ok(()),
    };
    match refused {
        Some(message) => {
            eprintln!(
                "{}: refused on 1.20 by the {}: {message}",
                case.name,
                case.legacy.describe()
            );
            Ok(())
        }
        None => Err("stored and nothing refused it".into()),
    }
}

/// Sends the Node edit the controller derives from the stored operation (dry run); the API
/// server's refusal message.
async fn node_update_refusal(nodes: &Api<Node>, stored: &Value) -> Option<String> {
    let op: NodeOperation = serde_json::from_value(stored.clone()).ok()?;
    let node = nodes.get(NODE).await.ok()?;
    let edit = edits::node_edit(
        &NodeView::of(&node),
        op.spec.labels.as_ref(),
        op.spec.taints.as_ref(),
        false,
    );
    let params = PatchParams::default().dry_run();
    match nodes
        .patch(NODE, &params, &Patch::Merge(edit.merge_patch(None)))
        .await
    {
        Err(kube::Error::Api(status)) if status.code == 422 => Some(status.message),
        _ => None,
    }
}

/// The generated CRDs name what the table refers to (a typo in the table would otherwise pass).
#[test]
fn table_kinds_are_our_kinds() {
    for case in cases::all() {
        let kind = case.object["kind"].as_str().unwrap_or_default();
        assert!(
            [
                Session::crd(),
                NodeOperation::crd(),
                QuotaPolicy::crd(),
                FeatureFlag::crd()
            ]
            .iter()
            .any(|c| c.spec.names.kind == kind),
            "{}: {kind}",
            case.name
        );
    }
}
