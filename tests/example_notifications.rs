//! The notification center example (examples/notifications, scenario 1) in
//! real Chromium: two users, two tabs each, through the page as a person
//! uses it; a notification and a "mark read" made while Herald is stopped
//! reaching every tab once it is back; plus bad requests answered with
//! clear 4xx. The checks are in
//! `tests/browser/example_notifications.mjs`. Needs the example built
//! (`cargo build --release --examples`, as scripts/test-all.sh does).

mod common;

#[test]
fn notification_center_in_chromium() {
    // The page brings no token: Herald asks the app (--auth-url).
    let report = common::apps::run_example_with_auth_url(
        "notifications",
        "example_notifications.mjs",
        "/api/herald-session",
    );
    assert_eq!(report.matches("ok - ").count(), 10, "{report}");
}
