//! Command-line settings shared by the subcommands that run reconcilers.

use anyhow::Context as _;
use clap::Args;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::caches::Caches;
use crate::controller::{self, Readiness};
use crate::crd::FlagMode;
use crate::idle::deadline::{IdleSettings, MaxDurationAction, parse_duration};
use crate::metrics::{Metrics, SharedMetrics};
use crate::ownership::index::{FlagIndex, FlagSettings};
use crate::session::objects::SessionSettings;
use crate::supervisor::{Supervisor, SupervisorHandle};

/// A process whose reconcilers are running: what `controller` and `dev` build on.
pub struct Reconcilers {
    /// Runs every task of the process; its end is the process's end.
    pub supervisor: Supervisor,
    /// Where the process starts its other tasks (servers, hook secrets, the API).
    pub tasks: SupervisorHandle,
    pub metrics: SharedMetrics,
    pub readiness: Readiness,
    /// The process's watch caches, shared with the admission webhooks.
    pub caches: Caches,
}

/// Starts the reconcilers of `config` under a new supervisor, with new metrics and readiness:
/// the first step of `controller` and of `dev`.
pub async fn start_reconcilers(
    client: &kube::Client,
    config: &controller::Config,
) -> anyhow::Result<Reconcilers> {
    let metrics = std::sync::Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let supervisor = Supervisor::new();
    let tasks = supervisor.handle();
    let caches = controller::start(
        &tasks,
        client.clone(),
        config.clone(),
        metrics.clone(),
        readiness.clone(),
    )
    .await?;
    Ok(Reconcilers {
        supervisor,
        tasks,
        metrics,
        readiness,
        caches,
    })
}

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
    #[command(flatten)]
    pub legacy: LegacyControllerArgs,
}

/// How the controller treats the old StreamSpace controller while taking over from it.
#[derive(Args, Clone, Debug)]
pub struct LegacyControllerArgs {
    /// Act on sessions even while the old StreamSpace controller is active (its Lease is
    /// renewed, its Deployment has pods, or it wrote a session's status recently).
    #[arg(long, env = "ALLOW_LEGACY_CONTROLLER")]
    pub allow_legacy_controller: bool,
    /// Namespace of the old controller's leader Lease and Deployment.
    #[arg(long, env = "LEGACY_CONTROLLER_NAMESPACE", default_value = crate::session::fence::LEGACY_NAMESPACE)]
    pub legacy_controller_namespace: String,
    /// Name of the old controller's leader Lease.
    #[arg(long, env = "LEGACY_CONTROLLER_LEASE", default_value = crate::session::fence::LEGACY_LEASE_NAME)]
    pub legacy_controller_lease: String,
    /// How long after another field manager wrote a session's phase that session stays
    /// fenced (s, m or h).
    #[arg(long, env = "LEGACY_WRITER_WINDOW", default_value = "2m")]
    pub legacy_writer_window: String,
}

impl LegacyControllerArgs {
    pub fn to_settings(&self) -> anyhow::Result<crate::session::fence::FenceSettings> {
        let writer_window = parse_duration(&self.legacy_writer_window).with_context(|| {
            format!(
                "--legacy-writer-window {:?}: expected a number and a unit (s, m, h)",
                self.legacy_writer_window
            )
        })?;
        Ok(crate::session::fence::FenceSettings {
            allow: self.allow_legacy_controller,
            namespace: self.legacy_controller_namespace.clone(),
            lease_name: self.legacy_controller_lease.clone(),
            writer_window,
        })
    }
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
            leader_election: None,
            legacy_controller: self.legacy.to_settings()?,
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

/// The `api` process's legacy idle monitor (`api::idle`): hibernates idle sessions whose
/// `idle` flag gives them to the legacy side.
#[derive(Args, Clone, Debug)]
pub struct LegacyIdleArgs {
    /// Do not run the legacy idle monitor (then nothing hibernates sessions the `idle` flag
    /// gives to the legacy side).
    #[arg(long, env = "NO_LEGACY_IDLE")]
    pub no_legacy_idle: bool,
    /// Time between two passes of the legacy idle monitor over the sessions.
    #[arg(long, env = "IDLE_INTERVAL", default_value = "1m")]
    pub idle_interval: String,
    /// Extra time after a session's idleTimeout before it is hibernated (the controller's
    /// --idle-grace; keep both equal).
    #[arg(long, env = "IDLE_GRACE", default_value = "5m")]
    pub idle_grace: String,
    /// What a session that reaches its maxSessionDuration becomes (the controller's setting).
    #[arg(long, env = "MAX_DURATION_ACTION", value_enum, default_value_t = MaxDurationAction::Hibernate)]
    pub max_duration_action: MaxDurationAction,
    /// Lease that lets one API replica at a time run the monitor.
    #[arg(long, env = "IDLE_LEASE_NAME", default_value = crate::api::idle::DEFAULT_LEASE_NAME)]
    pub idle_lease_name: String,
    /// Namespace of that Lease (default: $POD_NAMESPACE, else the sessions' namespace).
    #[arg(long, env = "IDLE_LEASE_NAMESPACE")]
    pub idle_lease_namespace: Option<String>,
}

impl LegacyIdleArgs {
    /// The monitor's settings, `None` with --no-legacy-idle; `namespace` is the sessions'.
    pub fn to_settings(
        &self,
        namespace: &str,
    ) -> anyhow::Result<Option<crate::api::idle::IdleMonitorSettings>> {
        if self.no_legacy_idle {
            return Ok(None);
        }
        let duration = |flag: &str, text: &str| {
            parse_duration(text)
                .with_context(|| format!("{flag} {text:?}: expected a number and a unit (s, m, h)"))
        };
        let interval = duration("--idle-interval", &self.idle_interval)?;
        anyhow::ensure!(
            interval >= std::time::Duration::from_millis(100),
            "--idle-interval must be at least 100ms"
        );
        let lease_namespace = self
            .idle_lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| namespace.to_string());
        let mut settings = crate::api::idle::IdleMonitorSettings::new(&lease_namespace);
        settings.interval = interval;
        settings.idle = IdleSettings {
            grace: duration("--idle-grace", &self.idle_grace)?,
            max_duration_action: self.max_duration_action,
        };
        settings.lease_name = self.idle_lease_name.clone();
        Ok(Some(settings))
    }
}

