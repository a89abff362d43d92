//! What a ring worker needs from the kernel, and the test hook that pretends it is missing.

use io_uring::{opcode, IoUring};

/// The ops a ring worker uses, by the names a fallback log line gives them.
const NEEDED_OPS: &[(&str, u8)] = &[
    ("POLL_ADD", opcode::PollAdd::CODE),
    ("ACCEPT", opcode::Accept::CODE),
    ("ASYNC_CANCEL", opcode::AsyncCancel::CODE),
    ("READ", opcode::Read::CODE),
    // Heads and answers, half-closes and closes (all in Linux 5.11, which EXT_ARG needs).
    ("SEND", opcode::Send::CODE),
    ("SHUTDOWN", opcode::Shutdown::CODE),
    ("CLOSE", opcode::Close::CODE),
];

/// Test hook: `RINGWAY_URING_PRETEND_MISSING=ring|EXT_ARG|DEFER_TASKRUN|<op name>,...` makes
/// [`probe`] report those as missing, so every fallback case can be forced in tests.
pub(super) fn pretend_missing(what: &str) -> bool {
    std::env::var("RINGWAY_URING_PRETEND_MISSING")
        .map(|v| v.split(',').any(|w| w.trim().eq_ignore_ascii_case(what)))
        .unwrap_or(false)
}

/// Can this process run a ring worker? `Err` names what is missing: the ring itself
/// (seccomp and `kernel.io_uring_disabled` make io_uring_setup fail with EPERM/ENOSYS), a
/// feature (EXT_ARG: the timed wait), or an op (from the kernel's opcode probe).
pub fn probe() -> Result<(), String> {
    if pretend_missing("ring") {
        return Err("io_uring_setup (RINGWAY_URING_PRETEND_MISSING)".into());
    }
    let ring = IoUring::new(2).map_err(|e| format!("io_uring_setup: {e}"))?;
    if !ring.params().is_feature_ext_arg() || pretend_missing("EXT_ARG") {
        return Err("IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)".into());
    }
    let mut p = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for &(name, code) in NEEDED_OPS {
        if !p.is_supported(code) || pretend_missing(name) {
            return Err(format!("IORING_OP_{name}"));
        }
    }
    Ok(())
}
