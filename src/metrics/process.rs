//! Process figures in the Prometheus conventions (`process_open_fds`, `process_max_fds`,
//! `process_resident_memory_bytes`, `process_cpu_seconds_total`), read from `/proc/self` at
//! scrape time: nothing is kept or updated between scrapes, and no worker is involved.
//!
//! fd exhaustion is the first limit a gateway with many connections meets (each proxied
//! connection holds two sockets, a tunnel in splice mode two pipe ends more; see
//! `tuning/limits.md`), so `process_open_fds / process_max_fds` is the ratio to alert on.

use std::path::Path;

/// One scrape's worth; a figure `/proc` could not give is `None` (its sample is left out).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures.
    pub fn read() -> ProcessStats {
        Self::read_from(Path::new("/proc/self"))
    }

    pub fn read_from(proc: &Path) -> ProcessStats {
        let text = |name: &str| std::fs::read_to_string(proc.join(name)).ok();
        ProcessStats {
            open_fds: open_fds(&proc.join("fd")),
            max_fds: text("limits").as_deref().and_then(parse_max_fds),
            resident_bytes: text("status").as_deref().and_then(parse_rss_bytes),
            cpu_seconds: text("stat").as_deref().and_then(parse_cpu_seconds),
        }
    }
}

/// Open fds. Since Linux 6.2 the size `stat` reports for `/proc/PID/fd` is the number of open
/// fds, counted from the fd bitmap: no directory walk, where listing the directory costs about
/// 3 µs per fd (55 ms at 19,000 open fds, measured with Python's `os.listdir` on this 6.18
/// machine; seconds at a million) on the control thread that also answers probes. Older
/// kernels report 0, and get the listing.
fn open_fds(dir: &Path) -> Option<u64> {
    match std::fs::metadata(dir) {
        Ok(m) if m.len() > 0 => Some(m.len()),
        // The directory handle used to list it is one of the entries: leave it out.
        _ => std::fs::read_dir(dir)
            .ok()
            .map(|d| d.count().saturating_sub(1) as u64),
    }
}

/// The soft limit of the `Max open files` line of `/proc/PID/limits`.
pub fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// `VmRSS:   1234 kB` of `/proc/PID/status`, in bytes.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut it = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    match it.next() {
        Some("kB") | None => n.checked_mul(1024),
        Some(_) => None,
    }
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`, in seconds. The command name (field
/// 2) is in parentheses and may hold spaces and `)`, so fields are counted after the last `)`.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the `)`: field 3 (state) is the first; utime is field 14, stime 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / crate::sys::clock_ticks_per_second() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1048576              1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1_048_576));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(u64::MAX)
        );
        assert_eq!(parse_max_fds("Max processes 10 10 processes"), None);

        let status = "Name:\tringway\nVmPeak:\t  20000 kB\nVmRSS:\t    5120 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_bytes(status), Some(5120 * 1024));
        assert_eq!(parse_rss_bytes("Name:\tx\n"), None);
        assert_eq!(parse_rss_bytes("VmRSS: lots kB"), None);

        // comm with a space and a parenthesis; utime 250 ticks, stime 50 ticks.
        let stat = "4242 (ring way) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 3 0 100 2000000 1250 18446744073709551615";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        assert_eq!(parse_cpu_seconds("4242 (x) S 1"), None);
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read();
        let open = s.open_fds.expect("open fds");
        // The stat shortcut and the listing agree (other test threads may open or close an fd
        // in between).
        let listed = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1;
        assert!(open.abs_diff(listed) <= 4, "{open} vs {listed}");
        assert!(open >= 1, "{s:?}");
        assert!(s.max_fds.expect("max fds") >= open, "{s:?}");
        assert!(s.resident_bytes.expect("rss") > 0, "{s:?}");
        assert!(s.cpu_seconds.expect("cpu") >= 0.0, "{s:?}");
    }
}
