//! Herald: a real-time push hub speaking Mercure over Server-Sent Events.
//!
//! The crate is layered so each part can be read on its own:
//! - [`sse`]: the wire format (encoder and a spec-complete parser);
//! - [`topic`]: topic selectors (exact, URI template, URL Pattern, `*`);
//! - [`auth`]: JWT validation and claim evaluation;
//! - [`hub`]: the core, with no HTTP in it: registry, fan-out, queues;
//! - [`history`]: what lets a subscriber resume (`Last-Event-ID`);
//! - [`http`]: the axum routes;
//! - [`config`]: one configuration, from file < environment < flags;
//! - [`client`]: the small HTTP client behind `herald publish|subscribe`.

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod history;
pub mod http;
pub mod hub;
pub mod server;
pub mod sse;
pub mod topic;
pub mod update;
