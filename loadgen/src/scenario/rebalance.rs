//! Rebalance: hold N WebSocket connections through a gateway, reconnect each one the gateway
//! ends (as a device would), and sample which backend holds each connection over time: the
//! picture of a scale-out, before and after. The backend is read from the 101's `X-Backend`
//! header (the echo backend sets it); client `i` sends `KEY_HEADER: dev-i`, so a hash policy
//! on that header places it, and replays the route cookie it was given, so a cookie policy
//! keeps it. `--trigger-after T --trigger CMD` runs `sh -c CMD` once at T (a reload, a DNS
//! change) so one run shows before and after.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::RunConfig;
use crate::ws::{Recv, WsClient};

/// The header a client's key travels in.
pub const KEY_HEADER: &str = "X-Device";
/// Pause before a reconnect: a device's retry, and no hot loop against a refusing gateway.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// What the run was asked to do, beyond the shared [`RunConfig`] (target, path, host, conns,
/// duration, connect timeout).
#[derive(Debug, Clone)]
pub struct Options {
    /// How often to count connections per backend.
    pub interval: Duration,
    /// A shell command run once, this long after the start.
    pub trigger: Option<(Duration, String)>,
}

/// One count of live connections per backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// Live connections per backend name.
    pub per_backend: BTreeMap<String, u64>,
    /// Connections the gateway ended so far.
    pub ended: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timeline {
    pub target: String,
    pub conns: usize,
    pub samples: Vec<Sample>,
    /// When the trigger ran, seconds after the start.
    pub trigger_s: Option<f64>,
    /// Failed connects or upgrades, by kind.
    pub errors: BTreeMap<String, u64>,
}

/// Where each client is: its backend while connected.
#[derive(Default)]
struct State {
    at: Vec<Option<String>>,
    ended: u64,
    errors: BTreeMap<String, u64>,
}

/// Runs the scenario for `cfg.duration`, printing one line per sample on stderr when `print`.
pub async fn run(cfg: &RunConfig, opts: &Options, print: bool) -> Timeline {
    let start = Instant::now();
    let deadline = start + cfg.duration;
    let state = Arc::new(Mutex::new(State {
        at: vec![None; cfg.conns],
        ..State::default()
    }));
    let tasks: Vec<_> = (0..cfg.conns)
        .map(|i| tokio::spawn(client(cfg.clone(), i, deadline, state.clone())))
        .collect();
    let mut timeline = Timeline {
        target: cfg.target.to_string(),
        conns: cfg.conns,
        ..Timeline::default()
    };
    let mut trigger = opts.trigger.clone();
    let interval = opts.interval.max(Duration::from_millis(100));
    let mut next = start;
    while next <= deadline {
        tokio::time::sleep_until(next).await;
        if let Some((after, cmd)) = trigger.take_if(|(after, _)| start.elapsed() >= *after) {
            timeline.trigger_s = Some(after.as_secs_f64());
            run_trigger(&cmd).await;
        }
        let sample = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            let mut per_backend = BTreeMap::new();
            for b in s.at.iter().flatten() {
                *per_backend.entry(b.clone()).or_default() += 1;
            }
            Sample {
                t_s: start.elapsed().as_secs_f64(),
                per_backend,
                ended: s.ended,
            }
        };
        if print {
            eprintln!("{}", line(&sample));
        }
        timeline.samples.push(sample);
        next += interval;
    }
    for t in &tasks {
        t.abort();
    }
    timeline.errors = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .errors
        .clone();
    timeline
}

async fn run_trigger(cmd: &str) {
    let run = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(s)) if s.success() => eprintln!("trigger ran: {cmd}"),
        Ok(Ok(s)) => eprintln!("trigger {cmd:?} exited with {s}"),
        Ok(Err(e)) => eprintln!("trigger {cmd:?} failed: {e}"),
        Err(_) => eprintln!("trigger {cmd:?} still running after 30 s: killed"),
    }
}

/// `t=  3.0s  ended 0  pod-a 150  pod-b 150`.
pub fn line(s: &Sample) -> String {
    let mut l = format!("t={:>6.1}s  ended {:>5}", s.t_s, s.ended);
    for (b, n) in &s.per_backend {
        let _ = write!(l, "  {b} {n}");
    }
    l
}

