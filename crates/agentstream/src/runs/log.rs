//! The event log writer: group commit of every run's pending events.
//!
//! One task takes everything pending, commits it in one transaction, then
//! delivers it, and repeats; events that arrive during a commit go into the
//! next one. Under load a commit begins at most once per commit interval
//! (`--event-commit-interval-ms`, 10 ms by default): events of many runs
//! share a commit, and no event waits for its commit more than that interval
//! beyond the commit itself. A quiet server, whose last commit began longer
//! ago than the interval, commits an event at once.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::Hub;
use crate::{
    events::{ErrorCode, RunFailure, StoredEvent},
    store::{
        self, AssistantMessage, MessageStatus, OwnConnection, RunEnd, RunStatus, Store, StoreError,
    },
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
    /// Why it failed; stored as `{code, message}`.
    pub error: Option<RunFailure>,
    /// Token usage.
    pub usage: Option<serde_json::Value>,
    /// What the last model call sent of the conversation.
    pub context: Option<crate::events::ContextUse>,
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
    /// The batch could not be committed: the database is unavailable.
    #[error("the event log could not commit: {0}")]
    Store(String),
    /// The database refused this run's events (its data, not the
    /// connection): the other runs' events of the batch were committed.
    #[error("the database refused this run's events")]
    Refused,
    /// Another party ended the run first; this `done` was not written.
    #[error("the run had already ended")]
    AlreadyEnded,
    /// The run reached its limit of events.
    #[error("the run reached its limit of {0} events")]
    TooManyEvents(i64),
}

impl LogError {
    /// The code of the `error` event a run ends with after this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            LogError::TooManyEvents(_) => ErrorCode::EventLimit,
            LogError::Refused => ErrorCode::StorageError,
            LogError::Closed | LogError::Store(_) | LogError::AlreadyEnded => ErrorCode::EventLog,
        }
    }
}

struct Pending {
    /// The run's number in the event log ([`store::Run::event_key`]).
    run_key: i64,
    event: StoredEvent,
    /// The run's assistant message as of this event, written with it.
    message: Option<Box<AssistantMessage>>,
    finish: Option<Finish>,
    /// One of the events that end the run (its `error` and `done`): written
    /// even after some of the run's events were lost.
    last: bool,
    ack: Option<oneshot::Sender<Result<(), LogError>>>,
}

/// Events of a run that were not stored: the run may only end, numbering its
/// last events after `last_good`, so that its log has no gap and never shows
/// an event after a lost one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// The `seq` of the run's last event known to be stored.
    pub last_good: i64,
    /// The database refused the events (rather than being unavailable).
    pub refused: bool,
    /// Events before the run's end were lost, not only its end: its log
    /// does not hold its whole reply.
    pub before_end: bool,
}

/// Runs with lost events, shared by the writer (which records them) and the
/// emitters (which stop at once, and number their end after `last_good`).
type LostRuns = Arc<Mutex<HashMap<Uuid, Lost>>>;

