//! `loadgen`: the CLI over the `loadgen` library. See `loadgen --help`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use loadgen::compare::{self, CompareConfig, GatewaySpec, Peer};
use loadgen::report::{plot_svg, Machine, Report};
use loadgen::scenario::{Kind, Live, Proto, RunConfig};
use loadgen::Mode;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for ringway: WebSocket and raw TCP"
)]
struct Cli {
    /// Worker threads of the load generator's runtime (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// N connections, one message in flight each; RTT percentiles. With --rate: open loop.
    Pingpong(ScenarioArgs),
    /// Connect, handshake, one message, close, over and over; handshakes/s.
    Rate(ScenarioArgs),
    /// Open N connections, hold them, check that every one still echoes.
    Idle(ScenarioArgs),
    /// Stream big frames both ways; MB/s.
    Bulk(ScenarioArgs),
    /// N clients (default 5,000) connect and upgrade at the same instant, hold, close.
    Storm(ScenarioArgs),
    /// Hold N WebSockets, reconnect those the gateway ends, print connections per backend
    /// over time (a scale-out, before and after).
    Rebalance(RebalanceArgs),
    /// An echo backend (WebSocket + plain HTTP, or raw TCP).
    Backend(BackendArgs),
    /// Run a scenario direct and through each gateway; report the gateway's cost.
    Compare(CompareArgs),
}

