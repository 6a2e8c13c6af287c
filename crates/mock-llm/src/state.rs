//! Shared server state: counters, recorded requests and the shutdown token.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Most request bodies and authorization values kept; older ones are dropped first.
pub const RECORD_LIMIT: usize = 1000;

/// Server-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Keep the last [`RECORD_LIMIT`] request bodies and `Authorization` values for
    /// [`crate::MockLlm::request_bodies`] and [`crate::MockLlm::authorizations`]. On by default;
    /// benchmarks turn it off.
    pub record_bodies: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            record_bodies: true,
        }
    }
}

/// The state every handler shares; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: Options,
    /// Cancelled when the server shuts down; open streams end on it.
    shutdown: CancellationToken,
    /// Chat completion requests received; also numbers `chatcmpl-` and `call_` ids.
    requests: AtomicU64,
    /// Requests seen per fail-first key. Only `fail_first=` requests lock it.
    fail_counts: Mutex<HashMap<String, u64>>,
    bodies: Mutex<VecDeque<serde_json::Value>>,
    authorizations: Mutex<VecDeque<String>>,
    open_streams: AtomicU64,
    /// Woken whenever `open_streams` changes.
    streams_changed: Notify,
}

impl AppState {
    /// State for a server that stops when `shutdown` is cancelled.
    pub fn new(options: Options, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                shutdown,
                requests: AtomicU64::new(0),
                fail_counts: Mutex::new(HashMap::new()),
                bodies: Mutex::new(VecDeque::new()),
                authorizations: Mutex::new(VecDeque::new()),
                open_streams: AtomicU64::new(0),
                streams_changed: Notify::new(),
            }),
        }
    }

    /// The server's options.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The token that stops the server.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Counts a chat completion request and returns its sequence number, from 1.
    pub(crate) fn next_request(&self) -> u64 {
        self.inner.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Chat completion requests received so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Counts a request under `key` and says whether it is among the first `limit`.
    pub(crate) fn fails_first(&self, key: String, limit: u64) -> bool {
        let mut counts = lock(&self.inner.fail_counts);
        let seen = counts.entry(key).or_insert(0);
        *seen += 1;
        *seen <= limit
    }

    pub(crate) fn record_body(&self, body: serde_json::Value) {
        push_bounded(&self.inner.bodies, body);
    }

    pub(crate) fn record_authorization(&self, value: String) {
        push_bounded(&self.inner.authorizations, value);
    }

    /// The recorded request bodies, oldest first.
    pub fn request_bodies(&self) -> Vec<serde_json::Value> {
        lock(&self.inner.bodies).iter().cloned().collect()
    }

    /// The recorded `Authorization` header values, oldest first.
    pub fn authorizations(&self) -> Vec<String> {
        lock(&self.inner.authorizations).iter().cloned().collect()
    }

    /// Response bodies currently being sent.
    pub fn open_streams(&self) -> u64 {
        self.inner.open_streams.load(Ordering::Acquire)
    }

    /// Waits until exactly `count` response bodies are being sent.
    pub async fn wait_for_open_streams(&self, count: u64) {
        loop {
            let changed = self.inner.streams_changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before the check, so a change in between still wakes us.
            changed.as_mut().enable();
            if self.open_streams() == count {
                return;
            }
            changed.await;
        }
    }

    /// Marks a response body open until the returned guard drops.
    pub(crate) fn open_stream(&self) -> OpenStream {
        self.inner.open_streams.fetch_add(1, Ordering::AcqRel);
        self.inner.streams_changed.notify_waiters();
        OpenStream {
            state: self.clone(),
        }
    }
}

/// Counts one response body as open while it lives.
#[derive(Debug)]
pub(crate) struct OpenStream {
    state: AppState,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.state.inner.open_streams.fetch_sub(1, Ordering::AcqRel);
        self.state.inner.streams_changed.notify_waiters();
    }
}

// A panic while holding one of these locks cannot leave the data half-updated, so a
// poisoned lock is still safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn push_bounded<T>(queue: &Mutex<VecDeque<T>>, item: T) {
    let mut queue = lock(queue);
    if queue.len() == RECORD_LIMIT {
        queue.pop_front();
    }
    queue.push_back(item);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AppState {
        AppState::new(Options::default(), CancellationToken::new())
    }

    #[test]
    fn fail_first_counts_per_key() {
        let state = state();
        let fails: Vec<bool> = (0..3)
            .map(|_| state.fails_first("a".to_owned(), 2))
            .collect();
        assert_eq!(fails, [true, true, false]);
        assert!(state.fails_first("b".to_owned(), 2));
    }

    #[test]
    fn recording_keeps_the_newest() {
        let state = state();
        for n in 0..RECORD_LIMIT + 5 {
            state.record_body(serde_json::json!(n));
        }
        let bodies = state.request_bodies();
        assert_eq!(bodies.len(), RECORD_LIMIT);
        assert_eq!(bodies[0], serde_json::json!(5));
        assert_eq!(
            bodies[RECORD_LIMIT - 1],
            serde_json::json!(RECORD_LIMIT + 4)
        );
    }

    #[tokio::test]
    async fn open_stream_guard_counts() {
        let state = state();
        let guard = state.open_stream();
        assert_eq!(state.open_streams(), 1);
        drop(guard);
        state.wait_for_open_streams(0).await;
        assert_eq!(state.open_streams(), 0);
    }
}
