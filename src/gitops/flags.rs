//! The controller's GitSync flags: where GitSyncs are honoured, which transports and keys they
//! may use, and the limits of one commit (`docs/gitops.md` lists them with their defaults).

use std::time::Duration;

use clap::Args;

use super::context::GitopsSettings;
use super::keys::KeyPolicy;
use super::limits::Limits;
use super::trust::NamespacePolicy;

#[derive(Args, Clone, Debug)]
pub struct GitSyncArgs {
    /// Namespaces whose GitSyncs are honoured, comma-separated, or `*` for all (default: the
    /// controller's own namespace: POD_NAMESPACE, else the in-cluster ServiceAccount's).
    #[arg(long, env = "GITSYNC_NAMESPACES")]
    pub gitsync_namespaces: Option<String>,
    /// Also allow http://, git:// and file:// repository URLs (never with credentials).
    #[arg(long, env = "GITSYNC_ALLOW_INSECURE_TRANSPORTS")]
    pub gitsync_allow_insecure_transports: bool,
    /// Label and taint key prefixes Git may not set, besides kubernetes.io/, k8s.io/ and
    /// their subdomains (comma-separated).
    #[arg(long, env = "GITSYNC_RESERVED_PREFIXES", value_delimiter = ',')]
    pub gitsync_reserved_prefixes: Vec<String>,
    /// Allow NoExecute taints from Git (they evict running pods at once).
    #[arg(long, env = "GITSYNC_ALLOW_NOEXECUTE")]
    pub gitsync_allow_noexecute: bool,
    /// YAML files read per commit.
    #[arg(long, default_value_t = Limits::default().max_files)]
    pub gitsync_max_files: usize,
    /// Bytes of one YAML file.
    #[arg(long, default_value_t = Limits::default().max_file_bytes)]
    pub gitsync_max_file_bytes: u64,
    /// Bytes of all YAML files of a commit.
    #[arg(long, default_value_t = Limits::default().max_total_bytes)]
    pub gitsync_max_total_bytes: u64,
    /// Documents per commit.
    #[arg(long, default_value_t = Limits::default().max_documents)]
    pub gitsync_max_documents: usize,
    /// Overlay (JSON Patch) operations per commit.
    #[arg(long, default_value_t = Limits::default().max_overlay_operations)]
    pub gitsync_max_overlay_operations: usize,
    /// Bytes (as JSON) one document may reach, overlays included.
    #[arg(long, default_value_t = Limits::default().max_document_bytes)]
    pub gitsync_max_document_bytes: usize,
    /// YAML nesting depth.
    #[arg(long, default_value_t = Limits::default().max_yaml_depth)]
    pub gitsync_max_yaml_depth: usize,
    /// YAML aliases per file.
    #[arg(long, default_value_t = Limits::default().max_yaml_aliases)]
    pub gitsync_max_yaml_aliases: usize,
    /// YAML nodes per file, alias expansions included.
    #[arg(long, default_value_t = Limits::default().max_yaml_nodes)]
    pub gitsync_max_yaml_nodes: usize,
    /// Seconds parsing and validating one commit may take.
    #[arg(long, default_value_t = Limits::default().parse_deadline.as_secs())]
    pub gitsync_parse_deadline_seconds: u64,
    /// Bytes one fetch may transfer.
    #[arg(long, default_value_t = Limits::default().max_fetch_bytes)]
    pub gitsync_max_fetch_bytes: usize,
}

impl GitSyncArgs {
    /// Sets the GitSync part of the controller's settings.
    pub fn apply(&self, settings: &mut GitopsSettings) {
        if let Some(namespaces) = &self.gitsync_namespaces {
            settings.namespaces = NamespacePolicy::parse(namespaces);
        }
        settings.allow_insecure_transports = self.gitsync_allow_insecure_transports;
        settings.rules.keys = KeyPolicy {
            reserved: self
                .gitsync_reserved_prefixes
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            allow_no_execute: self.gitsync_allow_noexecute,
        };
        settings.rules.limits = Limits {
            max_files: self.gitsync_max_files,
            max_file_bytes: self.gitsync_max_file_bytes,
            max_total_bytes: self.gitsync_max_total_bytes,
            max_documents: self.gitsync_max_documents,
            max_overlay_operations: self.gitsync_max_overlay_operations,
            max_document_bytes: self.gitsync_max_document_bytes,
            max_yaml_depth: self.gitsync_max_yaml_depth,
            max_yaml_aliases: self.gitsync_max_yaml_aliases,
            max_yaml_nodes: self.gitsync_max_yaml_nodes,
            parse_deadline: Duration::from_secs(self.gitsync_parse_deadline_seconds.max(1)),
            max_fetch_bytes: self.gitsync_max_fetch_bytes,
        };
    }
}
