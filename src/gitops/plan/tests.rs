use super::super::manifest::{NodeTarget, Origin, Taint};
use super::*;

const ID: &str = "ns/sync";

fn config(name: &str, target: NodeTarget, labels: &[(&str, &str)], taints: &[&str]) -> NodeConfig {
    NodeConfig {
        name: name.into(),
        origin: Origin {
            file: "f.yaml".into(),
            line: 1,
        },
        target,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        taints: taints.iter().map(|t| parse_taint(t)).collect(),
    }
}

/// `key=value:Effect` or `key:Effect`.
fn parse_taint(text: &str) -> Taint {
    let (kv, effect) = text.split_once(':').unwrap_or((text, "NoSchedule"));
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    Taint {
        key: key.into(),
        value,
        effect: effect.into(),
    }
}

fn kt(text: &str) -> KubeTaint {
    kube_taint(&parse_taint(text))
}

fn node(name: &str, labels: &[(&str, &str)], taints: &[&str], owned: Option<Owned>) -> LiveNode {
    let annotations = owned.map(|o| {
        BTreeMap::from([(
            INVENTORY_ANNOTATION.to_string(),
            serde_json::to_string(&BTreeMap::from([(ID.to_string(), o)])).unwrap_or_default(),
        )])
    });
    LiveNode {
        name: name.into(),
        resource_version: Some("7".into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        annotations,
        taints: Some(taints.iter().map(|t| kt(t)).collect()),
    }
}

fn owned(labels: &[&str], taints: &[&str]) -> Option<Owned> {
    Some(Owned {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        taints: taints.iter().map(|s| s.to_string()).collect(),
    })
}

fn by_name(name: &str) -> NodeTarget {
    NodeTarget::Name(name.into())
}

/// Row: configs, node, prune -> rendered diff of the plan.
#[test]
fn table_of_plans() {
    let zone = [("example.com/zone", "a")];
    let cases: Vec<(&str, Vec<NodeConfig>, LiveNode, bool, &str)> = vec![
        (
            "new label and taint are added, inventory written",
            vec![config("c", by_name("n"), &zone, &["gpu=true:NoSchedule"])],
            node(
                "n",
                &[("other", "x")],
                &["node.kubernetes.io/unreachable:NoExecute"],
                None,
            ),
            true,
            "node/n\n  + label example.com/zone=a\n  + taint gpu:NoSchedule\n",
        ),
        (
            "steady state: no change at all",
            vec![config("c", by_name("n"), &zone, &["gpu=true:NoSchedule"])],
            node(
                "n",
                &zone,
                &[
                    "node.kubernetes.io/unreachable:NoExecute",
                    "gpu=true:NoSchedule",
                ],
                owned(&["example.com/zone"], &["gpu:NoSchedule"]),
            ),
            true,
            "no changes\n",
        ),
        (
            "a changed value is restored (drift)",
            vec![config("c", by_name("n"), &zone, &[])],
            node(
                "n",
                &[("example.com/zone", "b")],
                &[],
                owned(&["example.com/zone"], &[]),
            ),
            true,
            "node/n\n  ~ label example.com/zone=b -> a\n",
        ),
        (
            "a label we applied and no longer declare is removed; foreign same-prefix stays",
            vec![config("c", by_name("n"), &[], &[])],
            node(
                "n",
                &[("example.com/zone", "a"), ("example.com/owner", "ops")],
                &[],
                owned(&["example.com/zone"], &[]),
            ),
            true,
            "node/n\n  - label example.com/zone=a\n",
        ),
        (
            "without prune nothing is removed, only the inventory forgets it",
            vec![config("c", by_name("n"), &[], &[])],
            node(
                "n",
                &[("example.com/zone", "a")],
                &[],
                owned(&["example.com/zone"], &[]),
            ),
            false,
            "node/n\n",
        ),
        (
            "a label we never applied is never removed",
            vec![config("c", by_name("n"), &[], &[])],
            node("n", &[("example.com/zone", "a")], &[], None),
            true,
            "no changes\n",
        ),
        (
            "our taint is removed, foreign taints keep their place",
            vec![config("c", by_name("n"), &zone, &[])],
            node(
                "n",
                &zone,
                &[
                    "a:NoSchedule",
                    "gpu=true:NoSchedule",
                    "node.kubernetes.io/not-ready:NoExecute",
                ],
                owned(&["example.com/zone"], &["gpu:NoSchedule"]),
            ),
            true,
            "node/n\n  - taint gpu:NoSchedule\n",
        ),
        (
            "a foreign taint with our key but another effect is not ours",
            vec![config("c", by_name("n"), &[], &["gpu=true:NoSchedule"])],
            node("n", &[], &["gpu=true:NoExecute"], None),
            true,
            "node/n\n  + taint gpu:NoSchedule\n",
        ),
        (
            "a taint value change replaces it in place",
            vec![config("c", by_name("n"), &[], &["gpu=false:NoSchedule"])],
            node(
                "n",
                &[],
                &["gpu=true:NoSchedule"],
                owned(&[], &["gpu:NoSchedule"]),
            ),
            true,
            "node/n\n  + taint gpu:NoSchedule\n",
        ),
        (
            "a node no config matches any more loses what we applied",
            vec![config("c", by_name("other"), &zone, &[])],
            node(
                "n",
                &zone,
                &["gpu:NoSchedule"],
                owned(&["example.com/zone"], &["gpu:NoSchedule"]),
            ),
            true,
            "node/n\n  - label example.com/zone=a\n  - taint gpu:NoSchedule\nNodeConfig c matches no node\n",
        ),
        (
            "selectors match on live labels, several configs merge",
            vec![
                config(
                    "sel",
                    NodeTarget::Selector(BTreeMap::from([("pool".into(), "gpu".into())])),
                    &[("a", "1")],
                    &[],
                ),
                config("name", by_name("n"), &[("b", "2")], &[]),
            ],
            node("n", &[("pool", "gpu")], &[], None),
            true,
            "node/n\n  + label a=1\n  + label b=2\n",
        ),
        (
            "a selector matching nothing is reported",
            vec![config(
                "sel",
                NodeTarget::Selector(BTreeMap::from([("pool".into(), "tpu".into())])),
                &[("a", "1")],
                &[],
            )],
            node("n", &[("pool", "gpu")], &[], None),
            true,
            "NodeConfig sel matches no node\nno changes\n",
        ),
    ];
    for (what, configs, live, prune, expected) in cases {
        let plan = plan(ID, &configs, std::slice::from_ref(&live), &None, prune).expect(what);
        assert_eq!(render(&plan), expected, "{what}");
    }
}

#[test]
fn the_patch_tests_the_version_and_keeps_foreign_taints() {
    let configs = [config(
        "c",
        by_name("n"),
        &[("zone", "a")],
        &["gpu:NoSchedule"],
    )];
    let live = LiveNode {
        name: "n".into(),
        resource_version: Some("42".into()),
        labels: None,
        annotations: None,
        taints: Some(vec![kt("node.kubernetes.io/unreachable:NoExecute")]),
    };
    let plan = plan(ID, &configs, std::slice::from_ref(&live), &None, true).expect("plan");
    let patch = json_patch(&plan.changes[0], &live);
    assert_eq!(
        patch,
        json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
            {"op": "add", "path": "/metadata/labels", "value": {}},
            {"op": "add", "path": "/metadata/labels/zone", "value": "a"},
            {"op": "add", "path": "/spec/taints", "value": [
                {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
                {"key": "gpu", "effect": "NoSchedule"}
            ]},
            {"op": "add", "path": "/metadata/annotations", "value": {}},
            {"op": "add", "path": "/metadata/annotations/stream.space~1gitops-inventory",
             "value": "{\"ns/sync\":{\"labels\":[\"zone\"],\"taints\":[\"gpu:NoSchedule\"]}}"}
        ])
    );
}

