//! The chat example (examples/chat, scenario 5) in real Chromium: two users
//! talking, two tabs each, a third who cannot read them; history from
//! Herald on reload; a message sent while Herald is stopped reaching every
//! tab once it is back; bad requests answered with clear 4xx. The checks are
//! in `tests/browser/example_chat.mjs`. Needs the example built
//! (`cargo build --release --examples`, as scripts/test-all.sh does).

mod common;

#[test]
fn chat_in_chromium() {
    let report = common::apps::run_example("chat", "example_chat.mjs");
    assert_eq!(report.matches("ok - ").count(), 10, "{report}");
}
