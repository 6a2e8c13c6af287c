//! The bare relay: a minimal axum SSE pass-through of an OpenAI-compatible upstream, with no
//! database, no run and no event log. Its CPU per event is the floor agentstream is held to.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::Client;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every request shares.
#[derive(Debug, Clone)]
struct RelayState {
    client: Client,
    /// `{upstream}/chat/completions`.
    completions_url: String,
    /// Ends open streams at shutdown, so graceful shutdown does not wait on them.
    shutdown: CancellationToken,
}

/// A relay serving in the background until [`Relay::shutdown`] or drop.
#[derive(Debug)]
pub struct Relay {
    /// The bound address, with the real port when bound to port 0.
    addr: SocketAddr,
    /// Stops the accept loop and every open stream.
    shutdown: CancellationToken,
    /// Holds the serving task so `shutdown` can wait for it.
    tracker: TaskTracker,
}

impl Relay {
    /// Binds `bind` and relays `POST /v1/chat/completions` to `upstream` (an OpenAI base URL
    /// such as `http://127.0.0.1:8089/v1`).
    #[tracing::instrument(skip_all, fields(%bind, upstream))]
    pub async fn start(bind: SocketAddr, upstream: &str) -> io::Result<Self> {
        let client = crate::tls::client_builder()
            .map_err(io::Error::other)?
            .http1_only()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(io::Error::other)?;
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        // Small SSE events must leave at once, as in agentstream and mock-llm.
        let listener = listener.tap_io(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "failed to set TCP_NODELAY");
            }
        });
        let shutdown = CancellationToken::new();
        let state = RelayState {
            client,
            completions_url: format!("{}/chat/completions", upstream.trim_end_matches('/')),
            shutdown: shutdown.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(relay_completion))
            .with_state(state);
        let tracker = TaskTracker::new();
        let signal = shutdown.clone().cancelled_owned();
        tracker.spawn(async move {
            if let Err(error) = axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::error!(%error, "relay server failed");
            }
        });
        tracker.close();
        tracing::info!(%addr, "relay listening");
        Ok(Self {
            addr,
            shutdown,
            tracker,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `signal` resolves, then shuts down.
    pub async fn run_until_stopped(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops accepting, ends open streams and waits for the server task.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `POST /v1/chat/completions`: sends the body upstream as is and forwards each upstream SSE
/// event's data as an SSE event. Upstream errors come back with their status and body.
async fn relay_completion(State(state): State<RelayState>, body: Bytes) -> Response {
    let upstream = state
        .client
        .post(&state.completions_url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let status = upstream.status();
    if !status.is_success() {
        let body = upstream.bytes().await.unwrap_or_default();
        return (status, body).into_response();
    }
    let events = upstream
        .bytes_stream()
        .eventsource()
        .map(|event| event.map(|event| SseEvent::default().data(event.data)))
        .take_until(state.shutdown.cancelled_owned());
    Sse::new(events).into_response()
}