/// One device: connect, hold until the gateway ends the connection, reconnect, until the
/// deadline.
async fn client(cfg: RunConfig, i: usize, deadline: Instant, state: Arc<Mutex<State>>) {
    let key = format!("dev-{i}");
    let mut cookie: Option<String> = None;
    let set = |at: Option<String>, ended: bool| {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.at[i] = at;
        if ended {
            s.ended += 1;
        }
    };
    while Instant::now() < deadline {
        let mut headers = vec![(KEY_HEADER, key.as_str())];
        if let Some(c) = &cookie {
            headers.push(("Cookie", c.as_str()));
        }
        let open = async {
            let tcp = crate::limits::connect(cfg.target, i as u64, cfg.connect_timeout).await?;
            WsClient::handshake(tcp, &cfg.host, &cfg.path, &headers)
                .await
                .map_err(|e| std::io::Error::other(e.kind()))
        };
        let (mut ws, resp) = match tokio::time::timeout(cfg.connect_timeout, open).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                count_error(&state, e.to_string());
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            Err(_) => {
                count_error(&state, "handshake_timeout".into());
                continue;
            }
        };
        if let Some(c) = resp.header("set-cookie") {
            cookie = c.split(';').next().map(str::to_string);
        }
        set(
            Some(resp.header("x-backend").unwrap_or("?").to_string()),
            false,
        );
        // Hold: the echo backend sends nothing unasked, so anything but a ping ends it.
        let mut buf = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, ws.recv_into(&mut buf)).await {
                Err(_) => return,
                Ok(Ok(Recv::Binary | Recv::Text | Recv::Ping(_) | Recv::Pong(_))) => {}
                Ok(_) => break,
            }
        }
        set(None, true);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

fn count_error(state: &Mutex<State>, kind: String) {
    let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
    *s.errors.entry(kind).or_default() += 1;
}

/// Connections per backend over time as a self-contained SVG: one line per backend, the
/// trigger marked.
pub fn plot_svg(title: &str, t: &Timeline) -> String {
    const W: f64 = 800.0;
    const H: f64 = 420.0;
    const L: f64 = 60.0;
    const R: f64 = 130.0;
    const TOP: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let names: Vec<&String> = {
        let mut n: Vec<&String> = t
            .samples
            .iter()
            .flat_map(|s| s.per_backend.keys())
            .collect();
        n.sort();
        n.dedup();
        n
    };
    let tmax = t.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let ymax = t
        .samples
        .iter()
        .flat_map(|s| s.per_backend.values())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.1;
    let px = |x: f64| L + x / tmax * (W - L - R);
    let py = |y: f64| H - B - y / ymax * (H - TOP - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="22" font-size="15">{}</text>"#,
        crate::report::xml_escape(title)
    );
    for k in 0..=5 {
        let y = ymax / 5.0 * f64::from(k);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{py:.1}" x2="{x2}" y2="{py:.1}" stroke="#eee"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{y:.0}</text>"##,
            py = py(y),
            x2 = W - R,
            tx = L - 6.0,
            ty = py(y) + 4.0
        );
    }
    for k in 0..=5 {
        let x = tmax / 5.0 * f64::from(k);
        let _ = writeln!(
            s,
            r#"<text x="{px:.1}" y="{y}" text-anchor="middle">{x:.0} s</text>"#,
            px = px(x),
            y = H - B + 18.0
        );
    }
    if let Some(at) = t.trigger_s {
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{y2}" stroke="#888" stroke-dasharray="4 3"/><text x="{x:.1}" y="{ty}" fill="#555">scale-out</text>"##,
            x = px(at),
            y2 = H - B,
            ty = TOP - 4.0
        );
    }
    for (k, name) in names.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let points: Vec<String> = t
            .samples
            .iter()
            .map(|smp| {
                let n = smp.per_backend.get(*name).copied().unwrap_or(0) as f64;
                format!("{:.1},{:.1}", px(smp.t_s), py(n))
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{y}" fill="{color}">{}</text>"#,
            crate::report::xml_escape(name),
            x = W - R + 10.0,
            y = TOP + 16.0 * (k as f64 + 1.0)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{x}" y="{y}" text-anchor="middle">time (s); y: live connections per backend</text></svg>"#,
        x = (L + W - R) / 2.0,
        y = H - 12.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_plots_name_every_backend() {
        let t = Timeline {
            target: "x".into(),
            conns: 4,
            samples: vec![
                Sample {
                    t_s: 0.0,
                    per_backend: BTreeMap::from([("a".into(), 2), ("b".into(), 2)]),
                    ended: 0,
                },
                Sample {
                    t_s: 1.0,
                    per_backend: BTreeMap::from([
                        ("a".into(), 1),
                        ("b".into(), 2),
                        ("c<".into(), 1),
                    ]),
                    ended: 1,
                },
            ],
            trigger_s: Some(0.5),
            errors: BTreeMap::new(),
        };
        assert_eq!(
            line(&t.samples[1]),
            "t=   1.0s  ended     1  a 1  b 2  c< 1"
        );
        let svg = plot_svg("t", &t);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("c&lt;") && svg.contains("scale-out"));
    }
}
