//! Latency histograms, the report of one scenario run, and how it is printed: a human
//! summary, JSON, and a hand-drawn SVG percentile plot.
//!
//! Latencies are recorded in nanoseconds in an HDR histogram with 3 significant digits:
//! every reported percentile is within 0.1% of the true value (the histogram returns the
//! highest value equivalent to the true one at that precision). The range is 1 ns..=60 s;
//! larger values are clamped to 60 s and counted in `clamped`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency we record; larger values are clamped.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// HDR precision in significant decimal digits.
pub const SIGFIG: u8 = 3;

#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    pub clamped: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Latency {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIG).expect("valid HDR bounds"),
            clamped: 0,
        }
    }

    pub fn record(&mut self, d: Duration) {
        self.record_ns(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn record_ns(&mut self, ns: u64) {
        let v = if ns > MAX_LATENCY_NS {
            self.clamped += 1;
            MAX_LATENCY_NS
        } else {
            ns.max(1)
        };
        // Cannot fail: v is within the bounds.
        let _ = self.hist.record(v);
    }

    pub fn merge(&mut self, other: &Latency) {
        let _ = self.hist.add(&other.hist);
        self.clamped += other.clamped;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Value at quantile `q` (0..=1), in ns.
    pub fn quantile(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(LatencySummary {
            count: self.hist.len(),
            min_us: us(self.hist.min()),
            mean_us: self.hist.mean() / 1000.0,
            p50_us: us(self.quantile(0.5)),
            p90_us: us(self.quantile(0.9)),
            p99_us: us(self.quantile(0.99)),
            p999_us: us(self.quantile(0.999)),
            max_us: us(self.hist.max()),
            clamped: self.clamped,
        })
    }

    /// (percentile, µs) points for a percentile plot, from 0% to the max, spaced evenly on
    /// the 1/(1-p) scale.
    pub fn curve(&self) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return vec![];
        }
        let mut pts = Vec::new();
        let mut x = 0.0f64; // x = log10(1/(1-p))
        while x <= 5.0 {
            let p = 1.0 - 10f64.powf(-x);
            pts.push((p * 100.0, self.quantile(p) as f64 / 1000.0));
            x += 0.05;
        }
        pts.push((100.0, self.hist.max() as f64 / 1000.0));
        pts
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Samples above 60 s, recorded as 60 s.
    pub clamped: u64,
}

/// The result of one scenario run against one target. Fields that a scenario does not
/// produce stay empty and are left out of the JSON.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub proto: String,
    pub target: String,
    pub conns: usize,
    pub duration_s: f64,
    /// Completed round trips (pingpong), or messages echoed (idle checks, rate).
    pub messages: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgs_per_s: Option<f64>,
    /// The open-loop rate asked for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshakes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshakes_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survived: Option<u64>,
    /// Clients connected, upgraded and echoed once (storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<u64>,
    /// Seconds from the storm's start until the last client was established (storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established_s: Option<f64>,
    /// Established clients ÷ `established_s` (storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conns_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_s_up: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mb_per_s_down: Option<f64>,
    /// Round-trip latency (pingpong; from the intended send time in open loop), connect +
    /// handshake latency (rate), or time from the start to established (storm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Machine limits that stopped part of the run, explained.
    pub limits_hit: Vec<String>,
    /// With `--tls`: the run's handshakes by kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCounts>,
    #[serde(skip)]
    pub hist: Option<Latency>,
}

/// TLS handshakes a run made (probes and earlier runs not included).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TlsCounts {
    /// The server name verified (sent as SNI when it is a DNS name).
    pub sni: String,
    /// Whether resumption was offered (`--no-resume` turns it off).
    pub resumption: bool,
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
    /// Protocol version and cipher suite negotiated (of the client's first handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negotiated: Option<String>,
}

impl Report {
    pub fn add_error(&mut self, kind: &str) {
        self.errors += 1;
        *self.errors_by_kind.entry(kind.to_string()).or_default() += 1;
    }

    /// Fills `limits_hit` from the error kinds that are machine limits.
    pub fn explain_limits(&mut self) {
        self.limits_hit = self
            .errors_by_kind
            .iter()
            .filter_map(|(k, n)| crate::limits::explain_limit(k).map(|e| format!("{k} x{n}: {e}")))
            .collect();
    }

    pub fn set_latency(&mut self, lat: Latency) {
        self.latency = lat.summary();
        self.hist = Some(lat);
    }

