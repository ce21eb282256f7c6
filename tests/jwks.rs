//! Keys from an identity provider's JWKS (`--jwks-url`): a small local
//! JWKS server (a real HTTP server on loopback) that rotates its keys
//! mid-test; keys made by openssl (Ed25519, RSA, EC P-256), tokens signed
//! with them, publishes to a real Herald.
mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::json;

use common::*;

/// A JWKS server: serves whatever `body` holds now, counts fetches.
struct Provider {
    url: String,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    fn start(keys: &[serde_json::Value]) -> Provider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                f.fetch_add(1, Ordering::SeqCst);
                let body = b.lock().clone();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=3600\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let p = Provider { url, body, fetches };
        p.serve(keys);
        p
    }

    fn serve(&self, keys: &[serde_json::Value]) {
        *self.body.lock() = json!({ "keys": keys }).to_string();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A key pair made by openssl: its private PEM, and its public JWK.
struct KeyPair {
    pem: Vec<u8>,
    alg: Algorithm,
    kid: String,
    jwk: serde_json::Value,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn keypair(dir: &std::path::Path, kind: &str, kid: &str) -> KeyPair {
    let path = dir.join(format!("{kid}.pem"));
    let p = path.to_str().unwrap();
    match kind {
        "ed25519" => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "rsa",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
        _ => openssl(&[
            "genpkey",
            "-algorithm",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
    };
    let der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    let (alg, jwk) = match kind {
        "ed25519" => (
            Algorithm::EdDSA,
            json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64url(&der[der.len() - 32..])}),
        ),
        "rsa" => {
            let text =
                String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"])).unwrap();
            let hex = text.trim().trim_start_matches("Modulus=");
            let n: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (
                Algorithm::RS256,
                json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB"}),
            )
        }
        _ => {
            let point = &der[der.len() - 65..];
            assert_eq!(point[0], 4, "an uncompressed P-256 point");
            (
                Algorithm::ES256,
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64url(&point[1..33]), "y": b64url(&point[33..])}),
            )
        }
    };
    KeyPair {
        pem: std::fs::read(&path).unwrap(),
        alg,
        kid: kid.into(),
        jwk,
    }
}

impl KeyPair {
    /// A publisher token signed with this key, naming `kid`.
    fn token_as(&self, kid: &str) -> String {
        let key = match self.alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&self.pem),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&self.pem),
            _ => EncodingKey::from_ec_pem(&self.pem),
        }
        .unwrap();
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &header,
            &json!({"mercure": {"publish": ["*"]}, "exp": exp}),
            &key,
        )
        .unwrap()
    }

    fn token(&self) -> String {
        self.token_as(&self.kid)
    }
}

async fn publish_with(server: &Server, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(server.hub())
        .bearer_auth(token)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=https%3A%2F%2Fexample.com%2Fk&data=x")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let why = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        status,
        format!("{why} {}", r.text().await.unwrap_or_default()),
    )
}

#[tokio::test]
async fn keys_come_from_the_jwks_and_follow_its_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let ed1 = keypair(dir.path(), "ed25519", "ed-1");
    let ed2 = keypair(dir.path(), "ed25519", "ed-2");
    let rsa = keypair(dir.path(), "rsa", "rsa-1");
    let ec = keypair(dir.path(), "ec", "ec-1");
    // A symmetric key in a JWKS is public: never a key.
    let hs = json!({"kty": "oct", "kid": "hs-1", "k": b64url(b"shared-secret")});
    let idp = Provider::start(&[ed1.jwk.clone(), rsa.jwk.clone(), ec.jwk.clone(), hs]);
    let server = Server::start_raw(
        &["serve", "--listen", "127.0.0.1:0", "--jwks-url", &idp.url],
        &[],
    );
    assert_eq!(idp.fetches(), 1, "fetched at startup");

    for k in [&ed1, &rsa, &ec] {
        let (status, why) = publish_with(&server, &k.token()).await;
        assert_eq!(status, 200, "{:?}: {why}", k.alg);
    }
    let hs_token = jsonwebtoken::encode(
        &Header {
            kid: Some("hs-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &json!({"mercure": {"publish": ["*"]}}),
        &EncodingKey::from_secret(b"shared-secret"),
    )
    .unwrap();
    let (status, why) = publish_with(&server, &hs_token).await;
    assert_eq!(
        status, 401,
        "an HMAC key from a JWKS verifies nothing: {why}"
    );
    assert_eq!(idp.fetches(), 2, "the unknown kid fetched the set once");

    // Rotation: ed-2 comes in, rsa-1 and ec-1 leave. A token with the new
    // key works at once... after the rate limit since the last unknown kid.
    idp.serve(&[ed1.jwk.clone(), ed2.jwk.clone()]);
    let (status, why) = publish_with(&server, &ed2.token()).await;
    assert_eq!(
        status, 401,
        "within the rate limit: not fetched again ({why})"
    );
    assert!(why.contains("ed-2"), "the reason names the kid: {why}");
    assert_eq!(idp.fetches(), 2, "unknown kids are rate-limited");
    tokio::time::sleep(
        herald::auth::jwks::UNKNOWN_KID_INTERVAL + std::time::Duration::from_millis(200),
    )
    .await;
    let (status, why) = publish_with(&server, &ed2.token()).await;
    assert_eq!(status, 200, "the new key works once fetched: {why}");
    assert_eq!(idp.fetches(), 3);
    // The old key still in the set keeps working; the ones that left do
    // not, not even for a token verified (and remembered) before.
    let (status, _) = publish_with(&server, &ed1.token()).await;
    assert_eq!(status, 200);
    let (status, why) = publish_with(&server, &rsa.token()).await;
    assert_eq!(status, 401, "rsa-1 left the set: {why}");
    // A token signed with one key but naming another fails its signature.
    let (status, _) = publish_with(&server, &ed1.token_as("ed-2")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_provider_that_cannot_be_reached_is_a_503_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ed = keypair(dir.path(), "ed25519", "ed-1");
    let port = common::redis::free_port();
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let server = Server::start_raw(
        &["serve", "--listen", "127.0.0.1:0", "--jwks-url", &url],
        &[],
    );
    let (status, why) = publish_with(&server, &ed.token()).await;
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("could not be fetched") && why.contains(&url),
        "{why}"
    );
}
