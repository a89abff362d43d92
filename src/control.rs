//! The control plane, on the main thread: the data plane's start and stop, signals
//! (SIGTERM/SIGINT drain, SIGHUP reload). Admin and discovery run on this thread's runtime too,
//! never on a worker.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::{Config, ConfigErrors};
use crate::runtime::{self, DataPlane};
use crate::state::{Phase, Shared, WorkerCmd};

/// Re-applies the command line's overrides to a config read from the file (at reload), so a
/// SIGHUP keeps `--access-log`, `--log-level` and the rest. Built by `cli`; `control` never
/// sees the flags themselves.
pub type Overrides = Arc<dyn Fn(Config) -> Result<Config, ConfigErrors> + Send + Sync>;

/// Runs until SIGTERM/SIGINT and the drain that follows. Returns the exit status.
pub fn run(mut config: Config, path: Option<PathBuf>, overrides: Overrides) -> i32 {
    crate::logging::init(config.log.format, &config.log.level);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    runtime::resolve_workers(&mut config);
    if let Err(e) = runtime::check_kernel_fd_limit(config.workers) {
        tracing::error!("{e:#}");
        return 1;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build control runtime");
            return 1;
        }
    };
    warn_about_kernel();
    // Signal handlers go in before the data plane starts: a SIGHUP that arrives once the
    // listeners are up (a reload right after "listening") must reload, not kill the process.
    let signals = {
        let _rt = rt.enter();
        Signals::install()
    };
    let Some(signals) = signals else {
        tracing::error!("cannot install signal handlers");
        return 1;
    };
    let plane = match DataPlane::start(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("startup failed: {e:#}");
            return 1;
        }
    };
    let shared = plane.shared.clone();
    let outcome = rt.block_on(async {
        crate::discovery::spawn(shared.clone());
        if let Some(addr) = shared.gen.load().config.admin {
            let (s, p, o) = (shared.clone(), path.clone(), overrides.clone());
            let reloader: crate::admin::Reloader = Arc::new(move || reload(&s, p.as_deref(), &o));
            match crate::admin::spawn(shared.clone(), addr, reloader).await {
                Ok(bound) => tracing::info!(addr = %bound, "admin listening"),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot bind the admin listener");
                    return Err(());
                }
            }
        }
        control_loop(shared, path, overrides, signals).await;
        // Keep this runtime (admin, discovery) serving while the workers drain: /readyz must
        // keep answering 503 and /metrics keep counting until the process exits.
        let _ = tokio::task::spawn_blocking(move || plane.stop()).await;
        Ok(())
    });
    tracing::info!("stopped");
    if outcome.is_ok() {
        0
    } else {
        1
    }
}

/// Settings whose absence an operator should hear about at startup.
fn warn_about_kernel() {
    // Without tcp_migrate_req, connections queued on a listener socket that closes (SIGTERM,
    // reload removing a listener, the old process of a rolling update) are reset instead of
    // moving to another SO_REUSEPORT socket.
    if let Ok(v) = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        if v.trim() == "0" {
            tracing::warn!("net.ipv4.tcp_migrate_req = 0: a handover can reset connections still in a closing listener's accept queue; see tuning/sysctl.sh");
        }
    }
}

/// How often TLS certificate files are checked for changes.
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGTERM, SIGINT and SIGHUP, installed once at startup.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Must run inside the control runtime's context.
    fn install() -> Option<Signals> {
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

async fn control_loop(
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    overrides: Overrides,
    signals: Signals,
) {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    // Certificate files are polled (not inotify): a Secret volume's symlink swap and a plain
    // rewrite look the same to a stat, and 5 s bounds how stale a rotated certificate is.
    let mut cert_poll = tokio::time::interval(CERT_POLL);
    cert_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { reload(&shared, path.as_deref(), &overrides); }
            _ = cert_poll.tick() => shared.tls.poll_files(),
        }
    }
    let delay = shared.gen.load().config.timeouts.accept_delay;
    tracing::info!(
        ?delay,
        "shutting down: not ready; accepting stops after the delay"
    );
    shared.phase.send_replace(Phase::Draining);
    tokio::time::sleep(delay).await;
    shared.phase.send_replace(Phase::StopAccepting);
}

/// Re-reads and validates the config file, re-applies the command line's overrides; on success
/// swaps routes, upstreams, policies and timeouts, on failure keeps the old config running and
/// logs every error.
pub fn reload(shared: &Shared, path: Option<&std::path::Path>, overrides: &Overrides) -> bool {
    let c = &shared.metrics.control;
    let Some(path) = path else {
        if shared.tls.has_listeners() {
            // The quick form has no file to re-read, but its certificates can change.
            return shared.tls.reload_all();
        }
        tracing::warn!("reload requested but ringway runs from the quick form (no file)");
        c.reloads_failed.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let mut config = match Config::load(path).and_then(|c| overrides(c)) {
        Ok(c) => c,
        Err(errs) => {
            for e in &errs.0 {
                tracing::error!(error = %e, "reload refused; the old config keeps running");
            }
            c.reloads_failed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    let old = shared.gen.load_full();
    config.workers = old.config.workers;
    // Listeners new by name, or whose address changed, get sockets now (before the swap, so
    // a bind error refuses the reload and the old config keeps running).
    let mut new_sockets = Vec::new();
    for l in &config.listeners {
        let same = old
            .config
            .listeners
            .iter()
            .any(|o| o.name == l.name && o.bind == l.bind);
        if !same {
            match runtime::bind_listener(l, shared.workers) {
                Ok((addr, sockets)) => new_sockets.push((l.name.clone(), l.bind, addr, sockets)),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "reload refused; the old config keeps running");
                    c.reloads_failed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }
    // A listener that keeps its name but moves its address is a removal plus an addition:
    // the old accept loops stop when they no longer find (name, bind) in the generation.
    match runtime::build_generation(Arc::new(config), Some(&old), shared.workers) {
        Ok(gen) => {
            // Certificates load before anything is swapped: a bad one refuses the whole reload.
            if let Err(errors) = shared.tls.apply(&gen.config) {
                for e in errors {
                    tracing::error!(error = %e, "reload refused; the old config and certificates keep running");
                }
                c.reloads_failed.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            shared.limits.update(&gen.config.limits);
            shared.publish(gen);
            let cmds = shared.worker_cmds.lock().unwrap_or_else(|p| p.into_inner());
            for (name, bind, addr, sockets) in new_sockets {
                tracing::info!(listener = %name, %addr, "listening (added by reload)");
                for (tx, socket) in cmds.iter().zip(sockets) {
                    let _ = tx.send(WorkerCmd::Listen {
                        name: name.clone(),
                        bind,
                        socket,
                    });
                }
            }
            c.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %path.display(), "configuration reloaded");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the old config keeps running");
            c.reloads_failed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}