/// Leader election of the `controller` process.
#[derive(Args, Clone, Debug)]
pub struct LeaderArgs {
    /// Run the reconcilers only while holding the Lease (every replica still serves webhooks,
    /// connection events, push hooks and metrics).
    #[arg(long, env = "LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = crate::leader::DEFAULT_LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the Lease (default: $POD_NAMESPACE, else the namespace of the in-cluster
    /// configuration, else `default`).
    #[arg(long, env = "LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long the lease stays valid after its last renewal: the longest a crashed leader's
    /// work waits for another replica (whole seconds).
    #[arg(long, env = "LEASE_DURATION", default_value = "15s")]
    pub lease_duration: String,
    /// Longest time the leader goes on without a stored renewal before it stops and exits;
    /// shorter than --lease-duration so it stops before another replica may take over.
    #[arg(long, env = "LEASE_RENEW_DEADLINE", default_value = "10s")]
    pub lease_renew_deadline: String,
}

impl LeaderArgs {
    /// The election settings, `None` without --leader-elect. `config_namespace` is the
    /// namespace of the client configuration (in a pod: the service account's).
    pub fn to_settings(
        &self,
        config_namespace: &str,
    ) -> anyhow::Result<Option<crate::leader::LeaderSettings>> {
        if !self.leader_elect {
            return Ok(None);
        }
        let duration = |flag: &str, text: &str| {
            parse_duration(text)
                .with_context(|| format!("{flag} {text:?}: expected whole seconds such as 15s"))
        };
        let lease_namespace = self
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| config_namespace.to_string());
        let settings = crate::leader::LeaderSettings {
            lease_name: self.lease_name.clone(),
            lease_namespace,
            identity: crate::leader::default_identity(),
            lease_duration: duration("--lease-duration", &self.lease_duration)?,
            renew_deadline: duration("--lease-renew-deadline", &self.lease_renew_deadline)?,
        };
        settings.validate()?;
        Ok(Some(settings))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    /// The controller's flags, as `controller` and `dev` flatten them.
    #[derive(Parser)]
    struct Controller {
        #[command(flatten)]
        settings: ControllerSettings,
    }

    /// The API's session-object flags, as `api` flattens them.
    #[derive(Parser)]
    struct Api {
        #[command(flatten)]
        objects: SessionObjectArgs,
    }

