//! Test harness: one real control plane per test run (etcd + kube-apiserver +
//! kube-controller-manager, plus the node simulator), a fresh namespace per test, and a
//! controller instance per test that watches only that namespace.
//!
//! Set `STREAMSPACE_TEST_KUBECONFIG` to run against an already running cluster (for example the
//! one `streamspace-controller dev` prints) instead of starting one; it must have the CRDs and
//! a node simulator or real nodes.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use streamspace_controller::controller::{self, Readiness};
use streamspace_controller::devcluster::{
    ControlPlane, ControlPlaneOptions, NodeSimulator, SimulatorConfig,
};
use streamspace_controller::http;
use streamspace_controller::idle::wake::Waker;
use streamspace_controller::metrics::Metrics;
use streamspace_controller::ownership::index::{FlagIndex, FlagSettings};
use streamspace_controller::session::objects::SessionSettings;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Label that ties a cluster-scoped object (a NodeOperation) to one test's controller.
pub const TEST_ENV_LABEL: &str = "stream.space/test-env";

/// Upper bound for any awaited condition; generous because the machines are shared.
pub const WAIT: Duration = Duration::from_secs(90);

static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Starts (once per process) the control plane and the simulator on a runtime of their own,
/// which lives as long as the test process.
pub fn kubeconfig() -> PathBuf {
    let result = KUBECONFIG.get_or_init(|| {
        if let Some(path) = std::env::var_os("STREAMSPACE_TEST_KUBECONFIG") {
            return Ok(PathBuf::from(path));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-control-plane".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match start_cluster().await {
                        Ok((plane, _simulator)) => {
                            let _ = tx.send(Ok(plane.kubeconfig_path().to_path_buf()));
                            // Keep the control plane and simulator for the whole run.
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    });
    match result {
        Ok(path) => path.clone(),
        Err(e) => panic!("test control plane failed to start: {e}"),
    }
}

async fn start_cluster() -> Result<(ControlPlane, NodeSimulator), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let plane = ControlPlane::start(ControlPlaneOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let client = plane.client().await.map_err(|e| e.to_string())?;
    streamspace_controller::crd::install::install(&client, controller::FIELD_MANAGER)
        .await
        .map_err(|e| e.to_string())?;
    let simulator = NodeSimulator::spawn(client, SimulatorConfig::default());
    Ok((plane, simulator))
}

/// Path of the test cluster's admin kubeconfig (for processes the tests start).
pub fn kubeconfig_path() -> PathBuf {
    kubeconfig()
}

/// Bearer token of a development user of the test cluster (`alice`, `bob`, `operator`,
/// `streamspace-admin`), from the `dev-users.json` next to its kubeconfig.
pub fn dev_token(user: &str) -> String {
    let path = kubeconfig();
    let users = streamspace_controller::devcluster::read_dev_users(&path)
        .unwrap_or_else(|e| panic!("development users of {}: {e}", path.display()));
    users
        .into_iter()
        .find(|u| u.name == user)
        .map(|u| u.token)
        .unwrap_or_else(|| panic!("no development user {user}"))
}

/// A client configuration for the test cluster, authenticated as its admin.
pub async fn kube_config() -> kube::Config {
    streamspace_controller::dev::kube_config_from(Some(&kubeconfig()))
        .await
        .expect("kube config")
}

/// A client on the current test's runtime.
pub async fn client() -> Client {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let path = kubeconfig();
    let _ = rustls::crypto::ring::default_provider().install_default();
    streamspace_controller::dev::client_from(Some(&path))
        .await
        .unwrap_or_else(|e| panic!("client for {}: {e:#}", path.display()))
}

static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's world: a fresh namespace and a controller that watches only it.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub controller: Option<RunningController>,
    /// GitOps settings of the controllers this env starts.
    pub gitops: streamspace_controller::gitops::reconciler::GitopsSettings,
}

pub struct RunningController {
    pub metrics: Arc<Metrics>,
    /// The controller's HTTP server (health, metrics, connection events) on loopback.
    pub http_addr: SocketAddr,
    server: tokio::task::AbortHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningController {
    /// Stops gracefully, letting in-flight reconciles finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops at once, like a crash: in-flight work is cut off at its next await point.
    pub async fn kill(self) {
        self.task.abort();
        self.server.abort();
        let _ = self.task.await;
    }

    pub fn writes(&self) -> String {
        self.metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with("streamspace_controller_api_writes_total"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl TestEnv {
    /// A namespace named after the test, with a running controller.
    pub async fn new(test: &str) -> TestEnv {
        let mut env = TestEnv::without_controller(test).await;
        env.start_controller().await;
        env
    }

    pub async fn without_controller(test: &str) -> TestEnv {
        let client = client().await;
        let n = NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let namespace = format!(
            "{}-{}-{n}",
            test.replace('_', "-"),
            std::process::id() % 100_000
        );
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let body: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": namespace}
            }))
            .expect("namespace object");
        namespaces
            .create(&PostParams::default(), &body)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {namespace}: {e}"));
        TestEnv {
            client,
            namespace,
            controller: None,
            gitops: Default::default(),
        }
    }

    /// Flags of this test: FeatureFlags named `<namespace>-<type>`, so tests flipping flags do
    /// not affect each other; a type without a flag object is controller-owned.
    pub fn flag_settings(&self) -> FlagSettings {
        FlagSettings {
            name_prefix: format!("{}-", self.namespace),
            ..FlagSettings::default()
        }
    }

    pub fn settings() -> SessionSettings {
        SessionSettings {
            ingress_domain: "test.local".into(),
            ..SessionSettings::default()
        }
    }

    pub async fn start_controller(&mut self) {
        self.start_controller_with(|_| {}).await;
    }

    /// Starts a controller (and its HTTP server on `127.0.0.1:0`) with the test defaults
    /// changed by `customise`.
    pub async fn start_controller_with(&mut self, customise: impl FnOnce(&mut controller::Config)) {
        let metrics = Arc::new(Metrics::default());
        let readiness = Readiness::default();
        let (stop, mut stopped) = watch::channel(false);
        let mut config = controller::Config {
            namespace: Some(self.namespace.clone()),
            concurrency: 8,
            session: Self::settings(),
            node_operations: controller::NodeOperationSettings {
                selector: Some(format!("{TEST_ENV_LABEL}={}", self.namespace)),
                kube_config: Some(
                    streamspace_controller::dev::kube_config_from(Some(&kubeconfig()))
                        .await
                        .expect("kube config"),
                ),
                ..controller::NodeOperationSettings::default()
            },
            gitops: self.gitops.clone(),
            flags: FlagIndex::new(self.flag_settings()),
            ..controller::Config::default()
        };
        customise(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the controller's http server");
        let http_addr = listener.local_addr().expect("local address");
        let events = http::ConnectionEvents {
            waker: Waker::new(self.client.clone(), metrics.clone(), config.flags.clone()),
            token: config.connection_event_token.clone(),
            namespace: config.namespace.clone(),
        };
        let router = http::router(metrics.clone(), readiness.clone(), Some(events))
            .merge(http::flags_router(config.flags.clone()));
        let server = tokio::spawn({
            let mut stopped = stopped.clone();
            async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                let _ = http::serve_on(listener, router, shutdown).await;
            }
        });
        let server = server.abort_handle();
        let task = tokio::spawn({
            let client = self.client.clone();
            let metrics = metrics.clone();
            let readiness = readiness.clone();
            async move {
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                let result = controller::run(client, config, metrics, readiness, shutdown).await;
                if let Err(e) = result {
                    panic!("controller failed: {e}");
                }
            }
        });
        wait_for(
            "controller watch caches to load",
            || async { readiness.is_ready() },
            |ready| *ready,
        )
        .await;
        self.controller = Some(RunningController {
            metrics,
            http_addr,
            server,
            stop,
            task,
        });
    }

    /// Address of the running controller's HTTP server.
    pub fn controller_http_addr(&self) -> SocketAddr {
        self.controller
            .as_ref()
            .map(|c| c.http_addr)
            .expect("the controller is running")
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Creates an object from JSON in this test's namespace.
    pub async fn create<K>(&self, object: serde_json::Value) -> K
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + serde::Serialize
            + Debug,
    {
        let object: K = serde_json::from_value(object).expect("object matches its type");
        self.api::<K>()
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {}: {e}", K::kind(&())))
    }

    /// Stops the controller and deletes the namespace (without waiting for it to go).
    pub async fn cleanup(mut self) {
        if let Some(controller) = self.controller.take() {
            controller.stop().await;
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
    }
}

/// Polls `get` until `check` accepts what it returns, or panics with the last value after
/// [`WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut get: F, check: impl Fn(&T) -> bool) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = get().await;
        if check(&value) {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; last value: {value:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the object exists and satisfies `check`.
pub async fn wait_object<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let found = wait_for(
        what,
        || async { api.get_opt(name).await.ok().flatten() },
        |object| object.as_ref().is_some_and(&check),
    )
    .await;
    found.unwrap_or_else(|| unreachable!("checked above"))
}

/// Waits until the object no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let _ = wait_for(
        what,
        || async { api.get_opt(name).await },
        |r| matches!(r, Ok(None)),
    )
    .await;
}

/// Evidence that this test's controller has looked at a change, read from its own metrics, for
/// checks that something did not happen: first prove the component saw the change, then
/// assert the absence.
impl TestEnv {
    /// Sum of the samples of `name` whose line contains `label`, from this test's controller
    /// (0 without one).
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        let Some(controller) = &self.controller else {
            return 0.0;
        };
        controller
            .metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with(name) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Reconciles of `controller` (`session`, `idle`, `nodeoperation`, `gitsync`, ...) started
    /// and finished so far: the reconcile counter counts at the start, the duration histogram at
    /// the end.
    pub fn reconciles(&self, controller: &str) -> (f64, f64) {
        let label = format!("controller=\"{controller}\"");
        (
            self.metric("streamspace_controller_reconciliations_total", &label),
            self.metric(
                "streamspace_controller_reconcile_duration_seconds_count",
                &label,
            ),
        )
    }

    /// Waits until `controller` has finished at least `finished` reconciles in all and has none
    /// in flight.
    pub async fn wait_reconciled(&self, controller: &str, finished: f64) {
        wait_for(
            &format!("{controller} to finish {finished} reconciles"),
            || async { self.reconciles(controller) },
            |(started, done)| *done >= finished && started == done,
        )
        .await;
    }
}
