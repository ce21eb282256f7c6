//! The likes and comments example (examples/likes, scenario 2) in real
//! Chromium, on a real Redis started for the test: comments ranked by
//! likes, one like per person, like and unlike from any page updating every
//! page at once, Herald stopped and started while comments and likes are
//! made (every page catches up, once each, no reload), and bad input
//! answered with a clear 4xx the page shows. The checks are in
//! `tests/browser/example_likes.mjs`. Needs the example built (`cargo
//! build --release --examples`, as scripts/test-all.sh does) and
//! `redis-server` on PATH.

mod common;

#[test]
fn likes_in_chromium() {
    let redis = common::redis::Redis::start(&[]);
    let report = common::apps::run_example_with_env(
        "likes",
        "example_likes.mjs",
        &[("REDIS_URL", &redis.url())],
    );
    drop(redis);
    assert_eq!(report.matches("ok - ").count(), 8, "{report}");
}
