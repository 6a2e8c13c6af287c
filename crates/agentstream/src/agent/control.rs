//! Stopping a run at its next safe point, and why.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use crate::store::RunStatus;

/// Stops a run at its next safe point, remembering why.
#[derive(Debug, Default)]
pub struct RunControl {
    token: CancellationToken,
    reason: OnceLock<RunStatus>,
}

impl RunControl {
    /// Asks the run to stop with `status`; the first reason given wins.
    pub fn stop(&self, status: RunStatus) {
        let _ = self.reason.set(status);
        self.token.cancel();
    }

    /// The status the run was asked to stop with, if it was.
    pub fn stopped(&self) -> Option<RunStatus> {
        self.reason.get().copied()
    }

    /// Resolves once the run is asked to stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }
}
