//! The repository format: YAML files holding documents (several per file, separated by `---`),
//! each validated against the JSON Schema of its kind, then turned into typed documents.
//!
//! Data model: a [`SourceFile`] is a path (relative to the repository root) and its text, read
//! either from a directory (`validate`, `plan`) or from the tree of one commit (the sync).
//! [`load`] reads every `*.yaml`/`*.yml` below the sync path except `overlays/`, applies the
//! chosen overlay (`overlay`), validates and returns the [`Desired`] state, or every problem
//! found with its file and line (`documents` holds the reading, under the commit limits).
//! [`super::model`] holds the types, [`super::parse`] the validation of one document (adding a
//! kind is one arm in its `parse_document` plus a schema).

pub use super::documents::{Rules, read_dir};
pub use super::model::*;
pub use super::parse::split_documents;

/// Loads every document below `base` (a directory relative to the repository root, empty for
/// the root), applies `overlay` and validates the result, under the default [`Rules`].
pub fn load(
    files: &[SourceFile],
    base: &str,
    overlay: Option<&str>,
) -> Result<Desired, Vec<ManifestError>> {
    super::documents::load(files, base, overlay, &Rules::default())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    pub(crate) fn file(path: &str, content: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            content: content.into(),
        }
    }

    const GOOD: &str = "\
# yaml-language-server: $schema=../manifests-schema/nodeconfig.schema.json
apiVersion: stream.space/v1alpha1
kind: NodeConfig
metadata:
  name: gpu
