//! Side-by-side comparison: the same scenario direct to an echo backend (the physical
//! limit) and through each gateway, with the gateway's own cost measured from /proc.
//!
//! The echo backends run inside this process, so their CPU is never counted as the
//! gateway's: the gateway's cost is the CPU time (user + system, all threads, all
//! descendant processes) of the process tree started by its command, sampled right before
//! and right after the scenario, and its RSS summed over that tree at the end of the idle
//! hold. Every gateway is stopped (SIGTERM to its process group, SIGKILL after 3 s) when its
//! run ends, on error, and when the comparison is dropped (Ctrl-C in the CLI).

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::backend::{spawn_backend, Mode};
use crate::procstat;
use crate::report::{fmt_us, Latency, Machine, Report};
use crate::scenario::{self, Kind, Proto, RunConfig};
use crate::tls::{CertSet, TlsClient, TlsOptions};
use crate::ws::WsClient;

/// A gateway to measure: a display name and a shell command with `{LISTEN}` and
/// `{BACKENDS}` placeholders.
#[derive(Debug, Clone, Serialize)]
pub struct GatewaySpec {
    pub name: String,
    pub cmd: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    Haproxy,
    /// HAProxy with `option splice-auto`: the kernel splices a direction once HAProxy sees
    /// that its buffers fill (the peer closest to ringway's adaptive tunnel).
    HaproxySplice,
    Nginx,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Haproxy => "haproxy",
            Peer::HaproxySplice => "haproxy-splice",
            Peer::Nginx => "nginx",
        }
    }
    pub fn binary(self) -> &'static str {
        match self {
            Peer::Haproxy | Peer::HaproxySplice => "/usr/sbin/haproxy",
            Peer::Nginx => "/usr/sbin/nginx",
        }
    }
    /// The Debian package that provides it.
    pub fn package(self) -> &'static str {
        match self {
            Peer::Haproxy | Peer::HaproxySplice => "haproxy",
            Peer::Nginx => "nginx",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub kind: Kind,
    /// Scenario settings; the target is replaced for each run.
    pub run: RunConfig,
    pub gateways: Vec<GatewaySpec>,
    pub peers: Vec<Peer>,
    pub backends: usize,
    /// Threads every gateway runs: HAProxy's `nbthread`, nginx's `worker_processes`, a
    /// gateway command's `{WORKERS}`. `None`: one per core.
    pub gateway_threads: Option<usize>,
    /// How long a gateway may take to start answering.
    pub startup_timeout: Duration,
    /// `--tls`: every gateway terminates TLS with one certificate made for this run (the
    /// echo backends and the direct run stay plaintext).
    pub tls: Option<TlsCompare>,
}

#[derive(Debug, Clone, Copy)]
pub struct TlsCompare {
    /// Offer session resumption (else every handshake is full).
    pub resume: bool,
}

/// The name the run-time certificate is made for, and that clients verify.
pub const TLS_NAME: &str = "localhost";

/// What `compare --tls` says when the ringway binary cannot terminate TLS.
pub const RINGWAY_NO_TLS: &str = "this ringway binary has no --tls-cert: TLS termination \
     (issue 13, branch `tls`) is not merged yet, so ringway's TLS column stays empty";

/// The default ringway command for a protocol (with its TLS quick form under `--tls`), if
/// the release binary exists.
pub fn default_gateway(proto: Proto, tls: bool) -> Option<GatewaySpec> {
    let bin = "target/release/ringway";
    Path::new(bin).exists().then(|| GatewaySpec {
        name: "ringway".into(),
        cmd: format!(
            "{bin} run --admin '' --workers {{WORKERS}} --listen {{LISTEN}} --backend {{BACKENDS}} --mode {}{}",
            match proto {
                Proto::Ws => "http",
                Proto::Tcp => "tcp",
            },
            if tls {
                " --tls-cert {CERT} --tls-key {KEY}"
            } else {
                ""
            }
        ),
    })
}

/// Whether a gateway command runs ringway.
pub fn is_ringway(cmd: &str) -> bool {
    default_name(cmd, 0) == "ringway"
}