#[test]
fn the_inventory_of_other_syncs_is_kept() {
    let mut live = node("n", &[("zone", "a")], &[], None);
    live.annotations = Some(BTreeMap::from([(
        INVENTORY_ANNOTATION.to_string(),
        r#"{"other/sync":{"labels":["team"]},"ns/sync":{"labels":["zone"]}}"#.to_string(),
    )]));
    let plan = plan(ID, &[], std::slice::from_ref(&live), &None, true).expect("plan");
    assert_eq!(
        plan.changes[0].inventory,
        Some(Some(r#"{"other/sync":{"labels":["team"]}}"#.to_string()))
    );
    assert_eq!(plan.changes[0].labels[0].new, None);
}

#[test]
fn keys_set_by_someone_else_are_never_adopted_nor_pruned() {
    let hostname = [("kubernetes.io/hostname", "n"), ("team", "ops")];
    let configs = [config(
        "c",
        by_name("n"),
        &[("team", "gitops")],
        &["node-role.kubernetes.io/control-plane:NoSchedule"],
    )];
    let live = node(
        "n",
        &hostname,
        &["node-role.kubernetes.io/control-plane:NoSchedule"],
        None,
    );
    let record = Some(BTreeMap::new());
    let first = plan(ID, &configs, std::slice::from_ref(&live), &record, true).expect("plan");
    assert_eq!(render(&first), "node/n\n  ~ label team=ops -> gitops\n");
    assert!(first.managed.is_empty(), "{:?}", first.managed);
    assert_eq!(first.changes[0].inventory, None);
    // Git drops them: nothing is removed.
    let dropped = plan(ID, &[], std::slice::from_ref(&live), &record, true).expect("plan");
    assert_eq!(render(&dropped), "no changes\n");
}

#[test]
fn a_forged_inventory_entry_does_not_make_a_prune_remove_foreign_keys() {
    let forged = owned(
        &["zone", "team"],
        &["dedicated:NoSchedule", "gpu:NoSchedule"],
    );
    let live = node(
        "n",
        &[("zone", "a"), ("team", "ops")],
        &["dedicated:NoSchedule", "gpu:NoSchedule"],
        forged,
    );
    let ours = owned(&["zone"], &["gpu:NoSchedule"]).unwrap_or_default();
    let record = Some(BTreeMap::from([("n".to_string(), ours)]));
    let plan = plan(ID, &[], std::slice::from_ref(&live), &record, true).expect("plan");
    assert_eq!(
        render(&plan),
        "node/n\n  - label zone=a\n  - taint gpu:NoSchedule\n"
    );
    // With no record of the node at all, nothing is believed.
    let none = plan_without_record(&live);
    assert_eq!(render(&none), "node/n\n");
}

fn plan_without_record(live: &LiveNode) -> Plan {
    plan(
        ID,
        &[],
        std::slice::from_ref(live),
        &Some(BTreeMap::new()),
        true,
    )
    .expect("plan")
}

#[test]
fn conflicting_values_are_an_error() {
    let configs = [
        config("a", by_name("n"), &[("zone", "a")], &[]),
        config("b", by_name("n"), &[("zone", "b")], &[]),
    ];
    let error =
        plan(ID, &configs, &[node("n", &[], &[], None)], &None, true).expect_err("conflict");
    assert_eq!(error.metric_label(), "conflict");
    assert!(error.to_string().contains("label zone"), "{error}");
}

fn object(kind: ObjectKind, name: &str, labels: &[(&str, &str)], spec: Value) -> ManagedObject {
    ManagedObject {
        kind,
        name: name.into(),
        origin: Origin {
            file: "q.yaml".into(),
            line: 1,
        },
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        spec,
    }
}

const OWNER: &str = "ns.sync";

/// A live object owned by this sync (`OWNER`) unless `labels` names another owner.
fn live_object(kind: ObjectKind, name: &str, labels: &[(&str, &str)], spec: Value) -> LiveObject {
    let mut labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels
        .entry(OWNER_LABEL.to_string())
        .or_insert_with(|| OWNER.to_string());
    LiveObject {
        kind,
        name: name.into(),
        labels,
        spec,
    }
}

/// Row: desired objects, live owned objects, prune -> rendered plan.
#[test]
fn table_of_object_plans() {
    use ObjectKind::{NodeOperation as Op, QuotaPolicy as Qp};
    let limits = |n: i64| json!({"subject": {"kind": "Default"}, "limits": {"maxSessions": n}});
    let cordon = json!({"nodeName": "n1", "cordon": true});
    type Row = (
        &'static str,
        Vec<ManagedObject>,
        Vec<LiveObject>,
        bool,
        &'static str,
    );
    let cases: Vec<Row> = vec![
        (
            "a new QuotaPolicy and NodeOperation are created",
            vec![
                object(Qp, "default", &[], limits(3)),
                object(Op, "maint", &[], cordon.clone()),
            ],
            vec![],
            true,
            "+ QuotaPolicy/default\n+ NodeOperation/maint\n",
        ),
        (
            "steady state",
            vec![object(Qp, "default", &[("team", "a")], limits(3))],
            vec![live_object(
                Qp,
                "default",
                &[("team", "a"), ("stream.space/gitsync", "ns.sync")],
                limits(3),
            )],
            true,
            "no changes\n",
        ),
        (
            "a changed limit is an update naming the field",
            vec![object(Qp, "default", &[], limits(5))],
            vec![live_object(Qp, "default", &[], limits(3))],
            true,
            "~ QuotaPolicy/default\n  ~ spec.limits.maxSessions: 3 -> 5\n",
        ),
        (
            "a field added by hand is reverted",
            vec![object(Op, "maint", &[], cordon.clone())],
            vec![live_object(
                Op,
                "maint",
                &[],
                json!({"nodeName": "n1", "cordon": true, "drain": {"force": true}}),
            )],
            true,
            "~ NodeOperation/maint\n  ~ spec.drain: {\"force\":true} -> (none)\n",
        ),
        (
            "a declared label that changed is restored",
            vec![object(Op, "maint", &[("a", "1")], cordon.clone())],
            vec![live_object(Op, "maint", &[("a", "2")], cordon.clone())],
            true,
            "~ NodeOperation/maint\n  ~ label a: 2 -> 1\n",
        ),
        (
            "an owned object no longer declared is deleted when pruning",
            vec![],
            vec![
                live_object(Qp, "old", &[], limits(1)),
                live_object(Op, "maint", &[], cordon.clone()),
            ],
            true,
            "- QuotaPolicy/old\n- NodeOperation/maint\n",
        ),
        (
            "another sync's object is never pruned",
            vec![],
            vec![live_object(
                Qp,
                "theirs",
                &[(OWNER_LABEL, "ns.other")],
                limits(1),
            )],
            true,
            "no changes\n",
        ),
        (
            "and kept when not",
            vec![],
            vec![live_object(Qp, "old", &[], limits(1))],
            false,
            "no changes\n",
        ),
        (
            "same name, other kind: one is created, the other deleted",
            vec![object(Qp, "x", &[], limits(1))],
            vec![live_object(Op, "x", &[], cordon.clone())],
            true,
            "+ QuotaPolicy/x\n- NodeOperation/x\n",
        ),
    ];
    for (what, desired, live, prune, expected) in cases {
        let plan = Plan {
            objects: plan_objects(&desired, &live, OWNER, prune).expect("no conflict"),
            ..Plan::default()
        };
        assert_eq!(render(&plan), expected, "{what}");
    }
}

#[test]
fn declaring_an_object_another_sync_owns_is_an_error() {
    let spec = json!({"nodeName": "n1", "cordon": true});
    let desired = [object(
        ObjectKind::NodeOperation,
        "maint",
        &[],
        spec.clone(),
    )];
    let live = [live_object(
        ObjectKind::NodeOperation,
        "maint",
        &[(OWNER_LABEL, "team.other")],
        spec,
    )];
    let error = plan_objects(&desired, &live, OWNER, true).expect_err("owned elsewhere");
    assert_eq!(error.metric_label(), "owned_elsewhere");
    assert_eq!(
        error.to_string(),
        "NodeOperation/maint is owned by GitSync team.other (label stream.space/gitsync)"
    );
}