spec:
  nodeSelector:
    matchLabels: {pool: gpu}
  labels:
    example.com/tier: gold
  taints:
    - {key: gpu, value: \"true\", effect: NoSchedule}
---
apiVersion: stream.space/v1alpha1
kind: NodeConfig
metadata:
  name: one
spec:
  nodeName: node-1
  labels: {zone: a}
";

    #[test]
    fn several_documents_per_file_with_their_lines() {
        let desired = load(&[file("nodes.yaml", GOOD)], "", None).expect("valid");
        assert_eq!(desired.node_configs.len(), 2);
        let gpu = &desired.node_configs[0];
        assert_eq!(gpu.name, "gpu");
        assert_eq!(gpu.origin.line, 2);
        assert_eq!(
            gpu.target,
            NodeTarget::Selector(BTreeMap::from([("pool".into(), "gpu".into())]))
        );
        assert_eq!(gpu.taints[0].id(), "gpu:NoSchedule");
        assert_eq!(desired.node_configs[1].origin.line, 14);
        assert_eq!(
            desired.node_configs[1].target,
            NodeTarget::Name("node-1".into())
        );
    }

    #[test]
    fn table_of_rejected_documents() {
        let header = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x}\n";
        let cases = [
            ("a: [unclosed\n".to_string(), "yaml"),
            ("- just\n- a list\n".to_string(), "not_a_document"),
            (
                "apiVersion: v1\nkind: NodeConfig\nmetadata: {name: x}\nspec: {}\n".into(),
                "api_version",
            ),
            (
                "apiVersion: stream.space/v1alpha1\nkind: Mystery\nmetadata: {name: x}\n".into(),
                "unknown_kind",
            ),
            (format!("{header}spec: {{labels: {{a: b}}}}\n"), "schema"),
            (
                format!(
                    "{header}spec: {{nodeName: node-a, nodeSelector: {{matchLabels: {{a: b}}}}}}\n"
                ),
                "schema",
            ),
            (
                format!("{header}spec: {{nodeName: node-a, labels: {{a: 3}}}}\n"),
                "schema",
            ),
            (
                format!("{header}spec: {{nodeName: node-a, labels: {{\"bad key!\": v}}}}\n"),
                "schema",
            ),
            (
                format!(
                    "{header}spec: {{nodeName: node-a, taints: [{{key: k, effect: Sometimes}}]}}\n"
                ),
                "schema",
            ),
            (
                format!(
                    "{header}spec: {{nodeName: node-a, taints: [{{key: k, effect: NoSchedule}}, {{key: k, value: v, effect: NoSchedule}}]}}\n"
                ),
                "schema",
            ),
            (
                format!("{header}spec: {{nodeName: node-a, colour: red}}\n"),
                "schema",
            ),
            (
                format!(
                    "{header}spec: {{nodeName: node-a}}\n---\n{header}spec: {{nodeName: node-b}}\n"
                ),
                "duplicate",
            ),
        ];
        for (content, label) in cases {
            let errors = load(&[file("bad.yaml", &content)], "", None)
                .expect_err(&format!("rejects {content}"));
            assert_eq!(errors[0].metric_label(), label, "{content}: {errors:?}");
            assert!(
                errors[0].to_string().starts_with("bad.yaml:"),
                "{}",
                errors[0]
            );
        }
    }

    #[test]
    fn schema_errors_name_the_field() {
        let content = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x}\nspec:\n  nodeName: node-a\n  labels: {zone: 3}\n";
        let errors = load(&[file("dir/bad.yaml", content)], "dir", None).expect_err("invalid");
        assert_eq!(
            errors[0].to_string(),
            "dir/bad.yaml:1: NodeConfig \"x\" is invalid: /spec/labels/zone: expected string, found number"
        );
    }

    #[test]
    fn only_files_below_the_path_count_and_overlays_are_not_documents() {
        let other = "kind: Whatever\n";
        let files = [
            file("clusters/prod/nodes.yaml", GOOD),
            file("clusters/prod/README.md", other),
            file("clusters/prod/overlays/x/p.yaml", other),
            file("elsewhere/nodes.yaml", other),
        ];
        let desired = load(&files, "clusters/prod", None).expect("valid");
        assert_eq!(desired.node_configs.len(), 2);
    }

    #[test]
    fn every_problem_of_a_file_is_reported() {
        let content = "apiVersion: stream.space/v1alpha1\nkind: NodeConfig\nmetadata: {name: x}\nspec: {nodeName: node-a, labels: {zone: 3}}\n---\nkind: Foo\n";
        let errors = load(&[file("bad.yaml", content)], "", None).expect_err("invalid");
        let labels: Vec<&str> = errors.iter().map(ManifestError::metric_label).collect();
        assert_eq!(labels, ["not_a_document", "schema"]);
    }

    #[test]
    fn a_path_without_files_is_rejected_but_an_empty_file_is_not() {
        let errors =
            load(&[file("other/a.yaml", GOOD)], "clusters/prod", None).expect_err("wrong path");
        assert_eq!(errors[0].metric_label(), "no_files");
        let empty = load(
            &[file("clusters/prod/a.yaml", "# nothing yet\n")],
            "clusters/prod",
            None,
        )
        .expect("an empty file is a valid, empty repository");
        assert!(empty.node_configs.is_empty());
    }

    #[test]
    fn quota_policies_and_node_operations_are_objects_with_defaults_filled_in() {
        let content = "\
apiVersion: stream.space/v1alpha1
kind: QuotaPolicy
metadata: {name: students, labels: {team: edu}}
spec:
  subject: {kind: Group, members: [ann, bob]}
  limits: {maxSessions: 2, maxMemoryPerSession: 2Gi}
---
apiVersion: stream.space/v1alpha1
kind: NodeOperation
metadata: {name: maint}
spec: {nodeName: node-1, cordon: true}
---
apiVersion: stream.space/v1alpha1
kind: QuotaPolicy
metadata: {name: everyone}
spec: {subject: {kind: Default}}
";
        let desired = load(&[file("objects.yaml", content)], "", None).expect("valid");
        let names: Vec<(ObjectKind, &str)> = desired
            .objects
            .iter()
            .map(|o| (o.kind, o.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (ObjectKind::QuotaPolicy, "everyone"),
                (ObjectKind::QuotaPolicy, "students"),
                (ObjectKind::NodeOperation, "maint"),
            ]
        );
        let students = &desired.objects[1];
        assert_eq!(students.labels.get("team").map(String::as_str), Some("edu"));
        assert_eq!(students.spec["limits"]["maxSessions"], 2);
        assert_eq!(students.origin.line, 1);
        // The spec went through the Rust type: it equals what the API server would return.
        let typed: crate::crd::QuotaPolicySpec =
            serde_json::from_value(desired.objects[0].spec.clone()).expect("typed");
        assert_eq!(
            serde_json::to_value(&typed).expect("value"),
            desired.objects[0].spec
        );
    }

    #[test]
    fn table_of_rejected_objects() {
        let qp = |metadata: &str, spec: &str| {
            format!(
                "apiVersion: stream.space/v1alpha1\nkind: QuotaPolicy\nmetadata: {metadata}\nspec: {spec}\n"
            )
        };
        let op = |spec: &str| {
            format!(
                "apiVersion: stream.space/v1alpha1\nkind: NodeOperation\nmetadata: {{name: op}}\nspec: {spec}\n"
            )
        };
        let ff = |metadata: &str, spec: &str| {
            format!(
                "apiVersion: stream.space/v1alpha1\nkind: FeatureFlag\nmetadata: {metadata}\nspec: {spec}\n"
            )
        };
        let default = "{subject: {kind: Default}}";
        let cases = [
            (
                ff(
                    "{name: sessions}",
                    "{mode: controller, override: {mode: legacy}}",
                ),
                "set through the API",
            ),
            (
                ff("{name: gpus}", "{mode: controller}"),
                "must be a resource type",
            ),
            (ff("{name: sessions}", "{mode: sometimes}"), "/spec/mode"),
            (
                ff("{name: sessions}", "{mode: controller, percent: 101}"),
                "maximum",
            ),
            (
                ff("{name: sessions}", "{percent: 10}"),
                "missing required field \"mode\"",
            ),
            (
                qp("{name: q}", "{limits: {}}"),
                "missing required field \"subject\"",
            ),
            (
                qp(
                    "{name: q}",
                    "{subject: {kind: Default}, limits: {maxSessions: -1}}",
                ),
                "less than the minimum 0",
            ),
            (
                qp(
                    "{name: q}",
                    "{subject: {kind: Default}, limits: {maxCpu: true}}",
                ),
                "expected integer or string",
            ),
            (
                qp(
                    "{name: q}",
                    "{subject: {kind: Default}, limits: {maxCpu: lots}}",
                ),
                "/spec/",
            ),
            (
                qp("{name: q}", "{subject: {kind: User}}"),
                "/spec/subject.name: a User policy needs a name",
            ),
            (qp("{name: q, namespace: other}", default), "leave it out"),
            (qp("{name: Big_Name}", default), "DNS subdomain"),
            (
                qp("{name: q, labels: {stream.space/gitsync: x}}", default),
                "set by the GitSync itself",
            ),
            (
                qp("{name: q, labels: {a: 1}}", default),
                "/metadata/labels/a: expected string",
            ),
            (
                qp("{name: q, labels: {\"bad key!\": v}}", default),
                "/metadata/labels/bad key!",
            ),
            (
                qp("{name: q, labels: {a: \"not valid!\"}}", default),
                "does not match the pattern",
            ),
            (op("{cordon: true}"), "missing required field \"nodeName\""),
            (
                op("{nodeName: node-1, cordon: true, ttlSecondsAfterFinished: 60}"),
                "not allowed in Git",
            ),
            (
                op("{nodeName: node-1, drain: {gracePeriodSeconds: -5}}"),
                "gracePeriodSeconds",
            ),
        ];
        for (content, reason) in cases {
            let errors = load(&[file("bad.yaml", &content)], "", None)
                .expect_err(&format!("rejects {content}"));
            assert_eq!(errors[0].metric_label(), "schema", "{content}: {errors:?}");
            assert!(
                errors[0].to_string().contains(reason),
                "{content}: {}",
                errors[0]
            );
        }
    }

    #[test]
    fn feature_flags_carry_the_baseline_only() {
        let content = "apiVersion: stream.space/v1alpha1\nkind: FeatureFlag\nmetadata: {name: team-a-sessions}\nspec: {mode: controller, percent: 30}\n";
        let desired = load(&[file("flags.yaml", content)], "", None).expect("valid");
        assert_eq!(desired.objects.len(), 1);
        assert_eq!(desired.objects[0].kind, ObjectKind::FeatureFlag);
        assert_eq!(
            desired.objects[0].spec,
            serde_json::json!({"mode": "controller", "percent": 30})
        );
        let live = serde_json::json!({"mode": "controller", "percent": 30, "override": {"mode": "legacy"}});
        assert_eq!(
            git_managed_spec(ObjectKind::FeatureFlag, &live),
            desired.objects[0].spec
        );
        // Other kinds are compared whole.
        assert_eq!(git_managed_spec(ObjectKind::QuotaPolicy, &live), live);
    }

    #[test]
    fn the_owner_label_value_fits_a_label() {
        assert_eq!(owner_value("team-a/nodes"), "team-a.nodes");
        let long = format!("ns/{}", "n".repeat(120));
        let value = owner_value(&long);
        assert!(value.len() <= 63, "{value}");
        assert_ne!(value, owner_value(&format!("ns/{}", "n".repeat(121))));
        assert!(value.starts_with("ns.nnn"));
    }

    #[test]
    fn comment_only_documents_are_skipped() {
        let docs = split_documents("# header\n---\n\n# note\nkind: A\n---\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].0, 5);
    }
}
