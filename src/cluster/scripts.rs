//! The Lua scripts the engine runs on Redis, one `.lua` file each beside
//! this one (each opens with the keys it touches and why it must be atomic).
//!
//! A script runs on Redis as one step: nothing else reads or writes between
//! its commands. That is what makes a publish all-or-nothing, keeps a
//! partition's counter, clock and stream in step, and lets the merger's
//! question to an idle partition move its clock without racing an append.
//! `redis::Script` sends each by its SHA1 (`EVALSHA`) and loads it once
//! when a Redis does not know it yet.

/// The scripts, loaded once per cluster.
pub(super) struct Scripts {
    /// Check every id of a request, then append it: all or nothing.
    pub(super) append: redis::Script,
    /// Hold ids kept on another Redis than their entries.
    pub(super) reserve: redis::Script,
    /// Write where reserved ids went.
    pub(super) record: redis::Script,
    /// Drop reservations a failed request did not use.
    pub(super) release: redis::Script,
    /// Ask idle partitions whether anything is unread; raise their clocks.
    pub(super) probe: redis::Script,
    /// Start a replica round: a write to wait for, and the counters as of it.
    pub(super) sync: redis::Script,
}

impl Scripts {
    pub(super) fn load() -> Scripts {
        Scripts {
            append: redis::Script::new(include_str!("scripts/append.lua")),
            reserve: redis::Script::new(include_str!("scripts/reserve.lua")),
            record: redis::Script::new(include_str!("scripts/record.lua")),
            release: redis::Script::new(include_str!("scripts/release.lua")),
            probe: redis::Script::new(include_str!("scripts/probe.lua")),
            sync: redis::Script::new(include_str!("scripts/sync.lua")),
        }
    }
}
