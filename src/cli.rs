//! Command-line settings shared by the subcommands that run reconcilers.

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::controller;
use crate::crd::FlagMode;
use crate::idle::deadline::{IdleSettings, MaxDurationAction, parse_duration};
use crate::ownership::index::{FlagIndex, FlagSettings};
use crate::session::objects::SessionSettings;

/// Reconciler settings shared by `controller` and `dev`.
#[derive(Args, Clone, Debug)]
pub struct ControllerSettings {
    /// Only watch this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Sessions reconciled concurrently.
    #[arg(long, env = "CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Domain of session URLs and Ingress hosts.
    #[arg(long, env = "INGRESS_DOMAIN", default_value = "streamspace.local")]
    ingress_domain: String,
    /// Ingress class of session Ingresses.
    #[arg(long, env = "INGRESS_CLASS", default_value = "traefik")]
    ingress_class: String,
    /// Do not create Ingresses.
    #[arg(long, env = "DISABLE_INGRESS")]
    no_ingress: bool,
    /// Size of a new user home volume claim.
    #[arg(long, env = "HOME_SIZE", default_value = "50Gi")]
    home_size: String,
    /// Storage class of new home claims (default: the cluster default class).
    #[arg(long, env = "HOME_STORAGE_CLASS")]
    home_storage_class: Option<String>,
    /// Only handle NodeOperations matching this label selector (default: all).
    #[arg(long, env = "NODE_OPERATION_SELECTOR")]
    node_operation_selector: Option<String>,
    /// NodeOperations reconciled concurrently.
    #[arg(long, env = "NODE_OPERATION_CONCURRENCY", default_value_t = 4)]
    node_operation_concurrency: u16,
    /// Do not handle NodeOperations.
    #[arg(long, env = "DISABLE_NODE_OPERATIONS")]
    no_node_operations: bool,
    /// Extra time after a session's idleTimeout before it is hibernated (s, m or h).
    #[arg(long, env = "IDLE_GRACE", default_value = "5m")]
    idle_grace: String,
    /// What a session that reaches its maxSessionDuration becomes.
    #[arg(long, env = "MAX_DURATION_ACTION", value_enum, default_value_t = MaxDurationAction::Hibernate)]
    max_duration_action: MaxDurationAction,
    /// Bearer token the API presents on POST /events/connection (unset: events are refused
    /// and only the wake-requested annotation wakes sessions).
    #[arg(long, env = "CONNECTION_EVENT_TOKEN", hide_env_values = true)]
    connection_event_token: Option<String>,
    /// Directory of the GitSync repository clones.
    #[arg(long, env = "GIT_CACHE_DIR")]
    git_cache_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub gitsync: crate::gitops::flags::GitSyncArgs,
    #[command(flatten)]
    pub flags: FlagArgs,
}

/// How a process finds its ownership flags (`controller`, `api` and `dev`).
#[derive(Args, Clone, Debug)]
pub struct FlagArgs {
    /// Prefix of the FeatureFlag object names (`<prefix>sessions`, ...), for several
    /// installations in one cluster.
    #[arg(long, env = "FLAG_NAME_PREFIX", default_value = "")]
    pub flag_name_prefix: String,
    /// Mode of a resource type whose FeatureFlag does not exist: `controller` for a new
    /// installation, `legacy` while migrating from the old API.
    #[arg(long, env = "FLAG_DEFAULT_MODE", value_enum, default_value_t = DefaultMode::Controller)]
    pub flag_default_mode: DefaultMode,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultMode {
    Legacy,
    Shadow,
    Controller,
}

impl FlagArgs {
    pub fn index(&self) -> std::sync::Arc<FlagIndex> {
        FlagIndex::new(FlagSettings {
            name_prefix: self.flag_name_prefix.clone(),
            default_mode: match self.flag_default_mode {
                DefaultMode::Legacy => FlagMode::Legacy,
                DefaultMode::Shadow => FlagMode::Shadow,
                DefaultMode::Controller => FlagMode::Controller,
            },
        })
    }
}

impl ControllerSettings {
    pub fn to_config(&self) -> anyhow::Result<controller::Config> {
        crate::quantity::parse(&self.home_size)
            .with_context(|| format!("--home-size {:?}", self.home_size))?;
        anyhow::ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        let grace = parse_duration(&self.idle_grace).with_context(|| {
            format!(
                "--idle-grace {:?}: expected a number and a unit (s, m, h)",
                self.idle_grace
            )
        })?;
        let token = self
            .connection_event_token
            .clone()
            .filter(|t| !t.is_empty());
        Ok(controller::Config {
            namespace: self.watch_namespace.clone(),
            concurrency: self.concurrency,
            session: SessionSettings {
                ingress_domain: self.ingress_domain.clone(),
                ingress_class: (!self.no_ingress).then(|| self.ingress_class.clone()),
                home_size: Quantity(self.home_size.clone()),
                home_storage_class: self.home_storage_class.clone(),
            },
            node_operations: controller::NodeOperationSettings {
                enabled: !self.no_node_operations,
                selector: self.node_operation_selector.clone(),
                concurrency: self.node_operation_concurrency.max(1),
                kube_config: None,
            },
            idle: IdleSettings {
                grace,
                max_duration_action: self.max_duration_action,
            },
            connection_event_token: token,
            gitops: {
                let mut gitops = crate::gitops::reconciler::GitopsSettings::default();
                if let Some(dir) = &self.git_cache_dir {
                    gitops.cache_dir = dir.clone();
                }
                self.gitsync.apply(&mut gitops);
                gitops
            },
            flags: self.flags.index(),
        })
    }
}

/// Settings of the objects the API's legacy session handlers build: the same names and
/// defaults as the controller's, so both sides build identical objects.
#[derive(Args, Clone, Debug)]
pub struct SessionObjectArgs {
    /// Domain of session URLs and Ingress hosts.
    #[arg(long, env = "INGRESS_DOMAIN", default_value = "streamspace.local")]
    pub ingress_domain: String,
    /// Ingress class of session Ingresses.
    #[arg(long, env = "INGRESS_CLASS", default_value = "traefik")]
    pub ingress_class: String,
    /// Do not create Ingresses.
    #[arg(long, env = "DISABLE_INGRESS")]
    pub no_ingress: bool,
    /// Size of a new user home volume claim.
    #[arg(long, env = "HOME_SIZE", default_value = "50Gi")]
    pub home_size: String,
    /// Storage class of new home claims (default: the cluster default class).
    #[arg(long, env = "HOME_STORAGE_CLASS")]
    pub home_storage_class: Option<String>,
}

impl SessionObjectArgs {
    pub fn to_settings(&self) -> anyhow::Result<SessionSettings> {
        crate::quantity::parse(&self.home_size)
            .with_context(|| format!("--home-size {:?}", self.home_size))?;
        Ok(SessionSettings {
            ingress_domain: self.ingress_domain.clone(),
            ingress_class: (!self.no_ingress).then(|| self.ingress_class.clone()),
            home_size: Quantity(self.home_size.clone()),
            home_storage_class: self.home_storage_class.clone(),
        })
    }
}
