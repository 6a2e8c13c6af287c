//! The event log writer: group commit of every run's pending events.
//!
//! One task takes everything pending, commits it in one transaction, then
//! delivers it, and repeats; events that arrive during a commit go into the
//! next one. There is no timer: a quiet server commits each event at once,
//! a busy one commits bigger batches.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sqlx::{Any, pool::PoolConnection};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::Hub;
use crate::store::{
    self, AssistantMessage, Backend, MessageStatus, RunEnd, RunStatus, Store, StoreError,
    StoredEvent,
};

/// Most events one transaction carries.
const MAX_BATCH: usize = 4096;
/// How many events may wait for the writer before emitters wait too.
const QUEUE: usize = 16 * 1024;
/// Pauses between attempts at a batch that failed to commit.
const RETRY_BACKOFF: [Duration; 3] = [
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// How a run ends, written in the same transaction as its `done` event so
/// that a run is terminal exactly when its log holds `done`.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The final status.
    pub status: RunStatus,
    /// Why it failed: `{code, message}`.
    pub error: Option<serde_json::Value>,
    /// Token usage.
    pub usage: Option<serde_json::Value>,
    /// The status given to the run's messages still marked `streaming`.
    pub message_status: MessageStatus,
    /// Whether some of them may be: otherwise none is looked for.
    pub close_streaming: bool,
}

/// The log could not take or commit an event.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The writer has stopped (shutdown).
    #[error("the event log is closed")]
    Closed,
    /// The batch could not be committed.
    #[error("the event log could not commit: {0}")]
    Store(String),
    /// Another party ended the run first; this `done` was not written.
    #[error("the run had already ended")]
    AlreadyEnded,
    /// The run reached its limit of events.
    #[error("the run reached its limit of {0} events")]
    TooManyEvents(i64),
}

impl LogError {
    /// The code of the `error` event a run ends with after this failure.
    pub fn code(&self) -> &'static str {
        match self {
            LogError::TooManyEvents(_) => "event_limit",
            LogError::Closed | LogError::Store(_) | LogError::AlreadyEnded => "event_log",
        }
    }
}

struct Pending {
    event: StoredEvent,
    /// The run's assistant message as of this event, written with it.
    message: Option<Box<AssistantMessage>>,
    finish: Option<Finish>,
    ack: Option<oneshot::Sender<Result<(), LogError>>>,
}

/// A handle to append events. Cheap to clone; the writer stops when every
/// handle is dropped and the queue is empty.
#[derive(Debug, Clone)]
pub struct EventLog {
    queue: mpsc::Sender<Pending>,
    /// Runs with events that could not be committed: they may only finish,
    /// so their log never shows a later event after a lost one.
    broken: Arc<Mutex<HashSet<Uuid>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// Creates the log and the writer future, which the caller runs on a task.
    /// The writer stops taking events when `stop` fires, commits what is
    /// queued, and ends.
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        stop: CancellationToken,
    ) -> (EventLog, impl Future<Output = ()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let broken = Arc::new(Mutex::new(HashSet::new()));
        let writer = write_loop(store, hub, rx, broken.clone(), stop);
        (EventLog { queue, broken }, writer)
    }

    fn broken(&self) -> std::sync::MutexGuard<'_, HashSet<Uuid>> {
        self.broken.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event, and the state of the run's assistant message to
    /// write in the same transaction; it reaches subscribers once committed.
    pub async fn append(
        &self,
        event: StoredEvent,
        message: Option<AssistantMessage>,
    ) -> Result<(), LogError> {
        if self.broken().contains(&event.run_id) {
            return Err(LogError::Store(
                "earlier events of this run could not be stored".to_owned(),
            ));
        }
        self.queue
            .send(Pending {
                event,
                message: message.map(Box::new),
                finish: None,
                ack: None,
            })
            .await
            .map_err(|_| LogError::Closed)
    }

    /// Lets a run whose events failed to commit append again: for its end.
    /// True if some had failed.
    pub fn forget_failures(&self, run_id: Uuid) -> bool {
        self.broken().remove(&run_id)
    }

    /// Queues a run's `done` with its final state (and its assistant
    /// message's) and waits for the commit.
    pub async fn finish(
        &self,
        event: StoredEvent,
        finish: Finish,
        message: Option<AssistantMessage>,
    ) -> Result<(), LogError> {
        let (ack, done) = oneshot::channel();
        self.queue
            .send(Pending {
                event,
                message: message.map(Box::new),
                finish: Some(finish),
                ack: Some(ack),
            })
            .await
            .map_err(|_| LogError::Closed)?;
        done.await.map_err(|_| LogError::Closed)?
    }
}

