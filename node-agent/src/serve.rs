//! The agent process: builds the shared state from the arguments, starts the sampling loops
//! and the reporter, serves the API, and shuts down in order.
//!
//! ```text
//!   args --build--> App (app.rs) --api::router--> http_server::serve
//!                      |--> one sampler per device
//!                      '--> report::run (in a cluster)
//! ```

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use vramkeeper_crds::{SwitchTrigger, api::AgentInfo};

use crate::{
    access::{self, Access},
    api,
    app::{App, Limiter},
    args::ServeArgs,
    device::{AgentContext, Device, DeviceConfig},
    http_server::HttpLimits,
    metrics::Metrics,
    models::Catalog,
    probe,
    state_file::StateStore,
    worker::client::WorkerLaunch,
    zombie::ZombiePolicy,
};

fn default_dir(env: &str, fallback: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(std::env::temp_dir)
        .join("vramkeeper")
}

/// A short stable id from the state directory's absolute path.
fn derive_agent_id(state_dir: &Path) -> String {
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in path.to_string_lossy().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{:012x}", h & 0xffff_ffff_ffff)
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a non-negative number of seconds"))
}

/// Builds the agent from its arguments: devices with their baselines, the catalog, the
/// state of earlier runs.
pub(crate) fn build(args: &ServeArgs) -> anyhow::Result<Arc<App>> {
    let token = access::configured_token(args)?;
    let access = Access::from_args(args)?;
    let catalog = match &args.catalog {
        Some(path) => Catalog::from_file(path)?,
        None => Catalog::builtin(),
    };
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| default_dir("XDG_STATE_HOME", ".local/state"));
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_dir("XDG_CACHE_HOME", ".cache"));
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    crate::state_file::StateDirLock::acquire(&state_dir)?.hold_until_exit();
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("cannot create the cache directory {}", cache_dir.display()))?;
    let agent_id = args
        .agent_id
        .clone()
        .unwrap_or_else(|| derive_agent_id(&state_dir));
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let budget = args.memory_budget_mib.map(|m| m << 20);
    let detected = probe::detect(
        &agent_id,
        args.device,
        args.kill_foreign_matching.clone(),
        budget,
    )
    .context("refusing to start")?;
    tracing::info!(reason = %detected.reason, "device");
    let names: Vec<String> = catalog.models().iter().map(|m| m.name.clone()).collect();
    let indices: Vec<u32> = detected.probes.iter().map(|p| p.info().index).collect();
    let metrics = Arc::new(Metrics::new(&names, &indices));
    let config = DeviceConfig {
        load_timeout: secs(args.load_timeout_s, "--load-timeout-s")?,
        infer_timeout: secs(args.infer_timeout_s, "--infer-timeout-s")?,
        control_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        drain_timeout: Duration::from_secs_f64(args.drain_timeout_s),
        verify_timeout: Duration::from_millis(args.verify_timeout_ms),
        release_tolerance: args.release_tolerance_mib << 20,
        headroom: args.headroom_mib << 20,
        idle_unload: args
            .idle_unload_s
            .map(|s| secs(s, "--idle-unload-s"))
            .transpose()?,
        queue_timeout: secs(args.queue_timeout_s, "--queue-timeout-s")?,
        queue_capacity: args.queue_capacity.max(1),
        hang_timeout: secs(args.hang_timeout_s, "--hang-timeout-s")?,
        foreign_matching: args.kill_foreign_matching.clone(),
        policy: ZombiePolicy {
            threshold_bytes: args.zombie_threshold_mib << 20,
            persist: secs(args.zombie_persist_s, "--zombie-persist-s")?,
            auto_free: args.auto_free,
            cooldown: secs(args.free_cooldown_s, "--free-cooldown-s")?,
            kill_foreign: args.kill_foreign_processes,
        },
    };
    let ctx = Arc::new(AgentContext {
        launch: WorkerLaunch {
            exe: std::env::current_exe().context("cannot find the agent's own binary")?,
            agent_id: agent_id.clone(),
            instance: instance.clone(),
            run_dir: state_dir.join("run"),
            cache_dir,
            test_ops: args.enable_test_ops,
            start_timeout: Duration::from_secs(60),
        },
        catalog: catalog.clone(),
        config,
        metrics: metrics.clone(),
    });
    let mut devices = vec![];
    for probe in detected.probes {
        let index = probe.info().index;
        let store = StateStore::new(state_dir.join(format!("device-{index}.json")));
        let loaded = store.load();
        if let Some(warning) = &loaded.warning {
            tracing::warn!(gpu = index, "{warning}");
        }
        let faults = args.enable_test_ops.then(Default::default);
        let device = Device::new(probe, ctx.clone(), store, loaded.tracker, faults)
            .with_context(|| format!("cannot read device {index}"))?;
        devices.push(Arc::new(device));
    }
    Ok(Arc::new(App {
        devices,
        catalog,
        agent: AgentInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            instance,
            started_at: Timestamp::now().to_string(),
            node: args.node_name.clone(),
            device_reason: detected.reason,
            auth_required: token.is_some(),
        },
        token,
        auth_reads: args.auth_reads,
        test_ops: args.enable_test_ops,
        metrics,
        acting_limiter: Limiter::new(args.rate_limit),
        access,
        state_dir,
        min_gpus: args.min_gpus.max(u32::from(detected.gpus_required)),
    }))
}

