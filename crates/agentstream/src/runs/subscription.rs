//! Subscriptions: replay a run's committed events after a cursor, then
//! follow it live, with no gap and no duplicate at the hand-over.

use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::{LiveEvents, RunManager};
use crate::events::{EventKind, StoredEvent};

/// How often a subscriber of a run driven elsewhere reads the store when no
/// notification comes (one may have been lost).
const REMOTE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// How many times in a row such a subscriber tries the store before it gives
/// up and tells its client to resume later.
const REMOTE_RETRIES: u32 = 15;

/// Events read from the store per query while replaying.
const REPLAY_PAGE: u32 = 512;

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A committed event, in `seq` order.
    Event(Arc<StoredEvent>),
    /// A `done {status: "requires_action"}` the run went on after (a replay
    /// of a run that paused for approval and resumed), in `seq` order: not
    /// the end of the stream.
    PassedPause(Arc<StoredEvent>),
    /// The store could not be read; the stream ends and the client may
    /// resume from its last `seq`.
    Unavailable(String),
}

/// Tells the manager when a subscriber goes away (for `on_disconnect=cancel`).
struct Presence {
    manager: RunManager,
    run_id: Uuid,
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.manager.subscriber_left(self.run_id);
    }
}

impl RunManager {
    /// The run's events after `after`: first those already committed, then
    /// live ones as they commit, ending after `done` (a pause's too, unless
    /// the run went on after it: then the stream goes on). A subscriber that
    /// falls behind the live channel reads from the store instead.
    pub fn subscribe(
        &self,
        run_id: Uuid,
        after: i64,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        // Join the live channel before reading the store, so that nothing
        // committed in between is missed; duplicates are dropped by `seq`.
        let live = self.inner.hub.subscribe(run_id);
        self.follow(run_id, after, live, true)
    }

    /// The events of a run started here, from its first: `live` was joined
    /// before the run's task existed, so it carries them all and the store
    /// is read only if this subscriber falls behind.
    pub fn follow_started(
        &self,
        run_id: Uuid,
        live: LiveEvents,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        self.follow(run_id, 0, Some(live), false)
    }

    fn follow(
        &self,
        run_id: Uuid,
        after: i64,
        live: Option<LiveEvents>,
        replay: bool,
    ) -> impl Stream<Item = Delivery> + Send + 'static {
        let manager = self.clone();
        async_stream::stream! {
            let _presence = Presence { manager: manager.clone(), run_id };
            let was_local = live.is_some();
            let mut live = live;
            // A run driven elsewhere: hear of its commits from before the
            // first read of the store, so no notice falls in between.
            let mut remote = (!was_local).then(|| manager.inner.hub.watch_remote(run_id));
            let mut failures = 0;
            let mut cursor = after;
            // Read the store, unless `live` carries every event from the
            // first; from the second time round, always.
            let mut replay = replay;
            loop {
                while std::mem::replace(&mut replay, true) {
                    let page = match manager.inner.store.events_after(run_id, cursor, REPLAY_PAGE).await {
                        Ok(page) => {
                            failures = 0;
                            page
                        }
                        // A run driven elsewhere goes on while the database
                        // blinks: wait it out (a while), then read again.
                        Err(_) if !was_local && failures < REMOTE_RETRIES => {
                            failures += 1;
                            tokio::time::sleep(REMOTE_POLL).await;
                            continue;
                        }
                        Err(error) => {
                            yield Delivery::Unavailable(error.to_string());
                            return;
                        }
                    };
                    let full = page.len() == REPLAY_PAGE as usize;
                    // A run driven elsewhere with nothing after the cursor
                    // may be over, its `done` at or before the cursor (a
                    // client resuming past the end): then the stream ends.
                    // Read after learning it ended, so no `done` is missed.
                    let page = if page.is_empty() && !was_local {
                        match manager.inner.store.run_ended(run_id).await {
                            Ok(true) => match manager.inner.store.events_after(run_id, cursor, REPLAY_PAGE).await {
                                Ok(rest) if rest.is_empty() => return,
                                Ok(rest) => rest,
                                Err(error) => {
                                    yield Delivery::Unavailable(error.to_string());
                                    return;
                                }
                            },
                            Ok(false) | Err(_) => page,
                        }
                    } else {
                        page
                    };
                    let count = page.len();
                    for (i, event) in page.into_iter().enumerate() {
                        cursor = event.seq;
                        // A pause the run went on after is not the end. (A
                        // pause that ends a full page is taken as the end:
                        // the client resumes after it.)
                        let resumed = event.is_pause() && i + 1 < count;
                        let done = event.kind == EventKind::Done && !resumed;
                        yield if resumed {
                            Delivery::PassedPause(Arc::new(event))
                        } else {
                            Delivery::Event(Arc::new(event))
                        };
                        if done {
                            return;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                let Some(receiver) = live.as_mut() else {
                    if was_local {
                        // Its channel closed with no `done` stored: its end
                        // could not be stored (the database is away).
                        yield Delivery::Unavailable(
                            "the run's end is not stored yet; resume later from the last seq"
                                .to_owned(),
                        );
                        return;
                    }
                    // A paused run that goes on here now: follow it live,
                    // after reading what it committed before this joined.
                    if let Some(joined) = manager.inner.hub.subscribe(run_id) {
                        live = Some(joined);
                        continue;
                    }
                    // Driven by another node: read again when it says it
                    // committed more, or after a while in case a
                    // notification was lost.
                    let remote = remote.get_or_insert_with(|| manager.inner.hub.watch_remote(run_id));
                    let _ = tokio::time::timeout(REMOTE_POLL, remote.changed()).await;
                    continue;
                };
                loop {
                    match receiver.recv().await {
                        // Already sent; a `done` at or before the cursor (a
                        // client resuming past the end) ends the stream.
                        Ok(event) if event.seq <= cursor => {
                            if event.kind == EventKind::Done {
                                return;
                            }
                        }
                        Ok(event) if event.seq == cursor + 1 => {
                            cursor = event.seq;
                            let done = event.kind == EventKind::Done;
                            yield Delivery::Event(event);
                            if done {
                                return;
                            }
                        }
                        // A gap: catch up from the store.
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            live = None;
                            break;
                        }
                    }
                }
            }
        }
    }
}
