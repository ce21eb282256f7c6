//! A real nginx (Debian's `nginx-light`) in front of Herald nodes, on a
//! free loopback port.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

/// A real nginx (Debian's) in front of the nodes: round-robin, buffering
/// off, stopped on drop.
pub struct Nginx {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// One worker process, up to 2,048 connections.
    pub fn start(upstreams: &[&str]) -> Nginx {
        Nginx::start_with(upstreams, 1)
    }

    /// `workers` worker processes (a master too when more than one), each
    /// up to 12,000 connections (client and upstream sides), spread over
    /// the workers by `reuseport`.
    pub fn start_with(upstreams: &[&str], workers: usize) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let servers: String = upstreams
            .iter()
            .map(|s| format!("    server {};\n", s.trim_start_matches("http://")))
            .collect();
        let (master, connections, reuse) = if workers > 1 {
            ("on", 12_000, " reuseport")
        } else {
            ("off", 2048, "")
        };
        let conf = format!(
            "daemon off;\nmaster_process {master};\nworker_processes {workers};\npid {d}/nginx.pid;\n\
             worker_rlimit_nofile 19000;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream herald {{\n{servers}    keepalive 32;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port}{reuse};\n    location / {{\n\
             proxy_pass http://herald;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
             proxy_buffering off;\n      proxy_read_timeout 1h;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx on PATH (apt-get install nginx-light)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn hub(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/mercure", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: a master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