/// Runs the agent until SIGTERM or Ctrl-C, then stops its workers and writes its state.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let app = build(&args)?;
    raise_open_files_limit();
    // Bind before anything is loaded: a taken port must fail the start with no worker left.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let limits = HttpLimits {
        header_timeout: secs(args.header_timeout_s, "--header-timeout-s")?,
        body_timeout: secs(args.body_timeout_s, "--body-timeout-s")?,
        max_connections: args.max_connections.max(1),
        shutdown_timeout: secs(args.shutdown_timeout_s, "--shutdown-timeout-s")?,
    };
    let shutdown = CancellationToken::new();
    for device in &app.devices {
        let device = device.clone();
        let stop = shutdown.clone();
        let period = Duration::from_millis(args.sample_ms.max(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut tick = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {
                        tick += 1;
                        device.sample(tick).await;
                    }
                }
            }
        });
    }
    if let Some(model) = &args.load {
        // In the queue like any switch: requests that arrive meanwhile wait their turn.
        let device = app.devices[0].clone();
        let model = model.clone();
        tokio::spawn(async move {
            // The same refusal an API switch gets for a model that can never fit.
            let fits = device.spec(&model).and_then(|spec| device.fits(&spec));
            if let Err(e) = fits {
                tracing::error!(model, error = %e, "cannot load at start");
                return;
            }
            match device.switch(&model, SwitchTrigger::Api).await {
                Ok(r) => tracing::info!(model, vram_mb = r.vram_mb, "loaded at start"),
                Err(e) => tracing::error!(model, error = %e, "cannot load at start"),
            }
        });
    }
    tracing::info!(%addr, agent_id = %app.devices[0].ctx().launch.agent_id, "serving; status page at http://{addr}/");
    // The first line on stdout is the address: tests and scripts read it.
    println!("listening on {addr}");
    if let Some(node) = &args.node_name {
        start_reporting(app.clone(), node, shutdown.clone()).await;
    }
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    let router = api::router(app.clone());
    crate::http_server::serve(listener, router, limits.clone(), shutdown.clone()).await;
    tracing::info!("shutting down: stopping workers");
    for device in &app.devices {
        // Bounded: an operation still running keeps the queue, and the sweep below ends
        // whatever it left.
        match tokio::time::timeout(limits.shutdown_timeout, device.unload(SwitchTrigger::Api)).await
        {
            Ok(Ok(Some(release))) => {
                tracing::info!(gpu = device.info.index, model = release.model, "stopped")
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(gpu = device.info.index, error = %e, "cannot unload"),
            Err(_) => tracing::warn!(gpu = device.info.index, "unload timed out"),
        }
        device.save_state();
    }
    // A switch still in flight may have started a worker that no record names yet: end every
    // worker of this run, so none outlives it.
    let agent_id = &app.devices[0].ctx().launch.agent_id;
    for (pid, marker) in crate::probe::process::workers_of(agent_id) {
        if marker.instance == app.agent.instance {
            tracing::warn!(pid, "ending a worker left by an interrupted switch");
            crate::worker::client::kill_pid(pid, Duration::from_secs(5)).await;
        }
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each client connection and each
/// worker socket is a descriptor, and the connection cap must bind before this limit does.
fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
    }
}

/// Starts reporting into this node's GpuModels when a cluster is reachable; says once why not
/// otherwise (the agent serves either way).
async fn start_reporting(app: Arc<App>, node: &str, stop: CancellationToken) {
    match kube::Client::try_default().await {
        Ok(client) => {
            tracing::info!(node, "reporting into the GpuModels of this node");
            let config = crate::report::ReportConfig::new(node);
            tokio::spawn(crate::report::run(client, app, config, stop));
        }
        Err(e) => {
            tracing::warn!(node, error = %e, "no cluster reachable: not reporting into GpuModels")
        }
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