/// Whether the ringway binary a command starts knows `--tls-cert` (asks its `run --help`).
/// Nothing is guessed: no flag in the help, no TLS run.
pub fn ringway_has_tls(cmd: &str) -> bool {
    let Some(prog) = cmd.split_whitespace().next() else {
        return false;
    };
    Command::new(prog)
        .args(["run", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("--tls-cert"))
        .unwrap_or(false)
}

/// A name for a command: "ringway" when it runs ringway, else the program's file name.
pub fn default_name(cmd: &str, i: usize) -> String {
    let prog = cmd.split_whitespace().next().unwrap_or("gateway");
    let base = prog.rsplit('/').next().unwrap_or(prog);
    if base.is_empty() {
        format!("gateway{}", i + 1)
    } else {
        base.to_string()
    }
}

/// What a gateway cost during the run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GatewayCost {
    pub cpu_s: f64,
    /// What the CPU is divided by: message, handshake, MB or connection.
    pub unit: String,
    pub units: f64,
    pub cpu_us_per_unit: Option<f64>,
    pub rss_bytes_start: u64,
    pub rss_bytes_end: u64,
    /// (RSS at the end of the idle hold − RSS before) / connections held (idle only).
    pub rss_per_conn_bytes: Option<f64>,
    pub processes: usize,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Ratios {
    /// Throughput ÷ direct throughput.
    pub throughput_vs_direct: Option<f64>,
    /// p99 latency ÷ direct p99.
    pub p99_vs_direct: Option<f64>,
    /// CPU per unit ÷ ringway's (RSS per connection for idle).
    pub cost_vs_ringway: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    pub name: String,
    /// "direct", "gateway" or "peer".
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub report: Report,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayCost>,
    pub ratios: Ratios,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareResult {
    pub machine: Machine,
    pub scenario: Kind,
    pub proto: Proto,
    pub conns: usize,
    pub size: usize,
    pub duration_s: f64,
    pub backends: Vec<String>,
    /// Threads each gateway ran (`--gateway-threads`; one per core when not given).
    pub gateway_threads: usize,
    pub targets: Vec<TargetResult>,
    /// Targets that could not be measured, with the reason.
    pub skipped: Vec<String>,
    /// With `--tls`: what the gateways terminated ("direct" stays plaintext).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
}

/// The headline throughput of a report.
pub fn throughput(kind: Kind, r: &Report) -> Option<f64> {
    match kind {
        Kind::Pingpong => r.msgs_per_s,
        Kind::Rate => r.handshakes_per_s,
        Kind::Bulk => r.mb_per_s_down,
        Kind::Idle => r.survived.map(|v| v as f64),
        Kind::Storm => r.conns_per_s,
    }
}

fn throughput_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Pingpong => "msgs/s",
        Kind::Rate => "hs/s",
        Kind::Bulk => "MB/s",
        Kind::Idle => "survived",
        Kind::Storm => "conns/s",
    }
}

/// The unit gateway CPU is divided by, and how many of them the run moved.
fn units(kind: Kind, r: &Report) -> (&'static str, f64) {
    match kind {
        Kind::Pingpong => ("message", r.messages as f64),
        Kind::Rate => ("handshake", r.handshakes.unwrap_or(0) as f64),
        Kind::Bulk => (
            "MB",
            (r.bytes_sent.unwrap_or(0) + r.bytes_received.unwrap_or(0)) as f64 / 1e6,
        ),
        Kind::Idle => ("connection", r.opened.unwrap_or(0) as f64),
        Kind::Storm => ("connection", r.established.unwrap_or(0) as f64),
    }
}

/// Fills `{LISTEN}`, `{BACKENDS}` and `{WORKERS}` (the threads every gateway gets).
pub fn render(cmd: &str, listen: &str, backends: &str, workers: usize) -> String {
    cmd.replace("{LISTEN}", listen)
        .replace("{BACKENDS}", backends)
        .replace("{WORKERS}", &workers.to_string())
}

/// The threads every gateway gets in this run: `--gateway-threads`, else one per core.
pub fn gateway_threads(cfg: &CompareConfig, nproc: usize) -> usize {
    cfg.gateway_threads.unwrap_or(nproc).max(1)
}

