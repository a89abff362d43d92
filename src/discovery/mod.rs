//! Discovery and health (control plane): keeps each upstream's table current from DNS and
//! health checks and publishes new tables; the data plane only reads them.

use std::sync::Arc;

use crate::state::Shared;

/// Starts discovery and health tasks on the current (control) runtime.
pub fn spawn(shared: Arc<Shared>) {
    let _ = shared;
}