#[derive(Args, Debug, Clone)]
struct ScenarioArgs {
    /// Target host:port (not used by compare).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    #[arg(long, value_enum, default_value_t = Proto::Ws)]
    proto: Proto,
    /// Request path of the WebSocket upgrade.
    #[arg(long, default_value = "/")]
    path: String,
    /// Connections (pingpong default 10, idle 1000, bulk 4, storm 5000; storm at most 9000).
    #[arg(long)]
    conns: Option<usize>,
    /// Message size in bytes (pingpong, rate, idle checks).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Open-loop rate in messages/s over all connections (pingpong).
    #[arg(long)]
    rate: Option<f64>,
    /// Run time, e.g. 5s, 500ms, 1m (capped at 1h). Storm: how long every client has to be
    /// established.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Parallel connect loops (rate).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long idle connections are held (default: --duration; storm: 1s).
    #[arg(long, value_parser = parse_duration)]
    hold: Option<Duration>,
    /// Frame / write size in bytes (bulk).
    #[arg(long, default_value_t = 65536)]
    frame: usize,
    /// Connect and handshake timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    json: bool,
    /// Draw the latency distribution as SVG into this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS flags, for every scenario and for compare.
#[derive(Args, Debug, Clone, Default)]
struct TlsArgs {
    /// Speak TLS to the target: `wss://` with --proto ws, TLS raw TCP with --proto tcp.
    #[arg(long)]
    tls: bool,
    /// PEM file of the CA that signed the target's certificate (with --tls).
    #[arg(long, requires = "tls", conflicts_with = "insecure")]
    ca: Option<std::path::PathBuf>,
    /// Accept any certificate (with --tls; signatures are still checked).
    #[arg(long, requires = "tls")]
    insecure: bool,
    /// Server name to send and verify (default: the --target host).
    #[arg(long, requires = "tls")]
    sni: Option<String>,
    /// Turn session resumption off: every handshake is a full one (rate and storm then
    /// measure CPU per full handshake; with resumption, per resumed one).
    #[arg(long, requires = "tls")]
    no_resume: bool,
}

impl TlsArgs {
    fn options(&self) -> Option<loadgen::tls::TlsOptions> {
        self.tls.then(|| loadgen::tls::TlsOptions {
            ca: self.ca.clone(),
            insecure: self.insecure,
            sni: self.sni.clone(),
            resume: !self.no_resume,
        })
    }
}

#[derive(Args, Debug)]
struct RebalanceArgs {
    /// The gateway, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// Request path of the WebSocket upgrade.
    #[arg(long, default_value = "/")]
    path: String,
    /// WebSocket clients held (client i sends `X-Device: dev-i`).
    #[arg(long, default_value_t = 300)]
    conns: usize,
    /// Run time (capped at 1h).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// How often connections per backend are counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Connect and handshake timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// A shell command run once at --trigger-after (a reload, a DNS change: the scale-out).
    #[arg(long, requires = "trigger_after")]
    trigger: Option<String>,
    #[arg(long, value_parser = parse_duration, requires = "trigger")]
    trigger_after: Option<Duration>,
    /// Print the timeline as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Draw connections per backend over time as SVG into this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// The plot's title (default: the connection count and target).
    #[arg(long, requires = "plot")]
    title: Option<String>,
}

#[derive(Args, Debug)]
struct BackendArgs {
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    #[arg(long, value_enum, default_value_t = Mode::Ws)]
    mode: Mode,
    #[arg(long, default_value = "backend")]
    name: String,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[arg(long, value_enum, default_value_t = Kind::Pingpong)]
    scenario: Kind,
    /// Gateway command with {LISTEN} and {BACKENDS}; repeatable. Default: ringway's
    /// release binary, if built.
    #[arg(long = "gateway-cmd")]
    gateway_cmd: Vec<String>,
    /// Names for the gateway commands, in order.
    #[arg(long)]
    name: Vec<String>,
    /// Also measure a packaged peer (haproxy, haproxy-splice, nginx); repeatable.
    #[arg(long, value_enum)]
    peer: Vec<Peer>,
    /// Echo backends to start.
    #[arg(long, default_value_t = 3)]
    backends: usize,
    /// Threads every gateway runs (HAProxy nbthread, nginx worker_processes, {WORKERS} in a
    /// --gateway-cmd). Default: one per core. Every --gateway-cmd must then use {WORKERS}.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    gateway_threads: Option<u16>,
    /// How long a gateway may take to start forwarding.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    startup_timeout: Duration,
    #[command(flatten)]
    scenario_args: ScenarioArgs,
}

/// With `--gateway-threads`, every gateway command must take its thread count from
/// `{WORKERS}`: one that keeps its own would not be compared like for like.
fn check_gateway_threads(gateways: &[GatewaySpec], threads: Option<u16>) -> Result<()> {
    if threads.is_none() {
        return Ok(());
    }
    if let Some(g) = gateways.iter().find(|g| !g.cmd.contains("{WORKERS}")) {
        bail!(
            "--gateway-threads: gateway {:?} has no {{WORKERS}} in its command, so it would run \
             its own thread count and the comparison would not be like for like",
            g.name
        );
    }
    Ok(())
}

/// "5s", "250ms", "2m", "1h", "1.5" (seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 5s, 500ms, 1m)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

fn run_config(
    a: &ScenarioArgs,
    kind: Kind,
    target: SocketAddr,
    live: Arc<Live>,
) -> Result<RunConfig> {
    let mut c = RunConfig::new(target, a.proto);
    if let Some(o) = a.tls.options() {
        c.tls = Some(Arc::new(loadgen::tls::TlsClient::new(&o, &a.target)?));
    }
    c.path = a.path.clone();
    c.host = a.target.clone();
    c.conns = a.conns.unwrap_or(match kind {
        Kind::Pingpong => 10,
        Kind::Idle => 1000,
        Kind::Bulk => 4,
        Kind::Rate => a.concurrency,
        Kind::Storm => loadgen::scenario::storm::DEFAULT_STORM_CONNS,
    });
    c.size = a.size;
    c.rate = a.rate.filter(|r| *r > 0.0);
    c.duration = a.duration;
    c.concurrency = a.concurrency;
    c.hold = a.hold.unwrap_or(match kind {
        Kind::Storm => Duration::from_secs(1),
        _ => a.duration,
    });
    c.frame = a.frame;
    c.connect_timeout = a.connect_timeout;
    c.live = live;
    Ok(c.clamp())
}

/// A progress line on stderr for runs longer than 3 s, only on a terminal. Returns a
/// guard that clears it.
fn progress(kind: Kind, total: Duration, live: Arc<Live>) -> Option<tokio::task::JoinHandle<()>> {
    if total <= Duration::from_secs(3) || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total.as_secs().max(1));
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    Some(tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        loop {
            let el = start.elapsed();
            pb.set_position(el.as_secs().min(total.as_secs()));
            let msg = match kind {
                Kind::Bulk => format!("{:.1} MB", live.bytes.load(Ordering::Relaxed) as f64 / 1e6),
                _ => format!(
                    "{} msgs, {} conns, {} errors",
                    live.messages.load(Ordering::Relaxed),
                    live.conns.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed)
                ),
            };
            pb.set_message(msg);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = tokio::signal::ctrl_c() => break,
            }
            if el > total * 4 + Duration::from_secs(60) {
                break;
            }
        }
        pb.finish_and_clear();
    }))
}

