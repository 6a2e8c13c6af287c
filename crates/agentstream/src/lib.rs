//! agentstream: streams an LLM agent's reply over Server-Sent Events while the
//! agent's tools read and write a database, and keeps every conversation
//! durable. See `docs/DESIGN.md` for the architecture and its guarantees.

pub mod agent;
pub mod app;
pub mod config;
pub mod events;
pub mod http;
pub mod llm;
pub mod runs;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod tools;

pub use app::App;
pub use config::Config;
