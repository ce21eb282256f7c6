//! A subscriber held open by curl (HTTP/1.1, HTTP/2, TLS: whatever the
//! arguments say), its output read as it comes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A subscriber held open by curl, its output read as it comes.
pub struct CurlStream {
    pub child: Child,
    pub out: std::sync::Arc<parking_lot::Mutex<String>>,
}

impl CurlStream {
    pub fn open(args: &[&str]) -> CurlStream {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "60"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl on PATH");
        let mut stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        CurlStream { child, out }
    }

    /// Wait until the output holds `needle`.
    pub fn wait_for(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.out.lock().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for CurlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
