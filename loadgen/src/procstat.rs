//! CPU time and resident memory of a process tree, read from /proc.
//!
//! The gateway under test may be one process with many threads (ringway, HAProxy), or a
//! master with worker processes (nginx), possibly behind the `sh -c` that started it. So we
//! measure the whole tree: the process, every descendant (found through the `ppid` field of
//! /proc/*/stat), and for each of them `utime + stime` from /proc/PID/stat, which the kernel
//! sums over all threads of that process, including threads that have exited. The thread
//! count comes from /proc/PID/task. Resolution is one clock tick (usually 10 ms), so measure
//! over seconds, not milliseconds.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

/// Raw counters of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSample {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub ppid: i32,
}

fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Parses /proc/PID/stat text. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcSample> {
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ")" : state(3) ppid(4) ... utime(14) stime(15) → indices 0,1,...,11,12
    Some(ProcSample {
        ppid: f.get(1)?.parse().ok()?,
        utime_ticks: f.get(11)?.parse().ok()?,
        stime_ticks: f.get(12)?.parse().ok()?,
    })
}

pub fn sample(pid: i32) -> Option<ProcSample> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU time (user + system, all threads) of one process.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let s = sample(pid)?;
    Some(ticks_to_duration(s.utime_ticks + s.stime_ticks))
}

fn ticks_to_duration(t: u64) -> Duration {
    let tps = ticks_per_sec();
    Duration::from_nanos(t.saturating_mul(1_000_000_000) / tps)
}

/// `pid` and all its descendants that are alive now.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(s) = sample(p) {
                children.entry(s.ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|p| *p != pid));
        }
        i += 1;
        if out.len() > 100_000 {
            break;
        }
    }
    out
}

/// CPU time of the process tree rooted at `pid`.
pub fn tree_cpu_time(pid: i32) -> Duration {
    tree(pid).into_iter().filter_map(cpu_time).sum()
}

/// Resident set size of one process (VmRSS), in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&text)
}

pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of VmRSS over the tree (shared pages are counted once per process, as `ps` does).
pub fn tree_rss_bytes(pid: i32) -> u64 {
    tree(pid).into_iter().filter_map(rss_bytes).sum()
}

/// Number of threads of the tree (entries of /proc/PID/task).
pub fn tree_threads(pid: i32) -> usize {
    tree(pid)
        .into_iter()
        .filter_map(|p| fs::read_dir(format!("/proc/{p}/task")).ok())
        .map(|d| d.count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_name() {
        let line = "1234 (my (odd) cmd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 4 0 100 1000 200";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 1);
        assert_eq!(s.utime_ticks, 250);
        assert_eq!(s.stime_ticks, 37);
    }

    #[test]
    fn parses_vmrss() {
        assert_eq!(
            parse_vmrss("Name:\tx\nVmRSS:\t   2048 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vmrss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_cpu_grows_with_work_and_rss_is_positive() {
        let me = std::process::id() as i32;
        let before = tree_cpu_time(me);
        // Count work, not time: do fixed-size chunks of work until the tick counter moves,
        // bounded by a generous number of chunks.
        let mut x = 0x1234_5678_u64;
        let mut chunks = 0u64;
        let mut grew = false;
        while chunks < 20_000 {
            for _ in 0..1_000_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            std::hint::black_box(x);
            chunks += 1;
            if tree_cpu_time(me) > before {
                grew = true;
                break;
            }
        }
        assert!(grew, "CPU time did not grow after {chunks} chunks of work");
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(tree_rss_bytes(me) >= rss_bytes(me).unwrap());
        assert!(tree_threads(me) >= 1);
        assert!(tree(me).contains(&me));
    }

    #[test]
    fn child_process_is_in_the_tree() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        let t = tree(me);
        let _ = child.kill();
        let _ = child.wait();
        assert!(t.contains(&(child.id() as i32)));
    }
}
