//! Noticing that a certificate's files changed. A Kubernetes Secret volume updates by writing
//! a new `..<timestamp>` directory and atomically re-pointing the `..data` symlink, so
//! `tls.crt` (itself a symlink to `..data/tls.crt`) resolves to a new file: the stamp follows
//! symlinks (`metadata`, not `symlink_metadata`) and includes the inode, so the swap is seen
//! even when sizes and mtimes happen to match. The paths are re-resolved every poll.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::TlsConfig;

/// What identifies one version of a file; `None` when it cannot be read (missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Option<(u64, u64, u64, i64, i64)>);

fn stamp(p: &Path) -> Stamp {
    Stamp(
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec())),
    )
}

/// The stamps of every file a listener's TLS reads, in order.
pub fn stamps(tls: &TlsConfig) -> Vec<Stamp> {
    tls.certificates
        .iter()
        .flat_map(|f| [stamp(&f.cert), stamp(&f.key)])
        .collect()
}
