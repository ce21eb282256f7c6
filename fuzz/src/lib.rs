//! Helpers shared by the fuzz targets.

/// libfuzzer-sys installs a panic hook that aborts at once, before any
/// `catch_unwind` can run. Herald deliberately catches panics of the
/// urlpattern crate (src/topic.rs: it panics on some patterns instead of
/// returning an error) and refuses the pattern, so those panics must be
/// allowed to unwind; every other panic still aborts at the panic site, so
/// the fuzzer reports it as a crash with its backtrace.
pub fn allow_caught_urlpattern_panics() {
    let aborting = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_urlpattern = info
            .location()
            .is_some_and(|l| l.file().contains("/urlpattern-"));
        if !in_urlpattern {
            aborting(info);
        }
    }));
}