fn write_plot(path: &std::path::Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

async fn resolve(target: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(target)
        .await
        .with_context(|| format!("resolving {target}"))?
        .next()
        .with_context(|| format!("{target} has no address"))
}

async fn scenario_cmd(kind: Kind, a: ScenarioArgs) -> Result<()> {
    if let Err(e) = loadgen::limits::raise_nofile() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    let target = resolve(&a.target).await?;
    let live = Arc::new(Live::default());
    let cfg = run_config(&a, kind, target, live.clone())?;
    if cfg.tls.is_some() {
        tls_preflight(&cfg).await?;
    }
    let expected = match kind {
        Kind::Idle => cfg.hold + cfg.duration.min(Duration::from_secs(1)),
        Kind::Storm => cfg.hold + cfg.duration,
        _ => cfg.duration,
    };
    let bar = progress(kind, expected, live);
    let report = loadgen::run_scenario(kind, &cfg).await;
    if let Some(b) = bar {
        b.abort();
        let _ = b.await;
        eprint!("\r\x1b[2K");
    }
    if let Some(p) = &a.plot {
        match &report.hist {
            Some(h) => write_plot(
                p,
                &plot_svg(
                    &format!("{:?} to {}", kind, a.target),
                    &[(a.target.clone(), h)],
                ),
            )?,
            None => eprintln!("note: {kind:?} records no latencies; no plot written"),
        }
    }
    print_report(&report, a.json)
}

/// One connection before the run, so that a TLS setup error (wrong CA, wrong name, not a
/// TLS port) is one clear message instead of a run of identical failures.
async fn tls_preflight(cfg: &RunConfig) -> Result<()> {
    match loadgen::scenario::Conn::open(cfg, 0).await {
        Ok(c) => {
            c.close().await;
            Ok(())
        }
        Err(e) => match loadgen::tls::explain(&e.0) {
            Some(why) => bail!("TLS handshake with {} failed ({}): {why}", cfg.host, e.0),
            None => bail!("connecting to {} over TLS failed: {}", cfg.host, e.0),
        },
    }
}

fn print_report(report: &Report, json: bool) -> Result<()> {
    let machine = Machine::detect();
    if json {
        let v = serde_json::json!({ "machine": machine, "report": report });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print!("{}", report.human());
        println!("{}", machine.human());
    }
    Ok(())
}

async fn rebalance_cmd(a: RebalanceArgs) -> Result<()> {
    use loadgen::scenario::rebalance;
    if let Err(e) = loadgen::limits::raise_nofile() {
        eprintln!("warning: could not raise RLIMIT_NOFILE: {e}");
    }
    let target = resolve(&a.target).await?;
    let mut cfg = RunConfig::new(target, Proto::Ws);
    cfg.path = a.path.clone();
    cfg.host = a.target.clone();
    cfg.conns = a.conns;
    cfg.duration = a.duration;
    cfg.connect_timeout = a.connect_timeout;
    let cfg = cfg.clamp();
    let opts = rebalance::Options {
        interval: a.interval,
        trigger: a.trigger_after.zip(a.trigger.clone()),
    };
    let timeline = tokio::select! {
        t = rebalance::run(&cfg, &opts, !a.json) => t,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    };
    if let Some(p) = &a.plot {
        let title = a.title.clone().unwrap_or_else(|| {
            format!("{} WebSockets through {}, per backend", cfg.conns, a.target)
        });
        write_plot(p, &rebalance::plot_svg(&title, &timeline))?;
    }
    if a.json {
        let v = serde_json::json!({ "machine": Machine::detect(), "timeline": timeline });
        println!("{}", serde_json::to_string(&v)?);
    } else if !timeline.errors.is_empty() {
        println!("connect errors: {:?}", timeline.errors);
    }
    Ok(())
}

async fn backend_cmd(a: BackendArgs) -> Result<()> {
    loadgen::limits::raise_nofile().ok();
    let addr = resolve(&a.listen).await?;
    let listener =
        loadgen::backend::listen(addr).with_context(|| format!("binding {}", a.listen))?;
    eprintln!(
        "echo backend {} ({:?}) on {}",
        a.name,
        a.mode,
        listener.local_addr()?
    );
    tokio::select! {
        r = loadgen::run_backend(listener, a.mode, a.name) => r.map_err(Into::into),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn compare_cmd(a: CompareArgs) -> Result<()> {
    let s = &a.scenario_args;
    let live = Arc::new(Live::default());
    // The target is replaced per run; any address will do here.
    if s.tls.ca.is_some() || s.tls.insecure || s.tls.sni.is_some() {
        bail!("compare --tls makes its own CA and certificate (for localhost): drop --ca/--insecure/--sni");
    }
    let mut plain = s.clone();
    plain.tls = TlsArgs::default();
    let mut run = run_config(&plain, a.scenario, "127.0.0.1:1".parse()?, live)?;
    run.host = String::new();
    let mut gateways: Vec<GatewaySpec> = a
        .gateway_cmd
        .iter()
        .enumerate()
        .map(|(i, cmd)| GatewaySpec {
            name: a
                .name
                .get(i)
                .cloned()
                .unwrap_or_else(|| compare::default_name(cmd, i)),
            cmd: cmd.clone(),
        })
        .collect();
    if gateways.is_empty() {
        match compare::default_gateway(s.proto, s.tls.tls) {
            Some(g) => gateways.push(g),
            None => eprintln!("note: no --gateway-cmd and no target/release/ringway: measuring direct and peers only"),
        }
    }
    if gateways.iter().any(|g| !g.cmd.contains("{LISTEN}")) {
        bail!("every --gateway-cmd needs {{LISTEN}} (and usually {{BACKENDS}})");
    }
    check_gateway_threads(&gateways, a.gateway_threads)?;
    let cfg = CompareConfig {
        kind: a.scenario,
        run,
        gateways,
        peers: a.peer.clone(),
        backends: a.backends.clamp(1, 64),
        gateway_threads: a.gateway_threads.map(usize::from),
        startup_timeout: a.startup_timeout,
        tls: s.tls.tls.then_some(compare::TlsCompare {
            resume: !s.tls.no_resume,
        }),
    };
    let quiet = s.json;
    let note = move |m: &str| {
        if !quiet || std::io::stderr().is_terminal() {
            eprintln!("loadgen: {m}");
        }
    };
    let result = tokio::select! {
        r = compare::run_compare(&cfg, &note) => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: gateways stopped"),
    };
    if let Some(p) = &s.plot {
        write_plot(p, &compare::plot(&result))?;
    }
    if s.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", compare::human(&result));
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build()?;
    let r = rt.block_on(async move {
        match cli.cmd {
            Cmd::Pingpong(a) => scenario_cmd(Kind::Pingpong, a).await,
            Cmd::Rate(a) => scenario_cmd(Kind::Rate, a).await,
            Cmd::Idle(a) => scenario_cmd(Kind::Idle, a).await,
            Cmd::Bulk(a) => scenario_cmd(Kind::Bulk, a).await,
            Cmd::Storm(a) => scenario_cmd(Kind::Storm, a).await,
            Cmd::Rebalance(a) => rebalance_cmd(a).await,
            Cmd::Backend(a) => backend_cmd(a).await,
            Cmd::Compare(a) => compare_cmd(a).await,
        }
    });
    // Tasks still parked on sockets must not keep the process alive.
    rt.shutdown_timeout(Duration::from_millis(500));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn cli_parses_rebalance() {
        let c = Cli::try_parse_from([
            "loadgen",
            "rebalance",
            "--conns",
            "20",
            "--trigger-after",
            "8s",
            "--trigger",
            "true",
        ])
        .unwrap();
        let Cmd::Rebalance(a) = c.cmd else { panic!() };
        assert_eq!(
            (a.conns, a.trigger_after),
            (20, Some(Duration::from_secs(8)))
        );
        assert!(Cli::try_parse_from(["loadgen", "rebalance", "--trigger", "true"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "rebalance", "--title", "x"]).is_err());
    }

    #[test]
    fn cli_parses_compare() {
        let c = Cli::try_parse_from([
            "loadgen",
            "compare",
            "--scenario",
            "idle",
            "--conns",
            "100",
            "--gateway-cmd",
            "x {LISTEN} {BACKENDS}",
            "--peer",
            "haproxy",
            "--peer",
            "nginx",
            "--json",
        ])
        .unwrap();
        let Cmd::Compare(a) = c.cmd else { panic!() };
        assert_eq!(a.scenario, Kind::Idle);
        assert_eq!(a.peer, vec![Peer::Haproxy, Peer::Nginx]);
        assert_eq!(a.scenario_args.conns, Some(100));
        assert!(a.scenario_args.json);
    }

    #[test]
    fn gateway_threads_need_every_command_to_take_them() {
        let c = Cli::try_parse_from(["loadgen", "compare", "--gateway-threads", "1"]).unwrap();
        let Cmd::Compare(a) = c.cmd else { panic!() };
        assert_eq!(a.gateway_threads, Some(1));
        for bad in ["0", "-1", "x", "1025"] {
            assert!(
                Cli::try_parse_from(["loadgen", "compare", "--gateway-threads", bad]).is_err(),
                "{bad}"
            );
        }
        let spec = |cmd: &str| GatewaySpec {
            name: "g".into(),
            cmd: cmd.into(),
        };
        let takes = spec("gw --workers {WORKERS} {LISTEN}");
        let keeps = spec("gw {LISTEN}");
        assert!(check_gateway_threads(std::slice::from_ref(&takes), Some(1)).is_ok());
        assert!(check_gateway_threads(std::slice::from_ref(&keeps), None).is_ok());
        let e = check_gateway_threads(&[takes, keeps], Some(2)).unwrap_err();
        assert!(e.to_string().contains("{WORKERS}"), "{e}");
    }

    #[test]
    fn cli_parses_storm_with_haproxy_splice() {
        let c = Cli::try_parse_from([
            "loadgen",
            "compare",
            "--scenario",
            "storm",
            "--peer",
            "haproxy-splice",
        ])
        .unwrap();
        let Cmd::Compare(a) = c.cmd else { panic!() };
        assert_eq!(a.scenario, Kind::Storm);
        assert_eq!(a.peer, vec![Peer::HaproxySplice]);
        let rc = run_config(
            &a.scenario_args,
            Kind::Storm,
            "127.0.0.1:1".parse().unwrap(),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(rc.conns, 5000);
        assert_eq!(rc.hold, Duration::from_secs(1));
        let c = Cli::try_parse_from(["loadgen", "storm", "--conns", "7"]).unwrap();
        let Cmd::Storm(a) = c.cmd else { panic!() };
        assert_eq!(a.conns, Some(7));
    }

    #[test]
    fn tls_flags_parse_and_are_checked() {
        let c = Cli::try_parse_from([
            "loadgen",
            "rate",
            "--tls",
            "--insecure",
            "--sni",
            "a.example",
            "--no-resume",
        ])
        .unwrap();
        let Cmd::Rate(a) = c.cmd else { panic!() };
        let o = a.tls.options().unwrap();
        assert!(o.insecure && !o.resume);
        assert_eq!(o.sni.as_deref(), Some("a.example"));
        let rc = run_config(
            &a,
            Kind::Rate,
            "127.0.0.1:1".parse().unwrap(),
            Arc::default(),
        )
        .unwrap();
        assert_eq!(rc.tls.as_ref().unwrap().server_name(), "a.example");
        assert!(!rc.tls.as_ref().unwrap().resume);
        // --ca and --insecure exclude each other; TLS flags need --tls.
        assert!(
            Cli::try_parse_from(["loadgen", "pingpong", "--tls", "--ca", "x", "--insecure"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["loadgen", "pingpong", "--insecure"]).is_err());
        // --tls alone is refused with a message naming the flags.
        let c = Cli::try_parse_from(["loadgen", "pingpong", "--tls"]).unwrap();
        let Cmd::Pingpong(a) = c.cmd else { panic!() };
        let e = run_config(
            &a,
            Kind::Pingpong,
            "127.0.0.1:1".parse().unwrap(),
            Arc::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--insecure"), "{e:#}");
    }
}
