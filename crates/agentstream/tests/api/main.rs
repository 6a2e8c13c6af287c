//! The API tested end to end: a real server on a loopback port, real SQLite
//! files and a real PostgreSQL, a real HTTP client.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly on the first surprise"
)]

mod helpers;

mod ai_sdk;
mod approvals;
mod cases;
mod chats;
mod cluster;
mod context;
mod crash;
pub mod dbrestart;
mod durability;
mod example;
mod failures;
mod hostile;
mod http_tools;
mod input;
mod jwt;
mod layout;
mod mcp;
mod mcp_http;
mod metrics;
mod onboarding;
mod openai_compat;
mod openai_sdk;
mod openapi;
mod pooler;
mod process;
mod reasoning;
mod replay;
mod security;
mod sql_tools;
mod streaming;
mod tools;
mod upstream;
