//! PostgreSQL `NOTIFY`/`LISTEN` between nodes: the channels, what is sent on
//! them (which runs have new events, which run to cancel), and the one
//! listening connection per node that turns what it hears into [`Notice`]s.

use std::{collections::HashMap, time::Duration};

use sqlx::{
    AnyConnection,
    postgres::{PgListener, PgPool, PgPoolOptions},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backend, Store, StoreError, query};
use crate::events::StoredEvent;

/// The PostgreSQL channel that carries which runs have new events.
pub const EVENTS_CHANNEL: &str = "agentstream_events";
/// The PostgreSQL channel that carries cancels for the node driving a run.
pub const CANCEL_CHANNEL: &str = "agentstream_cancel";

/// Pause before listening again after the connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// What the listener heard from the other nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// These runs have committed events up to this `seq`.
    Events(Vec<(Uuid, i64)>),
    /// A cancel was asked for this run.
    Cancel(Uuid),
    /// The listener (re)connected, the first time included: notifications
    /// sent while it was not listening are lost, so the store is to be read
    /// again.
    Reconnected,
}

/// What tells the other nodes (PostgreSQL `NOTIFY`, delivered on commit)
/// which runs the transaction adds events to: one `run_id:seq` per run with
/// its last `seq`, comma-separated, in payloads under PostgreSQL's
/// 8,000-byte limit, each sent on [`EVENTS_CHANNEL`] by the statement that
/// appends the events ([`super::append_events`]).
pub(super) fn event_payloads(events: &[(i64, &StoredEvent)]) -> Vec<String> {
    const MAX_PAYLOAD: usize = 7_900;
    let mut last: HashMap<Uuid, i64> = HashMap::with_capacity(events.len());
    for (_, event) in events {
        last.entry(event.run_id)
            .and_modify(|seq| *seq = (*seq).max(event.seq))
            .or_insert(event.seq);
    }
    let mut payloads = Vec::new();
    let mut payload = String::new();
    for (run_id, seq) in last {
        let entry = format!("{run_id}:{seq}");
        if !payload.is_empty() && payload.len() + 1 + entry.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut payload));
        }
        if !payload.is_empty() {
            payload.push(',');
        }
        payload.push_str(&entry);
    }
    if !payload.is_empty() {
        payloads.push(payload);
    }
    payloads
}

async fn notify(conn: &mut AnyConnection, channel: &str, payload: &str) -> Result<(), StoreError> {
    query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Reads a payload of [`event_payloads`]; entries that do not parse are skipped.
pub fn parse_notification(payload: &str) -> Vec<(Uuid, i64)> {
    payload
        .split(',')
        .filter_map(|entry| {
            let (run_id, seq) = entry.split_once(':')?;
            Some((Uuid::parse_str(run_id).ok()?, seq.parse().ok()?))
        })
        .collect()
}

impl Store {
    /// Tells the other nodes (PostgreSQL `NOTIFY`) that a run's cancel was
    /// asked for; a no-op on SQLite, which has no other node.
    pub async fn notify_cancel(&self, run_id: Uuid) -> Result<(), StoreError> {
        if self.backend() == Backend::Postgres {
            let mut conn = self.acquire().await?;
            notify(&mut conn, CANCEL_CHANNEL, &run_id.to_string()).await?;
            conn.commit().await?;
        }
        Ok(())
    }
}

/// Listens on PostgreSQL at `url` for the other nodes' events and cancels
/// until `stop` fires, handing each to `on_notice`; reconnects when the
/// connection fails, and says so with [`Notice::Reconnected`].
pub async fn listen(url: &str, stop: CancellationToken, mut on_notice: impl FnMut(Notice)) {
    // The listener's own pool of one, which `PgListener::connect` would
    // make and never close: a listener hands its connection back from a
    // task of its own, and closing the pool waits for that, so the
    // connection is put away before the runtime goes.
    let pool = match PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy(url)
    {
        Ok(pool) => pool,
        Err(error) => {
            tracing::error!(%error, "cannot listen for other nodes' events");
            return;
        }
    };
    let mut listener = None;
    listen_on(&pool, &mut listener, stop, &mut on_notice).await;
    // Closed before the listener goes: a dropped listener hands its
    // connection back from a task of its own, which then finds the pool
    // closed and closes the connection, rather than testing it with a
    // round trip that the end of the runtime could cut.
    let closing = pool.close();
    drop(listener);
    closing.await;
}

async fn listen_on(
    pool: &PgPool,
    listener: &mut Option<PgListener>,
    stop: CancellationToken,
    on_notice: &mut impl FnMut(Notice),
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
                    on_notice(Notice::Reconnected);
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
                    on_notice(Notice::Events(parse_notification(notification.payload())));
                }
                CANCEL_CHANNEL => {
                    if let Ok(run_id) = Uuid::parse_str(notification.payload()) {
                        on_notice(Notice::Cancel(run_id));
                    }
                }
                _ => {}
            },
            // The connection dropped and came back: notifications in
            // between are lost, so everyone reads the store again.
            Ok(None) => {
                tracing::info!("the listener reconnected; subscribers catch up from the store");
                on_notice(Notice::Reconnected);
            }
            Err(error) => {
                tracing::warn!(%error, "lost the connection listening for other nodes' events");
                failing = true;
                *listener = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_notification_skips_what_does_not_parse() {
        let run = Uuid::from_u128(7);
        let payload = format!("{run}:12,garbage,{run}:x,:3");
        assert_eq!(parse_notification(&payload), vec![(run, 12)]);
    }
}