async fn write_loop(
    store: Store,
    hub: Arc<Hub>,
    mut rx: mpsc::Receiver<Pending>,
    broken: Arc<Mutex<HashSet<Uuid>>>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    let mut stopping = false;
    // The connection of the last commit, kept for the next one only while
    // events are already waiting and other borrowers have idle connections
    // to take: never across a wait for events.
    let mut held: Option<PoolConnection<Any>> = None;
    loop {
        if rx.is_empty() || store.pool().num_idle() == 0 {
            held = None;
        }
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, MAX_BATCH) => received,
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let mut outcome = commit(&store, &mut held, &batch).await;
        for pause in RETRY_BACKOFF {
            match &outcome {
                // A database the probe finds down is not retried here: the
                // runs hear at once, and retry their ends themselves.
                Err(StoreError::Unavailable(_) | StoreError::Database(_)) if !store.is_down() => {
                    tokio::time::sleep(pause).await;
                    outcome = commit(&store, &mut held, &batch).await;
                }
                _ => break,
            }
        }
        match outcome {
            Ok(dropped) => {
                let committed = batch
                    .iter()
                    .zip(&dropped)
                    .filter(|(_, dropped)| !**dropped)
                    .map(|(pending, _)| pending);
                crate::telemetry::metrics::events_committed(committed.clone().count());
                for finish in committed.filter_map(|pending| pending.finish.as_ref()) {
                    crate::telemetry::metrics::run_finished(finish.status);
                }
                let mut acks = Vec::new();
                let events = batch.drain(..).zip(dropped).filter_map(|(pending, ended)| {
                    if let Some(ack) = pending.ack {
                        acks.push((ack, ended));
                    }
                    (!ended).then_some(pending.event)
                });
                hub.publish(events);
                for (ack, ended) in acks {
                    let _ = ack.send(if ended {
                        Err(LogError::AlreadyEnded)
                    } else {
                        Ok(())
                    });
                }
            }
            Err(error) => {
                tracing::error!(%error, events = batch.len(), "the event log could not commit a batch");
                let mut broken = broken.lock().unwrap_or_else(PoisonError::into_inner);
                for pending in batch.drain(..) {
                    match pending.ack {
                        Some(ack) => {
                            let _ = ack.send(Err(LogError::Store(error.to_string())));
                        }
                        None => {
                            broken.insert(pending.event.run_id);
                        }
                    }
                }
            }
        }
    }
}

/// Commits a batch on the held connection, or a new one. Returns, for each
/// pending event, whether it was left out: the events of a run whose end
/// found it ended already (another party ended it), and those of a second
/// end of one run in the same batch. A connection that failed is given back.
async fn commit(
    store: &Store,
    held: &mut Option<PoolConnection<Any>>,
    batch: &[Pending],
) -> Result<Vec<bool>, StoreError> {
    let committed = commit_on(store, held, batch).await;
    if committed.is_err() {
        *held = None;
    }
    committed
}

async fn commit_on(
    store: &Store,
    held: &mut Option<PoolConnection<Any>>,
    batch: &[Pending],
) -> Result<Vec<bool>, StoreError> {
    let mut tx = store.begin_events(held).await?;
    // Each run's first end in the batch; whatever the run queued after it
    // is left out.
    let mut dropped = vec![false; batch.len()];
    let mut ending: HashSet<Uuid> = HashSet::new();
    let mut ends = Vec::new();
    for (i, pending) in batch.iter().enumerate() {
        let run_id = pending.event.run_id;
        if ending.contains(&run_id) {
            dropped[i] = true;
        } else if let Some(finish) = &pending.finish {
            ending.insert(run_id);
            ends.push(RunEnd {
                id: run_id,
                status: finish.status,
                error: finish.error.as_ref().map(serde_json::Value::to_string),
                usage: finish.usage.as_ref().map(serde_json::Value::to_string),
                last_seq: pending.event.seq,
            });
        }
    }
    let ended: HashSet<Uuid> = store::finish_runs(&mut tx, &ends)
        .await?
        .into_iter()
        .collect();
    if ended.len() < ends.len() {
        for (i, pending) in batch.iter().enumerate() {
            let run_id = pending.event.run_id;
            if ending.contains(&run_id) && !ended.contains(&run_id) {
                dropped[i] = true;
            }
        }
    }
    // Borrowed, not cloned: this runs for every event.
    let written = batch
        .iter()
        .zip(&dropped)
        .filter(|(_, dropped)| !**dropped)
        .map(|(pending, _)| pending);
    // Messages in the order their runs wrote them, then what the runs that
    // end here left streaming takes their end's status.
    let messages: Vec<&AssistantMessage> = written
        .clone()
        .filter_map(|p| p.message.as_deref())
        .collect();
    store::write_assistant_messages(&mut tx, &messages).await?;
    for pending in written.clone() {
        if let Some(finish) = &pending.finish
            && finish.close_streaming
        {
            store::close_streaming_messages(&mut tx, pending.event.run_id, finish.message_status)
                .await?;
        }
    }
    let events: Vec<&StoredEvent> = written.map(|p| &p.event).collect();
    store::append_events(&mut tx, &events).await?;
    if store.backend() == Backend::Postgres {
        store::notify_events(&mut tx, &events).await?;
    }
    tx.commit().await?;
    Ok(dropped)
}