    fn parse<T: Parser>(args: &[&str]) -> T {
        T::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn controller(args: &[&str]) -> ControllerSettings {
        parse::<Controller>(args).settings
    }

    #[test]
    fn controller_settings_become_the_controller_config() {
        let config = controller(&[
            "--watch-namespace=ns",
            "--no-ingress",
            "--home-size=10Gi",
            "--idle-grace=90s",
            "--max-duration-action=terminate",
            "--connection-event-token=",
            "--no-node-operations",
            "--node-operation-concurrency=0",
            "--git-cache-dir=/var/cache/git",
        ])
        .to_config()
        .expect("valid settings");
        assert_eq!(config.namespace.as_deref(), Some("ns"));
        assert_eq!(config.session.ingress_class, None, "--no-ingress");
        assert_eq!(config.session.home_size.0, "10Gi");
        assert_eq!(config.idle.grace, Duration::from_secs(90));
        assert_eq!(
            config.idle.max_duration_action,
            MaxDurationAction::Terminate
        );
        assert_eq!(
            config.connection_event_token, None,
            "an empty token is none"
        );
        assert!(!config.node_operations.enabled);
        assert_eq!(config.node_operations.concurrency, 1, "at least one");
        assert_eq!(
            config.gitops.cache_dir,
            std::path::PathBuf::from("/var/cache/git")
        );

        let defaults = controller(&[]).to_config().expect("defaults");
        assert_eq!(defaults.namespace, None);
        assert_eq!(defaults.session.ingress_class.as_deref(), Some("traefik"));
        assert_eq!(defaults.idle.grace, Duration::from_secs(300));
        assert!(defaults.node_operations.enabled);
    }

    #[test]
    fn bad_controller_settings_name_the_flag() {
        let cases = [
            (&["--home-size=lots"][..], "--home-size"),
            (&["--concurrency=0"][..], "--concurrency"),
            (&["--idle-grace=5 minutes"][..], "--idle-grace"),
            (&["--idle-grace=5d"][..], "--idle-grace"),
        ];
        for (args, flag) in cases {
            let error = controller(args).to_config().expect_err("refused");
            assert!(format!("{error:#}").contains(flag), "{args:?}: {error:#}");
        }
    }

    #[test]
    fn session_object_args_match_the_controller_settings() {
        let args = ["--ingress-domain=example.org", "--home-storage-class=fast"];
        let api = parse::<Api>(&args).objects.to_settings().expect("valid");
        let from_controller = controller(&args).to_config().expect("valid").session;
        assert_eq!(api.ingress_domain, "example.org");
        assert_eq!(api.home_storage_class.as_deref(), Some("fast"));
        assert_eq!(api.ingress_domain, from_controller.ingress_domain);
        assert_eq!(api.ingress_class, from_controller.ingress_class);
        assert_eq!(api.home_size, from_controller.home_size);
        assert_eq!(api.home_storage_class, from_controller.home_storage_class);

        let bad = parse::<Api>(&["--home-size=x"]).objects.to_settings();
        assert!(format!("{:#}", bad.expect_err("refused")).contains("--home-size"));
    }

    #[derive(Parser)]
    struct Idle {
        #[command(flatten)]
        idle: LegacyIdleArgs,
    }

    #[test]
    fn legacy_idle_args_become_the_monitor_settings() {
        let settings = parse::<Idle>(&[
            "--idle-interval=2s",
            "--idle-grace=1s",
            "--idle-lease-name=l",
            "--idle-lease-namespace=ops",
            "--max-duration-action=terminate",
        ])
        .idle
        .to_settings("streamspace")
        .expect("valid")
        .expect("enabled");
        assert_eq!(settings.interval, Duration::from_secs(2));
        assert_eq!(settings.idle.grace, Duration::from_secs(1));
        assert_eq!(settings.lease_name, "l");
        assert_eq!(settings.lease_namespace, "ops");
        assert_eq!(
            settings.idle.max_duration_action,
            MaxDurationAction::Terminate
        );
        let defaults = parse::<Idle>(&["--idle-lease-namespace=ops"])
            .idle
            .to_settings("streamspace")
            .expect("valid")
            .expect("enabled by default");
        assert_eq!(defaults.interval, Duration::from_secs(60));
        assert_eq!(defaults.idle.grace, Duration::from_secs(300));
        let off = parse::<Idle>(&["--no-legacy-idle"]).idle.to_settings("s");
        assert!(off.expect("valid").is_none());
        for (args, flag) in [
            (&["--idle-interval=soon"][..], "--idle-interval"),
            (&["--idle-interval=10ms"][..], "--idle-interval"),
            (&["--idle-grace=5d"][..], "--idle-grace"),
        ] {
            let error = parse::<Idle>(args)
                .idle
                .to_settings("s")
                .expect_err("refused");
            assert!(format!("{error:#}").contains(flag), "{args:?}: {error:#}");
        }
    }

    #[test]
    fn flag_args_choose_the_default_mode_and_prefix() {
        for (mode, expected) in [
            ("legacy", FlagMode::Legacy),
            ("shadow", FlagMode::Shadow),
            ("controller", FlagMode::Controller),
        ] {
            let settings = controller(&["--flag-default-mode", mode, "--flag-name-prefix=a-"])
                .flags
                .index()
                .settings()
                .clone();
            assert_eq!(settings.default_mode, expected, "{mode}");
            assert_eq!(settings.name_prefix, "a-");
        }
    }
}