/// A handle to append events. Cheap to clone; the writer stops when every
/// handle is dropped and the queue is empty.
#[derive(Debug, Clone)]
pub struct EventLog {
    queue: mpsc::Sender<Pending>,
    lost: LostRuns,
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
    /// Under load the writer begins a commit at most once per `interval`
    /// (see the module docs; zero commits whenever the last commit ends).
    /// It stops taking events when `stop` fires, commits what is queued,
    /// and ends.
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        interval: Duration,
        stop: CancellationToken,
    ) -> (EventLog, impl Future<Output = ()>) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let lost = LostRuns::default();
        let writer = write_loop(store, hub, rx, lost.clone(), interval, stop);
        (EventLog { queue, lost }, writer)
    }

    /// Queues an event, and the state of the run's assistant message to
    /// write in the same transaction; it reaches subscribers once committed.
    /// Refused once some of the run's events were lost: the run may only end.
    pub async fn append(
        &self,
        run_key: i64,
        event: StoredEvent,
        message: Option<AssistantMessage>,
    ) -> Result<(), LogError> {
        if let Some(lost) = self.lost(event.run_id) {
            return Err(if lost.refused {
                LogError::Refused
            } else {
                LogError::Store("earlier events of this run could not be stored".to_owned())
            });
        }
        self.send(Pending {
            run_key,
            event,
            message: message.map(Box::new),
            finish: None,
            last: false,
            ack: None,
        })
        .await
    }

    /// Whether some of the run's events were lost, and after which `seq`.
    pub fn lost(&self, run_id: Uuid) -> Option<Lost> {
        lock(&self.lost).get(&run_id).copied()
    }

    async fn send(&self, pending: Pending) -> Result<(), LogError> {
        self.queue.send(pending).await.map_err(|_| LogError::Closed)
    }

    /// Queues a run's last events (its `error`, if any, and its `done`)
    /// with its final state (and its assistant message's), and waits for
    /// the commit. They are written even if some of the run's earlier
    /// events were lost; the caller numbers them after [`Lost::last_good`].
    pub async fn finish(
        &self,
        run_key: i64,
        error: Option<StoredEvent>,
        done: StoredEvent,
        finish: Finish,
        message: Option<AssistantMessage>,
    ) -> Result<(), LogError> {
        if let Some(error) = error {
            self.send(Pending {
                run_key,
                event: error,
                message: None,
                finish: None,
                last: true,
                ack: None,
            })
            .await?;
        }
        let (ack, done_ack) = oneshot::channel();
        self.send(Pending {
            run_key,
            event: done,
            message: message.map(Box::new),
            finish: Some(finish),
            last: true,
            ack: Some(ack),
        })
        .await?;
        done_ack.await.map_err(|_| LogError::Closed)?
    }
}

fn lock(lost: &LostRuns) -> std::sync::MutexGuard<'_, HashMap<Uuid, Lost>> {
    // The map stays consistent whatever a panicking holder was doing.
    lost.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What became of one pending event.
#[derive(Debug, Clone)]
enum Fate {
    /// Not written: an earlier event of its run was lost.
    Skipped,
    /// Committed.
    Committed,
    /// Not written: its run had been ended by another party.
    AlreadyEnded,
    /// The database refused its run's events.
    Refused,
    /// The database could not be reached.
    Failed(Arc<str>),
}

async fn write_loop(
    store: Store,
    hub: Arc<Hub>,
    mut rx: mpsc::Receiver<Pending>,
    lost: LostRuns,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(256);
    let mut stopping = false;
    // When the last commit began.
    let mut began: Option<Instant> = None;
    // On PostgreSQL, the log's own connection, opened at its first commit
    // and again after one that failed (SQLite's commits use the one write
    // connection of the store).
    let mut held: Option<OwnConnection> = None;
    loop {
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
        if let Some(due) = began.map(|began| began + interval)
            && !stopping
            && Instant::now() < due
        {
            // Under load: the events that arrive by the end of the interval
            // share this commit.
            tokio::time::sleep_until(due).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
        }
        began = Some(Instant::now());
        let mut fates = vec![Fate::Skipped; batch.len()];
        let items = writable(&lost, &batch);
        write(&store, &mut held, &batch, items, &mut fates).await;
        deliver(&hub, &lost, batch.drain(..), fates);
    }
    if let Some(conn) = held {
        conn.close().await;
    }
}

/// The batch's events to write: all but the non-final events of runs with
/// lost events, which are left out so that no event follows a lost one.
fn writable(lost: &LostRuns, batch: &[Pending]) -> Vec<usize> {
    let lost = lock(lost);
    (0..batch.len())
        .filter(|&i| batch[i].last || !lost.contains_key(&batch[i].event.run_id))
        .collect()
}