    /// A few lines for a person.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} over {} to {}: {} conns, {:.2} s",
            self.scenario, self.proto, self.target, self.conns, self.duration_s
        );
        if let Some(r) = self.msgs_per_s {
            let _ = write!(s, "  messages: {} ({:.0}/s", self.messages, r);
            if let Some(t) = self.target_rate {
                let _ = write!(s, ", asked {t:.0}/s, open loop");
            }
            let _ = writeln!(s, ")");
        }
        if let (Some(h), Some(r)) = (self.handshakes, self.handshakes_per_s) {
            let _ = writeln!(s, "  handshakes: {h} ({r:.0}/s)");
        }
        if let Some(e) = self.established {
            let _ = write!(s, "  storm: {e} of {} established", self.conns);
            if let (Some(t), Some(r)) = (self.established_s, self.conns_per_s) {
                let _ = write!(s, ", the last after {:.3} s ({r:.0} conns/s)", t);
            }
            let _ = writeln!(s);
        }
        if let (Some(o), Some(v)) = (self.opened, self.survived) {
            let _ = writeln!(s, "  opened {o} of {}, survived {v}", self.conns);
        }
        if let (Some(u), Some(d)) = (self.mb_per_s_up, self.mb_per_s_down) {
            let _ = writeln!(
                s,
                "  bulk: {:.1} MB/s up, {:.1} MB/s down ({} B sent, {} B received)",
                u,
                d,
                self.bytes_sent.unwrap_or(0),
                self.bytes_received.unwrap_or(0)
            );
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(
                s,
                "  latency µs: p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
                fmt_us(l.p50_us),
                fmt_us(l.p90_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us),
                l.count
            );
        }
        let _ = write!(s, "  errors: {}", self.errors);
        if !self.errors_by_kind.is_empty() {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            let _ = write!(s, " ({})", kinds.join(", "));
        }
        let _ = writeln!(s);
        for k in self.errors_by_kind.keys() {
            if let Some(why) = crate::tls::explain(k) {
                let _ = writeln!(s, "  {k}: {why}");
            }
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                s,
                "  tls: {} full + {} resumed handshakes (server name {}, resumption {}{})",
                t.full_handshakes,
                t.resumed_handshakes,
                t.sni,
                if t.resumption { "on" } else { "off" },
                t.negotiated
                    .as_deref()
                    .map(|n| format!(", {n}"))
                    .unwrap_or_default()
            );
        }
        for l in &self.limits_hit {
            let _ = writeln!(s, "  LIMIT HIT: {l}");
        }
        s
    }
}

pub fn fmt_us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let (soft, hard) = crate::limits::nofile();
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            cpu_model,
            nofile_soft: soft,
            nofile_hard: hard,
        }
    }

    pub fn human(&self) -> String {
        format!(
            "machine: {} CPUs ({}), kernel {}",
            self.nproc, self.cpu_model, self.kernel
        )
    }
}

/// Draws percentile curves (x: percentile on a 1/(1-p) log scale, y: latency in µs, linear)
/// as a self-contained SVG, one coloured line per series.
pub fn plot_svg(title: &str, series: &[(String, &Latency)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const L: f64 = 70.0; // left margin
    const R: f64 = 150.0; // right margin (legend)
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let curves: Vec<(String, Vec<(f64, f64)>)> =
        series.iter().map(|(n, l)| (n.clone(), l.curve())).collect();
    let ymax = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let xmax = 5.0;
    let px = |p: f64| {
        let x = if p >= 100.0 {
            xmax
        } else {
            (-(1.0 - p / 100.0).log10()).min(xmax)
        };
        L + x / xmax * (W - L - R)
    };
    let py = |v: f64| H - B - v / ymax * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15">{}</text>"#,
        L,
        xml_escape(title)
    );
    // Axes and grid.
    for (label, p) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
        ("max", 100.0),
    ] {
        let x = px(p);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##,
            H - B
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            H - B + 18.0
        );
    }
    for i in 0..=5 {
        let v = ymax / 5.0 * i as f64;
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##,
            W - R
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            L - 6.0,
            y + 4.0,
            fmt_us(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (L + W - R) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (µs)</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    let _ = writeln!(
        s,
        r#"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        W - L - R,
        H - T - B
    );
    for (i, (name, pts)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|(p, v)| format!("{:.1},{:.1}", px(*p), py(*v)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let ly = T + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - R + 10.0,
            W - R + 30.0,
            W - R + 35.0,
            ly + 4.0,
            xml_escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

pub(crate) fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_data() {
        let mut l = Latency::new();
        for v in 1..=10_000u64 {
            l.record_ns(v);
        }
        let h = l.histogram();
        // The exact percentiles of 1..=10000 are 5000, 9900, 9990 and 10000; the histogram
        // reports the highest value in the same 3-significant-digit bucket.
        for (q, exact) in [(0.5, 5000u64), (0.99, 9900), (0.999, 9990), (1.0, 10_000)] {
            let got = l.quantile(q);
            assert_eq!(got, h.highest_equivalent(exact), "q={q}");
            assert!(
                got.abs_diff(exact) * 1000 <= exact,
                "q={q}: {got} not within 0.1% of {exact}"
            );
        }
        assert_eq!(h.max(), h.highest_equivalent(10_000));
        let s = l.summary().unwrap();
        assert_eq!(s.count, 10_000);
        assert!((s.mean_us - 5.0005).abs() < 0.01, "mean {}", s.mean_us);
        assert!((s.p50_us - 5.0).abs() <= 0.005);
        assert!((s.p99_us - 9.9).abs() <= 0.0099);
    }

    #[test]
    fn small_values_are_exact_and_huge_ones_clamped() {
        let mut l = Latency::new();
        for v in 1..=100u64 {
            l.record_ns(v);
        }
        assert_eq!(l.quantile(0.5), 50);
        assert_eq!(l.quantile(0.99), 99);
        l.record_ns(MAX_LATENCY_NS * 10);
        assert_eq!(l.clamped, 1);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        a.record_ns(10);
        b.record_ns(20);
        b.record_ns(30);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(1.0), 30);
    }

    #[test]
    fn svg_has_one_line_per_series() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for v in 1..1000 {
            a.record_ns(v * 1000);
            b.record_ns(v * 2000);
        }
        let svg = plot_svg("t <x>", &[("direct".into(), &a), ("ringway".into(), &b)]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;x&gt;"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
