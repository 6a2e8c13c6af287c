//! [`MockLlm`]: a running mock server, its address and its shutdown.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::routes::router;
use crate::state::{AppState, Options};

/// A mock OpenAI-compatible server running in the background.
///
/// It serves until [`MockLlm::shutdown`] is awaited or the value is dropped (dropping stops it
/// without waiting). Open streams are aborted at shutdown.
#[derive(Debug)]
pub struct MockLlm {
    /// The bound address, with the real port when bound to port 0.
    addr: SocketAddr,
    /// Shared with every handler; lives as long as the server.
    state: AppState,
    /// Cancelled by `shutdown` or `Drop`; stops the accept loop and every open stream.
    shutdown: CancellationToken,
    /// Holds the serving task so `shutdown` can wait for it.
    tracker: TaskTracker,
}

impl MockLlm {
    /// Binds `127.0.0.1:0` and serves in the background until dropped or `shutdown()`.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Binds `127.0.0.1:0` with `options` and serves in the background.
    pub async fn start_with(options: Options) -> io::Result<Self> {
        Self::start_on_with(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), options).await
    }

    /// Binds `addr` and serves in the background.
    pub async fn start_on(addr: SocketAddr) -> io::Result<Self> {
        Self::start_on_with(addr, Options::default()).await
    }

    /// Binds `addr` with `options` and serves in the background.
    #[tracing::instrument(skip_all, fields(%addr))]
    pub async fn start_on_with(addr: SocketAddr, options: Options) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        // Small SSE chunks must leave at once: Nagle plus delayed ACKs would hold them ~40 ms.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "failed to set TCP_NODELAY");
            }
        });
        let shutdown = CancellationToken::new();
        let state = AppState::new(options, shutdown.clone());
        let app = router(state.clone());
        let tracker = TaskTracker::new();
        let signal = shutdown.clone().cancelled_owned();
        tracker.spawn(async move {
            if let Err(error) = axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(%error, "mock-llm server failed");
            }
        });
        tracker.close();
        tracing::info!(%addr, "mock-llm listening");
        Ok(Self {
            addr,
            state,
            shutdown,
            tracker,
        })
    }

    /// The OpenAI base URL, `http://ADDR/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of `POST /v1/chat/completions` requests received so far (for retry-count
    /// assertions).
    pub fn requests(&self) -> u64 {
        self.state.requests()
    }

    /// The JSON bodies of received requests, oldest first; at most the last 1000, and none
    /// when [`Options::record_bodies`] is off. Bodies that are not JSON are not recorded.
    pub fn request_bodies(&self) -> Vec<serde_json::Value> {
        self.state.request_bodies()
    }

    /// The `Authorization` header values seen, oldest first (to assert the key was sent); at
    /// most the last 1000, and none when [`Options::record_bodies`] is off.
    pub fn authorizations(&self) -> Vec<String> {
        self.state.authorizations()
    }

    /// Response bodies currently being sent (streams still open).
    pub fn open_streams(&self) -> u64 {
        self.state.open_streams()
    }

    /// Waits until exactly `count` response bodies are being sent, e.g. `0` to see that a
    /// client's disconnect reached the server.
    pub async fn wait_for_open_streams(&self, count: u64) {
        self.state.wait_for_open_streams(count).await;
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("mock-llm shutting down");
        self.shutdown().await;
    }

    /// Stops accepting, aborts open streams and waits for the server task to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
