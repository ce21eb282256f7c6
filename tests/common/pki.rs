//! Certificates for TLS tests, made by openssl (Debian's `openssl`).

use std::path::PathBuf;
use std::process::Command;

/// A CA and a certificate it signed for localhost and 127.0.0.1.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.issue("a");
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `<name>-ca.pem`, and `<name>.pem`/`<name>.key` signed by it.
    pub fn issue(&self, name: &str) {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(self.dir.path())
                .output()
                .expect("openssl on PATH (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ca_key = format!("{name}-ca.key");
        let ca = format!("{name}-ca.pem");
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca,
            "-days",
            "2",
            "-subj",
            &format!("/CN=herald test CA {name}"),
        ]);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            self.path("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
    }
}
