//! Herald: a real-time push hub speaking Mercure over Server-Sent Events.
//!
//! The crate is layered; imports point down only (`tests/layers.rs`
//! checks it, docs/architecture.md walks through it):
//! - the edge: [`server`] (wiring, `herald serve`), [`http`] (the routes
//!   and the lean stream path), [`config`] (file < environment < flags),
//!   [`client`] (the small HTTP client behind `herald publish|subscribe`);
//! - [`hub`]: who is subscribed to what; the committer, fan-out, queues,
//!   subscribe and replay; no HTTP and no Redis in it;
//! - [`log`]: the seam the hub publishes to and applies from, with the
//!   embedded engine; [`cluster`]: the Redis engine;
//! - [`history`]: storage, what lets a subscriber resume (`Last-Event-ID`):
//!   the journal + redb, or the memory ring;
//! - the pure cores: [`subscription`] (who a subscriber is), [`auth`] (JWT
//!   validation and claim evaluation, keys from a JWKS), [`topic`] (selectors: exact, URI
//!   template, URL Pattern, `*`), [`update`] (the update and its encoded
//!   frame), [`sse`] (the wire format).

pub mod auth;
pub mod client;
pub mod cluster;
pub mod config;
pub mod history;
pub mod http;
pub mod hub;
pub mod log;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod subscription;
pub mod topic;
pub mod update;