/// Writes the events at `items`, setting each one's fate. A database that
/// cannot be reached is tried again a few times; a database that refuses
/// the batch's data has the refusing runs found and left out, and the rest
/// committed at once: one run's bad data never fails, delays or loses
/// another run's events.
async fn write(
    store: &Store,
    held: &mut Option<OwnConnection>,
    batch: &[Pending],
    items: Vec<usize>,
    fates: &mut [Fate],
) {
    if items.is_empty() {
        return;
    }
    let mut outcome = commit(store, held, batch, &items).await;
    for pause in RETRY_BACKOFF {
        match &outcome {
            // A database the probe finds down is not retried here: the
            // runs hear at once, and retry their ends themselves.
            Err(StoreError::Unavailable(_)) if !store.is_down() => {
                tokio::time::sleep(pause).await;
                outcome = commit(store, held, batch, &items).await;
            }
            _ => break,
        }
    }
    match outcome {
        Ok(ended) => settle(&items, &ended, fates),
        Err(error) if error.is_refusal() => isolate(store, held, batch, &items, fates).await,
        Err(error) => {
            tracing::error!(%error, events = items.len(), "the event log could not commit a batch");
            fail(&items, &error, fates);
        }
    }
}

/// Commits the runs of a refused batch in halves, then halves of the halves
/// that are refused, down to the runs whose own events the database
/// refuses: about two commits per level for each refused run.
async fn isolate(
    store: &Store,
    held: &mut Option<OwnConnection>,
    batch: &[Pending],
    items: &[usize],
    fates: &mut [Fate],
) {
    // Each run's events, in the order it queued them.
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for &i in items {
        let slot = *index.entry(batch[i].event.run_id).or_insert_with(|| {
            runs.push(Vec::new());
            runs.len() - 1
        });
        runs[slot].push(i);
    }
    let mut halves = vec![runs];
    while let Some(mut runs) = halves.pop() {
        if runs.len() == 1 {
            // Known refused: each part is only committed once split further.
            refuse(store, batch, &runs[0], fates);
            continue;
        }
        let second = runs.split_off(runs.len() / 2);
        for part in [runs, second] {
            let items: Vec<usize> = part.concat();
            match commit(store, held, batch, &items).await {
                Ok(ended) => settle(&items, &ended, fates),
                Err(error) if error.is_refusal() => halves.push(part),
                Err(error) => {
                    tracing::error!(%error, events = items.len(), "the event log could not commit a batch");
                    fail(&items, &error, fates);
                }
            }
        }
    }
}

fn settle(items: &[usize], ended: &[bool], fates: &mut [Fate]) {
    for (&i, &ended) in items.iter().zip(ended) {
        fates[i] = if ended {
            Fate::AlreadyEnded
        } else {
            Fate::Committed
        };
    }
}

fn fail(items: &[usize], error: &StoreError, fates: &mut [Fate]) {
    let error: Arc<str> = error.to_string().into();
    for &i in items {
        fates[i] = Fate::Failed(error.clone());
    }
}

fn refuse(store: &Store, batch: &[Pending], items: &[usize], fates: &mut [Fate]) {
    let Some(&first) = items.first() else {
        return;
    };
    let event = &batch[first].event;
    // The database's reason went to the log with the commit that failed
    // it; user data does not go there.
    tracing::error!(
        run_id = %event.run_id,
        first_seq = event.seq,
        events = items.len(),
        backend = ?store.backend(),
        "the database refused this run's events; ending the run, committing the others"
    );
    for &i in items {
        fates[i] = Fate::Refused;
    }
}

