//! Live delivery: a broadcast channel per run open on this node, fed only
//! with committed events.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::events::{EventKind, StoredEvent};

/// How many events a subscriber may fall behind before it reads from the
/// store instead; it never slows the run or grows memory without bound.
/// Every run open here holds one slot per event of this (about 2 KiB).
const CHANNEL_CAPACITY: usize = 64;

/// A receiver of a run's committed events, live.
pub type LiveEvents = broadcast::Receiver<Arc<StoredEvent>>;

/// The live channels of this node's open runs, and wake-ups for subscribers
/// here of runs another node drives.
#[derive(Debug, Default)]
pub struct Hub {
    channels: Mutex<HashMap<Uuid, broadcast::Sender<Arc<StoredEvent>>>>,
    /// Per run driven elsewhere: the last `seq` another node said it
    /// committed (0 for "look again", after the listener reconnected).
    remote: Mutex<HashMap<Uuid, watch::Sender<i64>>>,
}

impl Hub {
    fn channels(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Arc<StoredEvent>>>> {
        // The map stays consistent whatever a panicking holder was doing.
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the run's channel, and joins it: subscribers can join from now on.
    pub fn open(&self, run_id: Uuid) -> LiveEvents {
        self.channels()
            .entry(run_id)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Opens the channel of a run that goes on here after a pause, and wakes
    /// the subscribers here that wait for it to go on: they join it.
    pub fn reopen(&self, run_id: Uuid) -> LiveEvents {
        let live = self.open(run_id);
        let remote = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = remote.get(&run_id) {
            sender.send_modify(|_| {});
        }
        live
    }

    /// A receiver of the run's live events, if the run is open here.
    pub fn subscribe(&self, run_id: Uuid) -> Option<LiveEvents> {
        self.channels()
            .get(&run_id)
            .map(broadcast::Sender::subscribe)
    }

    /// How many subscribers the run has here.
    pub fn subscribers(&self, run_id: Uuid) -> usize {
        self.channels()
            .get(&run_id)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// Delivers committed events; a `done` closes its run's channel.
    pub fn publish(&self, events: impl IntoIterator<Item = StoredEvent>) {
        let mut channels = self.channels();
        for event in events {
            let done = event.kind == EventKind::Done;
            let run_id = event.run_id;
            if let Some(sender) = channels.get(&run_id) {
                // No receiver is fine: nobody is watching right now.
                let _ = sender.send(Arc::new(event));
            }
            if done {
                channels.remove(&run_id);
            }
        }
    }

    /// A wake-up for a subscriber here of a run driven elsewhere.
    pub fn watch_remote(&self, run_id: Uuid) -> watch::Receiver<i64> {
        let mut remote = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        remote.retain(|_, sender| sender.receiver_count() > 0);
        remote
            .entry(run_id)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe()
    }

    /// Another node committed events of these runs, up to these `seq`s.
    pub fn wake_remote(&self, committed: &[(Uuid, i64)]) {
        let remote = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        for (run_id, seq) in committed {
            if let Some(sender) = remote.get(run_id) {
                sender.send_replace(*seq);
            }
        }
    }

    /// Every remote subscriber reads the store again: notifications may have
    /// been missed (the listener reconnected).
    pub fn wake_all_remote(&self) {
        let remote = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in remote.values() {
            sender.send_modify(|_| {});
        }
    }

    /// Closes the run's channel without a `done` (its end could not be
    /// stored); subscribers fall back to the store and learn it is unavailable.
    pub fn abort(&self, run_id: Uuid) {
        self.channels().remove(&run_id);
    }
}
