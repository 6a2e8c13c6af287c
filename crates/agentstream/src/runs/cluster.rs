//! Several nodes on one PostgreSQL: the heartbeat that renews leases and
//! sweeps dead nodes' runs, and the one listening connection per node that
//! hears which runs have new events and which runs to cancel.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::RunManager;
use crate::store::{
    self, CANCEL_CHANNEL, EVENTS_CHANNEL, RunStatus, StoreError, parse_notification,
};

/// Pause before listening again after the connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

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
        // The listener's own pool of one, which `PgListener::connect` would
        // make and never close: a listener hands its connection back from a
        // task of its own, and closing the pool waits for that, so the
        // connection is put away before the runtime goes.
        let pool = match PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy(&url)
        {
            Ok(pool) => pool,
            Err(error) => {
                tracing::error!(%error, "cannot listen for other nodes' events");
                return;
            }
        };
        let mut listener = None;
        self.listen_on(&pool, &mut listener, stop).await;
        // Closed before the listener goes: a dropped listener hands its
        // connection back from a task of its own, which then finds the pool
        // closed and closes the connection, rather than testing it with a
        // round trip that the end of the runtime could cut.
        let closing = pool.close();
        drop(listener);
        closing.await;
    }

    async fn listen_on(
        &self,
        pool: &PgPool,
        listener: &mut Option<PgListener>,
        stop: CancellationToken,
    ) {
        let mut failing = false;
        loop {
            if listener.is_none() {
                let connected = async {
                    let mut listener = PgListener::connect_with(pool).await?;
                    listener
                        .listen_all([EVENTS_CHANNEL, CANCEL_CHANNEL])
                        .await?;
                    Ok::<_, sqlx::Error>(listener)
                };
                let connected = tokio::select! {
                    connected = connected => connected,
                    () = stop.cancelled() => return,
                };
                match connected {
                    Ok(connected) => {
                        if failing {
                            tracing::info!(
                                "the listener reconnected; subscribers catch up from the store"
                            );
                        }
                        failing = false;
                        *listener = Some(connected);
                        self.inner.hub.wake_all_remote();
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "cannot listen for other nodes' events; retrying");
                        }
                        failing = true;
                        tokio::select! {
                            () = tokio::time::sleep(RECONNECT_PAUSE) => continue,
                            () = stop.cancelled() => return,
                        }
                    }
                }
            }
            let Some(active) = listener.as_mut() else {
                continue;
            };
            let received = tokio::select! {
                received = active.try_recv() => received,
                () = stop.cancelled() => return,
            };
            match received {
                Ok(Some(notification)) => match notification.channel() {
                    EVENTS_CHANNEL => {
                        self.inner
                            .hub
                            .wake_remote(&parse_notification(notification.payload()));
                    }
                    CANCEL_CHANNEL => {
                        if let Ok(run_id) = Uuid::parse_str(notification.payload()) {
                            self.cancel_local(run_id);
                        }
                    }
                    _ => {}
                },
                // The connection dropped and came back: notifications in
                // between are lost, so everyone reads the store again.
                Ok(None) => {
                    tracing::info!("the listener reconnected; subscribers catch up from the store");
                    self.inner.hub.wake_all_remote();
                }
                Err(error) => {
                    tracing::warn!(%error, "lost the connection listening for other nodes' events");
                    failing = true;
                    *listener = None;
                }
            }
        }
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
    /// nodes and starts queued runs nobody is starting.
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
            self.end_unstarted(&run, RunStatus::Interrupted).await?;
            self.start_next(run.conversation_id).await;
        }
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
