//! The live dashboard example (examples/dashboard, scenario 4) in real
//! Chromium: values that move every second, two people's tabs that agree,
//! the app's log tail, a busy tab that catches up in one frame, Herald
//! stopped and started (the pages fill the gap) and the app restarted
//! (the pages follow its new run). The
//! checks are in `tests/browser/example_dashboard.mjs`. Needs the example
//! built (`cargo build --release --examples`, as scripts/test-all.sh does).

mod common;

#[test]
fn dashboard_in_chromium() {
    let report = common::apps::run_example("dashboard", "example_dashboard.mjs");
    assert_eq!(report.matches("ok - ").count(), 8, "{report}");
}