/// Publishes what was committed, answers each `done`'s sender, and records
/// the runs whose events were lost.
fn deliver(hub: &Hub, lost: &LostRuns, batch: impl Iterator<Item = Pending>, fates: Vec<Fate>) {
    let mut acks = Vec::new();
    let mut committed = Vec::new();
    let mut lost = lock(lost);
    for (pending, fate) in batch.zip(fates) {
        let run_id = pending.event.run_id;
        let result = match fate {
            Fate::Committed => {
                if let Some(finish) = &pending.finish {
                    crate::telemetry::metrics::run_finished(finish.status.as_str());
                    lost.remove(&run_id);
                }
                committed.push(pending.event);
                Ok(())
            }
            Fate::Skipped => Ok(()),
            Fate::AlreadyEnded => Err(LogError::AlreadyEnded),
            Fate::Refused | Fate::Failed(_) => {
                let refused = matches!(fate, Fate::Refused);
                let entry = lost.entry(run_id).or_insert(Lost {
                    last_good: pending.event.seq - 1,
                    refused,
                    before_end: false,
                });
                entry.refused |= refused;
                entry.before_end |= !pending.last;
                Err(match fate {
                    Fate::Failed(error) => LogError::Store(error.to_string()),
                    _ => LogError::Refused,
                })
            }
        };
        if let Some(ack) = pending.ack {
            acks.push((ack, result));
        }
    }
    drop(lost);
    crate::telemetry::metrics::events_committed(committed.len());
    hub.publish(committed);
    for (ack, result) in acks {
        let _ = ack.send(result);
    }
}

/// Commits a batch on the held connection, or a new one. Returns, for each
/// pending event, whether it was left out: the events of a run whose end
/// found it ended already (another party ended it), and those of a second
/// end of one run in the same batch. A connection that failed is given back.
async fn commit(
    store: &Store,
    held: &mut Option<OwnConnection>,
    batch: &[Pending],
    items: &[usize],
) -> Result<Vec<bool>, StoreError> {
    let batch: Vec<&Pending> = items.iter().map(|&i| &batch[i]).collect();
    let committed = commit_on(store, held, &batch).await;
    if committed.is_err() {
        *held = None;
    }
    committed
}

async fn commit_on(
    store: &Store,
    held: &mut Option<OwnConnection>,
    batch: &[&Pending],
) -> Result<Vec<bool>, StoreError> {
    // Events alone (no run ends here, no message to write) are one
    // statement, which commits itself: no `BEGIN` and `COMMIT` exchanges
    // around it. Under light load nearly every commit is such.
    if store.statements_commit_alone()
        && batch
            .iter()
            .all(|p| p.finish.is_none() && p.message.is_none())
    {
        let events: Vec<(i64, &StoredEvent)> =
            batch.iter().map(|p| (p.run_key, &p.event)).collect();
        let mut conn = store.events_connection(held).await?;
        store::append_events(&mut conn, &events).await?;
        return Ok(vec![false; batch.len()]);
    }
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
                // A code and a string: serializing them cannot fail.
                error: finish
                    .error
                    .as_ref()
                    .and_then(|error| serde_json::to_string(error).ok()),
                usage: finish.usage.as_ref().map(serde_json::Value::to_string),
                // Numbers: serializing them cannot fail.
                context: finish
                    .context
                    .as_ref()
                    .and_then(|context| serde_json::to_string(context).ok()),
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
    // A call these runs left started (a crash, a lost node, a failure
    // mid-call) never runs again: it is finished as an outcome unknown,
    // after the message that made it. A completed run finished every call
    // before it went on, and a paused one made none of the calls of its
    // last reply, so the statement is spared for both.
    let unfinished: Vec<Uuid> = ends
        .iter()
        .filter(|end| {
            !matches!(end.status, RunStatus::Completed | RunStatus::RequiresAction)
                && ended.contains(&end.id)
        })
        .map(|end| end.id)
        .collect();
    if !unfinished.is_empty() {
        store::settle_started_tool_calls(&mut tx, &unfinished).await?;
    }
    for pending in written.clone() {
        if let Some(finish) = &pending.finish
            && finish.close_streaming
        {
            store::close_streaming_messages(&mut tx, pending.event.run_id, finish.message_status)
                .await?;
        }
    }
    let events: Vec<(i64, &StoredEvent)> = written.map(|p| (p.run_key, &p.event)).collect();
    store::append_events(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(dropped)
}