/// Fills `{CERT}`, `{KEY}` (PEM files like a Kubernetes TLS Secret's), `{PEM}` (both in one
/// file) and `{CA}`.
pub fn render_tls(cmd: &str, c: &CertSet) -> String {
    cmd.replace("{CERT}", &c.cert.display().to_string())
        .replace("{KEY}", &c.key.display().to_string())
        .replace("{PEM}", &c.combined.display().to_string())
        .replace("{CA}", &c.ca.display().to_string())
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A gateway process group. Dropping it stops the whole group and any descendant seen.
pub struct GatewayProc {
    child: Child,
    pub log: PathBuf,
    stopped: bool,
}

impl GatewayProc {
    pub fn spawn(cmd: &str, log: PathBuf) -> Result<GatewayProc> {
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting `{cmd}`"))?;
        Ok(GatewayProc {
            child,
            log,
            stopped: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Some(status)` when the gateway has exited by itself.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// The last lines of the gateway's output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// SIGTERM to the group, SIGKILL to the group and every descendant seen after 3 s.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid();
        let seen = procstat::tree(pid);
        // SAFETY: kill(2) with a negative pid signals the process group we created with
        // process_group(0); no memory is involved.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let until = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                if seen.iter().all(|p| *p == pid || !alive(*p)) {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; the pids were our descendants a moment ago.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            for p in &seen {
                if *p != pid && alive(*p) {
                    libc::kill(*p, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.wait();
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rfind(')')
            .map(|i| s[i + 1..].trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory: the process id and a per-process sequence number keep two
    /// directories of the same tag (parallel runs in one process) apart.
    pub fn new(tag: &str) -> io::Result<TempDir> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("loadgen-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pipes HAProxy may keep for splicing (`maxpipes`, with splice only). HAProxy's default
/// is maxconn / 4, and it refuses to start when 2 × maxconn + 2 × maxpipes fds exceed the
/// hard limit it may raise to; a pipe is only held while a direction has bytes in flight,
/// so 512 is plenty for the bulk runs and leaves room for 9,000 idle connections.
pub const HAPROXY_MAXPIPES: u64 = 512;

/// HAProxy's `maxconn` for an fd hard limit: two fds per proxied connection (and two per
/// pipe with splice) plus 100 spare must fit.
pub fn haproxy_maxconn(nofile_hard: u64, splice: bool) -> u64 {
    let pipes = if splice { 2 * HAPROXY_MAXPIPES } else { 0 };
    (nofile_hard.saturating_sub(100 + pipes) / 2).max(1000)
}

/// HAProxy configuration for the Debian package: `threads` threads, no logging, long
/// tunnel timeouts, round robin over the backends; with `splice`, `option splice-auto`.
pub fn haproxy_config(
    proto: Proto,
    listen: &str,
    backends: &[String],
    threads: usize,
    maxconn: u64,
    splice: bool,
    tls: Option<&CertSet>,
) -> String {
    let mode = match proto {
        Proto::Ws => "http",
        Proto::Tcp => "tcp",
    };
    let mut s = format!(
        "global\n    nbthread {threads}\n    maxconn {maxconn}\n\n\
         defaults\n    mode {mode}\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
         \x20   timeout tunnel 1h\n    no option http-server-close\n    no log\n\n\
         frontend fe\n    bind {listen}\n    default_backend be\n\n\
         backend be\n    balance roundrobin\n"
    );
    if proto == Proto::Tcp {
        s = s.replace("    no option http-server-close\n", "");
    }
    if splice {
        s = s.replace(
            &format!("    maxconn {maxconn}\n"),
            &format!("    maxconn {maxconn}\n    maxpipes {HAPROXY_MAXPIPES}\n"),
        );
        s = s.replace("    no log\n", "    no log\n    option splice-auto\n");
    }
    if let Some(c) = tls {
        // The certificate and key in one PEM; tickets and the session cache are HAProxy's
        // defaults (on).
        s = s.replace(
            &format!("    bind {listen}\n"),
            &format!("    bind {listen} ssl crt {}\n", c.combined.display()),
        );
    }
    for (i, b) in backends.iter().enumerate() {
        let _ = writeln!(s, "    server b{i} {b}");
    }
    s
}

/// nginx configuration for the Debian package: `workers` worker processes (`None`: one per
/// core), logging off, the upgrade headers forwarded, hour-long read timeouts; a `stream {}`
/// block for raw TCP.
pub fn nginx_config(
    proto: Proto,
    listen: &str,
    backends: &[String],
    workers: Option<usize>,
    dir: &Path,
    nofile: u64,
    tls: Option<&CertSet>,
) -> String {
    let d = dir.display();
    let mut s = String::new();
    if proto == Proto::Tcp {
        for m in [
            "/usr/lib/nginx/modules/ngx_stream_module.so",
            "/usr/share/nginx/modules/ngx_stream_module.so",
        ] {
            if Path::new(m).exists() {
                let _ = writeln!(s, "load_module {m};");
                break;
            }
        }
    }
    // worker_connections counts both sides of a proxied connection and applies per worker;
    // nginx does not spread accepts evenly over its workers, so each worker may need room
    // for all of them (with nofile / 2, 9,000 idle clients lost 5-20% to "worker_connections
    // are not enough").
    let workers_conns = nofile.saturating_sub(100).clamp(1024, 65536);
    let workers = workers.map_or("auto".to_string(), |n| n.max(1).to_string());
    let _ = write!(
        s,
        "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
         error_log /dev/null crit;\nworker_rlimit_nofile {nofile};\n\
         events {{\n    worker_connections {workers_conns};\n}}\n"
    );
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    // `listen ... ssl` with the certificate; TLS 1.3 allowed (nginx 1.22's default stops at
    // 1.2, which made it a different protocol from every other target); a shared session
    // cache beside the (default on) tickets, as a production nginx would have.
    let (ssl, ssl_conf) = match tls {
        Some(c) => (
            " ssl",
            format!(
                "        ssl_certificate {};\n        ssl_certificate_key {};\n\
                 \x20       ssl_protocols TLSv1.2 TLSv1.3;\n\
                 \x20       ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;\n",
                c.cert.display(),
                c.key.display()
            ),
        ),
        None => ("", String::new()),
    };
    match proto {
        Proto::Ws => {
            let _ = write!(
                s,
                "http {{\n    access_log off;\n\
                 \x20   client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n\
                 \x20   fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n\
                 \x20   upstream be {{\n{servers}    }}\n\
                 \x20   server {{\n        listen {listen}{ssl};\n{ssl_conf}        location / {{\n\
                 \x20           proxy_pass http://be;\n            proxy_http_version 1.1;\n\
                 \x20           proxy_set_header Upgrade $http_upgrade;\n\
                 \x20           proxy_set_header Connection \"upgrade\";\n\
                 \x20           proxy_read_timeout 3600s;\n            proxy_send_timeout 3600s;\n\
                 \x20           proxy_buffering off;\n        }}\n    }}\n}}\n"
            );
        }
        Proto::Tcp => {
            let _ = write!(
                s,
                "stream {{\n    upstream be {{\n{servers}    }}\n\
                 \x20   server {{\n        listen {listen}{ssl};\n{ssl_conf}        proxy_pass be;\n        proxy_timeout 1h;\n    }}\n}}\n"
            );
        }
    }
    s
}

/// Checks that a target forwards: one WebSocket echo or one TCP echo (over TLS with
/// `tls`), bounded by `timeout`.
pub async fn probe(
    addr: std::net::SocketAddr,
    proto: Proto,
    tls: Option<&TlsClient>,
    timeout: Duration,
) -> Result<()> {
    let fut = async {
        if let Some(t) = tls {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let mut s = crate::stream::ClientStream::Tls(Box::new(t.handshake(tcp).await?));
            match proto {
                Proto::Ws => {
                    let host = format!("{TLS_NAME}:{}", addr.port());
                    let (mut c, _) = WsClient::handshake(s, &host, "/", &[]).await?;
                    c.send_binary(b"probe").await?;
                    let mut out = Vec::new();
                    c.recv_into(&mut out).await?;
                    if out != b"probe" {
                        bail!("wrong echo");
                    }
                }
                Proto::Tcp => {
                    s.write_all(b"probe").await?;
                    s.flush().await?;
                    let mut b = [0u8; 5];
                    s.read_exact(&mut b).await?;
                    if &b != b"probe" {
                        bail!("wrong echo");
                    }
                }
            }
            return Ok(());
        }
        match proto {
            Proto::Ws => {
                let (mut c, _) = WsClient::connect(&addr.to_string(), "/", &[]).await?;
                c.send_binary(b"probe").await?;
                let mut out = Vec::new();
                c.recv_into(&mut out).await?;
                if out != b"probe" {
                    bail!("wrong echo");
                }
            }
            Proto::Tcp => {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                s.write_all(b"probe").await?;
                let mut b = [0u8; 5];
                s.read_exact(&mut b).await?;
                if &b != b"probe" {
                    bail!("wrong echo");
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("probe timed out"))?
}

async fn wait_ready(
    gw: &mut GatewayProc,
    addr: std::net::SocketAddr,
    proto: Proto,
    tls: Option<&TlsClient>,
    limit: Duration,
) -> Result<()> {
    let until = Instant::now() + limit;
    let mut last = anyhow!("never tried");
    while Instant::now() < until {
        if let Some(status) = gw.exited() {
            bail!(
                "the gateway exited ({status}) before accepting; its output:\n{}",
                gw.log_tail()
            );
        }
        match probe(addr, proto, tls, Duration::from_secs(2)).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the gateway did not forward within {limit:?} (last error: {last}); its output:\n{}",
        gw.log_tail()
    )
}

/// Runs the comparison. Progress notes go to `note` (stderr in the CLI).
pub async fn run_compare(cfg: &CompareConfig, note: &dyn Fn(&str)) -> Result<CompareResult> {
    crate::limits::raise_nofile().ok();
    let mode = match cfg.run.proto {
        Proto::Ws => Mode::Ws,
        Proto::Tcp => Mode::Tcp,
    };
    let mut backends = Vec::new();
    for i in 0..cfg.backends.max(1) {
        backends.push(spawn_backend(mode, &format!("backend-{i}")).await?);
    }
    let backend_addrs: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut result = new_result(cfg, &backend_addrs);
    // One certificate for every gateway, made now, removed with the directory.
    let cert_dir = TempDir::new("tls")?;
    let certs = match cfg.tls {
        None => None,
        Some(t) => Some(make_certs(&cert_dir, t, &mut result, note)?),
    };
    let direct = run_direct(cfg, backends[0].addr, note).await;
    result.targets.push(direct);
    let jobs = gateway_jobs(cfg, &mut result.skipped, note);
    let setup = Setup {
        backends: &backend_addrs,
        certs: certs.as_ref(),
        machine: &result.machine,
    };
    let (mut targets, mut skipped) = (Vec::new(), Vec::new());
    for job in jobs {
        match run_gateway(cfg, &setup, job, note).await? {
            Ok(t) => targets.push(t),
            Err(why) => {
                note(&why);
                skipped.push(why);
            }
        }
    }
    result.targets.extend(targets);
    result.skipped.extend(skipped);
    compute_ratios(cfg.kind, &mut result.targets);
    drop(backends);
    Ok(result)
}

/// The result before any run: the machine and what is measured.
fn new_result(cfg: &CompareConfig, backends: &[String]) -> CompareResult {
    CompareResult {
        machine: Machine::detect(),
        scenario: cfg.kind,
        proto: cfg.run.proto,
        conns: match cfg.kind {
            Kind::Rate => cfg.run.concurrency,
            Kind::Storm => cfg.run.conns.min(scenario::storm::MAX_STORM_CONNS),
            _ => cfg.run.conns,
        },
        size: if cfg.kind == Kind::Bulk {
            cfg.run.frame
        } else {
            cfg.run.size
        },
        duration_s: cfg.run.duration.as_secs_f64(),
        backends: backends.to_vec(),
        gateway_threads: gateway_threads(cfg, Machine::detect().nproc),
        targets: vec![],
        skipped: vec![],
        tls: None,
    }
}

/// What every gateway run shares: the backends' addresses, the TLS certificate, the machine.
struct Setup<'a> {
    backends: &'a [String],
    certs: Option<&'a CertSet>,
    machine: &'a Machine,
}

/// A gateway to measure: a given command, or a peer whose binary exists.
struct Job {
    spec: GatewaySpec,
    kind: &'static str,
    peer: Option<Peer>,
}

/// The run's TLS certificate (one for every gateway), noted in the result.
fn make_certs(
    dir: &TempDir,
    t: TlsCompare,
    result: &mut CompareResult,
    note: &dyn Fn(&str),
) -> Result<CertSet> {
    let c = crate::tls::generate_certs(&dir.0, &[TLS_NAME, "127.0.0.1"])?;
    result.tls = Some(format!(
        "gateways terminate TLS (rustls client, ECDSA P-256 certificate for {TLS_NAME}, \
         resumption {}); direct is plaintext to the echo backend",
        if t.resume { "on" } else { "off" }
    ));
    note(&format!(
        "TLS certificate for {TLS_NAME} in {}",
        dir.0.display()
    ));
    Ok(c)
}

/// The scenario straight to the first echo backend: the limit every ratio is taken against.
async fn run_direct(
    cfg: &CompareConfig,
    backend: std::net::SocketAddr,
    note: &dyn Fn(&str),
) -> TargetResult {
    note(&format!("direct → {backend}"));
    let mut run = cfg.run.clone();
    run.target = backend;
    run.host = run.target.to_string();
    TargetResult {
        name: "direct".into(),
        kind: "direct".into(),
        command: None,
        report: scenario_run(cfg.kind, &run, None).await.0,
        gateway: None,
        ratios: Ratios::default(),
    }
}

/// The given gateway commands, then the peers whose binaries exist (the others are skipped,
/// naming the package to install).
fn gateway_jobs(cfg: &CompareConfig, skipped: &mut Vec<String>, note: &dyn Fn(&str)) -> Vec<Job> {
    let mut jobs: Vec<Job> = cfg
        .gateways
        .iter()
        .map(|g| Job {
            spec: g.clone(),
            kind: "gateway",
            peer: None,
        })
        .collect();
    for p in &cfg.peers {
        if Path::new(p.binary()).exists() {
            let spec = GatewaySpec {
                name: p.name().into(),
                cmd: String::new(),
            };
            jobs.push(Job {
                spec,
                kind: "peer",
                peer: Some(*p),
            });
        } else {
            let msg = format!(
                "{} is not installed (apt-get install {})",
                p.name(),
                p.package()
            );
            note(&msg);
            skipped.push(msg);
        }
    }
    jobs
}

/// The shell command that starts one gateway on `listen` (a peer's config is written into
/// `dir`); `Err(why)` when this gateway cannot be measured in this run.
fn gateway_command(
    cfg: &CompareConfig,
    setup: &Setup<'_>,
    job: &Job,
    listen: &str,
    dir: &TempDir,
) -> Result<std::result::Result<String, String>> {
    let spec = &job.spec;
    Ok(Ok(match job.peer {
        None => {
            let cmd = render(
                &spec.cmd,
                listen,
                &setup.backends.join(","),
                gateway_threads(cfg, setup.machine.nproc),
            );
            let Some(c) = setup.certs else {
                return Ok(Ok(cmd));
            };
            if is_ringway(&cmd) && !ringway_has_tls(&cmd) {
                return Ok(Err(format!("{}: {RINGWAY_NO_TLS}", spec.name)));
            }
            if !spec.cmd.contains("{CERT}") && !spec.cmd.contains("{PEM}") {
                return Ok(Err(format!(
                    "{}: with --tls a --gateway-cmd needs {{CERT}} and {{KEY}} (or {{PEM}})",
                    spec.name
                )));
            }
            render_tls(&cmd, c)
        }
        Some(p @ (Peer::Haproxy | Peer::HaproxySplice)) => {
            let splice = p == Peer::HaproxySplice;
            let maxconn = haproxy_maxconn(setup.machine.nofile_hard, splice);
            let cfgp = dir.0.join("haproxy.cfg");
            let conf = haproxy_config(
                cfg.run.proto,
                listen,
                setup.backends,
                gateway_threads(cfg, setup.machine.nproc),
                maxconn,
                splice,
                setup.certs,
            );
            std::fs::write(&cfgp, conf)?;
            format!("exec {} -f {} -db", Peer::Haproxy.binary(), cfgp.display())
        }
        Some(Peer::Nginx) => {
            let cfgp = dir.0.join("nginx.conf");
            let conf = nginx_config(
                cfg.run.proto,
                listen,
                setup.backends,
                cfg.gateway_threads,
                &dir.0,
                setup.machine.nofile_hard,
                setup.certs,
            );
            std::fs::write(&cfgp, conf)?;
            format!(
                "exec {} -c {} -p {}",
                Peer::Nginx.binary(),
                cfgp.display(),
                dir.0.display()
            )
        }
    }))
}

/// Starts one gateway, runs the scenario through it and charges it its CPU and memory;
/// `Err(why)` when it could not be measured (skipped, not failed).
async fn run_gateway(
    cfg: &CompareConfig,
    setup: &Setup<'_>,
    job: Job,
    note: &dyn Fn(&str),
) -> Result<std::result::Result<TargetResult, String>> {
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let addr: std::net::SocketAddr = listen.parse()?;
    let dir = TempDir::new(&job.spec.name)?;
    let cmd = match gateway_command(cfg, setup, &job, &listen, &dir)? {
        Ok(cmd) => cmd,
        Err(why) => return Ok(Err(why)),
    };
    note(&format!("{} → {listen}: {cmd}", job.spec.name));
    let mut gw = GatewayProc::spawn(&cmd, dir.0.join("gateway.log"))?;
    // A fresh client per gateway: no session of one is offered to the next.
    let tls = match (setup.certs, cfg.tls) {
        (Some(c), Some(t)) => Some(std::sync::Arc::new(TlsClient::new(
            &TlsOptions {
                ca: Some(c.ca.clone()),
                insecure: false,
                sni: Some(TLS_NAME.into()),
                resume: t.resume,
            },
            TLS_NAME,
        )?)),
        _ => None,
    };
    let ready = wait_ready(
        &mut gw,
        addr,
        cfg.run.proto,
        tls.as_deref(),
        cfg.startup_timeout,
    );
    if let Err(e) = ready.await {
        return Ok(Err(format!("{}: {e:#}", job.spec.name)));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut run = cfg.run.clone();
    run.target = addr;
    run.host = match &tls {
        Some(_) => format!("{TLS_NAME}:{port}"),
        None => listen.clone(),
    };
    run.tls = tls;
    let (report, cost) = measure(cfg.kind, &run, &mut gw).await;
    Ok(Ok(TargetResult {
        name: job.spec.name.clone(),
        kind: job.kind.into(),
        command: Some(cmd),
        report,
        gateway: Some(cost),
        ratios: Ratios::default(),
    }))
}

/// Runs the scenario through a started gateway, then stops it: the report, and the gateway's
/// CPU per unit and memory (its whole process tree, from /proc).
async fn measure(kind: Kind, run: &RunConfig, gw: &mut GatewayProc) -> (Report, GatewayCost) {
    let pid = gw.pid();
    let rss_start = procstat::tree_rss_bytes(pid);
    let cpu0 = procstat::tree_cpu_time(pid);
    let (report, rss_hold) = scenario_run(kind, run, Some(pid)).await;
    let cpu = procstat::tree_cpu_time(pid).saturating_sub(cpu0);
    let rss_end = rss_hold.unwrap_or_else(|| procstat::tree_rss_bytes(pid));
    let processes = procstat::tree(pid).len();
    let threads = procstat::tree_threads(pid);
    gw.stop();
    let (unit, n) = units(kind, &report);
    let held = report.opened.unwrap_or(0);
    let cost = GatewayCost {
        cpu_s: cpu.as_secs_f64(),
        unit: unit.into(),
        units: n,
        cpu_us_per_unit: (n > 0.0).then(|| cpu.as_secs_f64() * 1e6 / n),
        rss_bytes_start: rss_start,
        rss_bytes_end: rss_end,
        rss_per_conn_bytes: (kind == Kind::Idle && held > 0)
            .then(|| rss_end.saturating_sub(rss_start) as f64 / held as f64),
        processes,
        threads,
    };
    (report, cost)
}

/// Runs the scenario; with a gateway pid and the idle scenario, also reads the gateway's
/// RSS at the end of the hold.
async fn scenario_run(kind: Kind, run: &RunConfig, gw: Option<i32>) -> (Report, Option<u64>) {
    let cell = Cell::new(None);
    let rep = match (kind, gw) {
        (Kind::Idle, Some(pid)) => {
            crate::with_tls_counts(
                run,
                scenario::idle::run_with_probe(run, || {
                    cell.set(Some(procstat::tree_rss_bytes(pid)))
                }),
            )
            .await
        }
        _ => crate::run_scenario(kind, run).await,
    };
    (rep, cell.get())
}

/// Fills the ratio columns: throughput and p99 against direct, cost against ringway (the
/// target named "ringway", else the first gateway).
pub fn compute_ratios(kind: Kind, targets: &mut [TargetResult]) {
    let direct_thr = targets
        .iter()
        .find(|t| t.kind == "direct")
        .and_then(|t| throughput(kind, &t.report));
    let direct_p99 = targets
        .iter()
        .find(|t| t.kind == "direct")
        .and_then(|t| t.report.latency.as_ref().map(|l| l.p99_us));
    let cost = |t: &TargetResult| -> Option<f64> {
        let g = t.gateway.as_ref()?;
        if kind == Kind::Idle {
            g.rss_per_conn_bytes
        } else {
            g.cpu_us_per_unit
        }
    };
    let reference = targets
        .iter()
        .find(|t| t.name == "ringway" && t.gateway.is_some())
        .or_else(|| targets.iter().find(|t| t.gateway.is_some()))
        .and_then(cost);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    for t in targets.iter_mut() {
        t.ratios = Ratios {
            throughput_vs_direct: div(throughput(kind, &t.report), direct_thr),
            p99_vs_direct: div(t.report.latency.as_ref().map(|l| l.p99_us), direct_p99),
            cost_vs_ringway: div(cost(t), reference),
        };
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// The comparison table for a person.
pub fn human(r: &CompareResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "compare: {:?} over {}, {} conns, {} B, {:.1} s, {} echo backends",
        r.scenario,
        r.proto.name(),
        r.conns,
        r.size,
        r.duration_s,
        r.backends.len()
    );
    let _ = writeln!(s, "{}", r.machine.human());
    if let Some(t) = &r.tls {
        let _ = writeln!(s, "tls: {t}");
    }
    let cost_col = match r.scenario {
        Kind::Pingpong => "CPU µs/msg",
        Kind::Rate => "CPU µs/hs",
        Kind::Bulk => "CPU µs/MB",
        Kind::Idle | Kind::Storm => "CPU µs/conn",
    };
    let ref_col = if r.scenario == Kind::Idle {
        "RSS÷ringway"
    } else {
        "CPU÷ringway"
    };
    let _ = writeln!(
        s,
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>12} {:>10} {:>9} {:>9} {:>11} {:>7}",
        "target",
        throughput_label(r.scenario),
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        cost_col,
        "RSS/conn",
        "thr÷dir",
        "p99÷dir",
        ref_col,
        "errors"
    );
    for t in &r.targets {
        let l = t.report.latency.as_ref();
        let g = t.gateway.as_ref();
        let _ = writeln!(
            s,
            "{:<14} {:>10} {:>9} {:>9} {:>9} {:>12} {:>10} {:>9} {:>9} {:>11} {:>7}",
            t.name,
            opt(throughput(r.scenario, &t.report), |v| format!("{v:.1}")),
            opt(l.map(|l| l.p50_us), fmt_us),
            opt(l.map(|l| l.p99_us), fmt_us),
            opt(l.map(|l| l.p999_us), fmt_us),
            opt(g.and_then(|g| g.cpu_us_per_unit), |v| format!("{v:.2}")),
            opt(g.and_then(|g| g.rss_per_conn_bytes), |v| format!(
                "{v:.0} B"
            )),
            opt(t.ratios.throughput_vs_direct, |v| format!("{v:.2}x")),
            opt(t.ratios.p99_vs_direct, |v| format!("{v:.2}x")),
            opt(t.ratios.cost_vs_ringway, |v| format!("{v:.2}x")),
            t.report.errors
        );
    }
    footnotes(&mut s, r);
    for k in &r.skipped {
        let _ = writeln!(s, "skipped: {k}");
    }
    s
}

/// What the table's rows cannot say, target by target: limits hit, errors by kind, a
/// storm's establishment, the TLS handshakes.
fn footnotes(s: &mut String, r: &CompareResult) {
    for t in &r.targets {
        for l in &t.report.limits_hit {
            let _ = writeln!(s, "LIMIT HIT ({}): {l}", t.name);
        }
        if !t.report.errors_by_kind.is_empty() {
            let kinds: Vec<String> = t
                .report
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            let _ = writeln!(s, "errors ({}): {}", t.name, kinds.join(", "));
        }
    }
    for t in &r.targets {
        if let Some(e) = t.report.established {
            let _ = writeln!(
                s,
                "storm ({}): {e} of {} established, the last after {}",
                t.name,
                t.report.conns,
                opt(t.report.established_s, |v| format!("{v:.3} s"))
            );
        }
    }
    for t in &r.targets {
        if let Some(h) = &t.report.tls {
            let _ = writeln!(
                s,
                "tls ({}): {} full + {} resumed handshakes{}",
                t.name,
                h.full_handshakes,
                h.resumed_handshakes,
                h.negotiated
                    .as_deref()
                    .map(|n| format!(", {n}"))
                    .unwrap_or_default()
            );
        }
    }
}

/// Curves for `--plot`: one per target that has latencies.
pub fn plot(r: &CompareResult) -> String {
    let series: Vec<(String, &Latency)> = r
        .targets
        .iter()
        .filter_map(|t| t.report.hist.as_ref().map(|h| (t.name.clone(), h)))
        .collect();
    crate::report::plot_svg(
        &format!(
            "{:?} over {}: latency by percentile",
            r.scenario,
            r.proto.name()
        ),
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let c = render(
            "ringway run --listen {LISTEN} --backend {BACKENDS} --mode http --workers {WORKERS}",
            "127.0.0.1:9",
            "127.0.0.1:1,127.0.0.1:2",
            1,
        );
        assert_eq!(
            c,
            "ringway run --listen 127.0.0.1:9 --backend 127.0.0.1:1,127.0.0.1:2 --mode http --workers 1"
        );
        assert_eq!(default_name("target/release/ringway run", 0), "ringway");
    }

    #[test]
    fn peer_configs_have_the_required_settings() {
        let b = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let h = haproxy_config(Proto::Ws, "127.0.0.1:9", &b, 4, 9000, false, None);
        for needle in [
            "nbthread 4",
            "mode http",
            "timeout tunnel 1h",
            "balance roundrobin",
            "server b1 127.0.0.1:2",
            "bind 127.0.0.1:9",
        ] {
            assert!(h.contains(needle), "haproxy config lacks {needle}:\n{h}");
        }
        assert!(!h.contains("\nlog") && !h.contains("    log "));
        assert!(!h.contains("splice"));
        assert!(haproxy_config(Proto::Tcp, "x", &b, 1, 1, false, None).contains("mode tcp"));
        for proto in [Proto::Ws, Proto::Tcp] {
            let s = haproxy_config(proto, "127.0.0.1:9", &b, 2, 9000, true, None);
            let defaults = s.split("frontend").next().unwrap();
            assert!(
                defaults.contains("    option splice-auto\n"),
                "splice-auto belongs in defaults:\n{s}"
            );
            assert!(defaults.contains("    maxpipes 512\n"), "{s}");
        }
        // HAProxy refuses to start when its fds would exceed the hard limit (it asked for
        // 24,891 of 20,000 with splice and maxconn 9,950); 9,000 idle must still fit.
        for splice in [false, true] {
            let m = haproxy_maxconn(20_000, splice);
            let pipes = if splice { HAPROXY_MAXPIPES } else { 0 };
            assert!(2 * m + 2 * pipes + 50 <= 20_000, "maxconn {m}");
            assert!(m >= 9_000, "maxconn {m}");
        }
        let n = nginx_config(
            Proto::Ws,
            "127.0.0.1:9",
            &b,
            None,
            Path::new("/tmp/x"),
            20000,
            None,
        );
        for needle in [
            "worker_processes auto;",
            "daemon off;",
            "master_process on;",
            "error_log /dev/null crit;",
            "access_log off;",
            "pid /tmp/x/nginx.pid;",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection \"upgrade\";",
            "proxy_read_timeout 3600s;",
            "server 127.0.0.1:2;",
        ] {
            assert!(n.contains(needle), "nginx config lacks {needle}:\n{n}");
        }
        assert!(n.contains("worker_connections 19900;"), "{n}");
        let t = nginx_config(
            Proto::Tcp,
            "127.0.0.1:9",
            &b,
            None,
            Path::new("/tmp/x"),
            20000,
            None,
        );
        assert!(t.contains("stream {") && !t.contains("http {"));
        let one = nginx_config(
            Proto::Tcp,
            "x",
            &b,
            Some(1),
            Path::new("/tmp/x"),
            20000,
            None,
        );
        assert!(one.contains("worker_processes 1;"), "{one}");
    }

    #[test]
    fn tls_peer_configs_terminate_with_the_run_certificate() {
        let dir = TempDir::new("tlsconf").unwrap();
        let c = crate::tls::generate_certs(&dir.0, &[TLS_NAME, "127.0.0.1"]).unwrap();
        let b = vec!["127.0.0.1:1".to_string()];
        for proto in [Proto::Ws, Proto::Tcp] {
            let h = haproxy_config(proto, "127.0.0.1:9", &b, 2, 9000, false, Some(&c));
            let bind = format!("bind 127.0.0.1:9 ssl crt {}\n", c.combined.display());
            assert!(h.contains(&bind), "{h}");
            let n = nginx_config(proto, "127.0.0.1:9", &b, None, &dir.0, 20000, Some(&c));
            for needle in [
                "listen 127.0.0.1:9 ssl;".to_string(),
                format!("ssl_certificate {};", c.cert.display()),
                format!("ssl_certificate_key {};", c.key.display()),
                "ssl_session_cache shared:SSL:10m;".to_string(),
                "ssl_protocols TLSv1.2 TLSv1.3;".to_string(),
            ] {
                assert!(n.contains(&needle), "nginx lacks {needle}:\n{n}");
            }
        }
        let pem = std::fs::read_to_string(&c.combined).unwrap();
        assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
        let cmd = render_tls("rw --tls-cert {CERT} --tls-key {KEY} --ca {CA}", &c);
        assert!(!cmd.contains('{'), "{cmd}");
        assert!(is_ringway("target/release/ringway run") && !is_ringway("haproxy -f x"));
        assert!(
            default_gateway(Proto::Ws, true).is_none_or(|g| g.cmd.contains("--tls-cert {CERT}"))
        );
    }

    #[test]
    fn gateway_process_group_is_stopped() {
        let dir = TempDir::new("stoptest").unwrap();
        // A shell that ignores nothing but starts a grandchild in the background.
        let mut gw = GatewayProc::spawn("sleep 30 & sleep 30; wait", dir.0.join("log")).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let tree = procstat::tree(gw.pid());
        assert!(tree.len() >= 2, "expected sh and its sleeps, got {tree:?}");
        gw.stop();
        for p in tree {
            assert!(!alive(p), "process {p} survived stop()");
        }
    }
}
