//! Several nodes on one PostgreSQL: the heartbeat that renews leases and
//! sweeps dead nodes' runs, and what this node does with what its listener
//! (`store::listen`) hears: wakes the subscribers of runs with new events,
//! cancels the runs asked to stop, and has everyone read the store again
//! after a reconnection.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RunManager;
use crate::{
    agent::Outcome,
    store::{self, Notice, RunStatus, StoreError},
};

impl RunManager {
    /// Renews this node's leases and sweeps dead nodes' runs, every
    /// `lease_renew`, until `stop` fires.
    pub async fn keep_leases(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.inner.node.lease_renew) => {}
                () = stop.cancelled() => return,
            }
            match self.heartbeat().await {
                Ok(()) => {}
                // The probe reports the database being away, once.
                Err(StoreError::Unavailable(_)) => {}
                Err(error) => tracing::warn!(%error, "heartbeat failed; trying again"),
            }
        }
    }

    /// Listens on PostgreSQL for the other nodes' events and cancels until
    /// `stop` fires. After every reconnection the subscribers of runs driven
    /// elsewhere read the store again, so nothing missed meanwhile is lost.
    pub async fn listen(self, url: String, stop: CancellationToken) {
        store::listen(&url, stop, |notice| match notice {
            Notice::Events(runs) => self.inner.hub.wake_remote(&runs),
            Notice::Cancel(run_id) => self.cancel_local(run_id),
            Notice::Reconnected => self.inner.hub.wake_all_remote(),
        })
        .await;
    }
}

/// Leases and cancels across nodes.
impl RunManager {
    /// When a lease taken now runs out.
    pub(super) fn lease_until(&self) -> String {
        store::format_timestamp(time::OffsetDateTime::now_utc() + self.inner.node.lease_expire)
    }

    /// Takes this node's lease; call before serving, so that no other node
    /// takes this one's first runs for a dead node's.
    pub async fn register_node(&self) -> Result<(), StoreError> {
        self.inner
            .store
            .renew_lease(&self.inner.node.id, &self.lease_until())
            .await
    }

    /// Gives up this node's lease once its runs have ended.
    pub async fn release_node(&self) -> Result<(), StoreError> {
        self.inner.store.release_lease(&self.inner.node.id).await
    }

    /// Stops a run this node drives, as asked by another node.
    pub fn cancel_local(&self, run_id: Uuid) {
        self.stop_local(run_id, RunStatus::Cancelled);
    }

    /// One heartbeat: renews the leases of the runs this node drives, stops
    /// those a cancel was asked for, and stops those whose lease another
    /// node took (they will be written no more); then ends the runs of dead
    /// nodes and the paused runs whose wait ran out, and starts queued runs
    /// nobody is starting.
    #[tracing::instrument(skip_all)]
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let store = &self.inner.store;
        // Listed before the renewal: each of these has its row, owned here.
        let local: Vec<Uuid> = self.active().keys().copied().collect();
        store
            .renew_lease(&self.inner.node.id, &self.lease_until())
            .await?;
        let held = store.owned_runs(&self.inner.node.id).await?;
        for (run_id, cancel) in &held {
            if *cancel {
                self.stop_local(*run_id, RunStatus::Cancelled);
            }
        }
        for run_id in local {
            if !held.iter().any(|(id, _)| *id == run_id) {
                // Ended here a moment ago, or taken over as dead: either way
                // nothing more of it is this node's to write.
                self.stop_local(run_id, RunStatus::Interrupted);
            }
        }
        for run in store.expired_runs(&store::now()).await? {
            tracing::warn!(
                run_id = %run.id,
                "the node driving this run stopped renewing its lease; marking it interrupted"
            );
            self.end_unstarted(&run, Outcome::status(RunStatus::Interrupted))
                .await?;
            self.start_next(run.conversation_id).await;
        }
        self.expire_paused_runs().await?;
        for conversation_id in store.stalled_conversations().await? {
            self.start_next(conversation_id).await;
        }
        Ok(())
    }

    /// Stops a run this node drives; false if it drives no such run.
    pub(super) fn stop_local(&self, run_id: Uuid, status: RunStatus) -> bool {
        let active = self.active().get(&run_id).cloned();
        active.map(|run| run.control.stop(status)).is_some()
    }
}
