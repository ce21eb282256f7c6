//! Verification keys from an identity provider's JWKS (`--jwks-url`).
//!
//! The set is fetched at startup and kept by key id (`kid`). It is fetched
//! again when it expires (the answer's `Cache-Control: max-age`, else
//! [`DEFAULT_MAX_AGE`], within [`MIN_MAX_AGE`]..[`MAX_MAX_AGE`]) and when a
//! token names a key the set does not hold (a rotation: the new key works
//! at once), at most once per [`UNKNOWN_KID_INTERVAL`] so that tokens with
//! made-up ids cannot make Herald hammer the provider. A key that leaves
//! the set stops verifying tokens as soon as Herald has fetched the set
//! without it. A fetch that fails keeps the keys already held (and is
//! logged); with none held, tokens are answered 503 with the reason.
//!
//! Only public keys for signatures are taken: RSA (RS256/384/512,
//! PS256/384/512), EC P-256 (ES256) and P-384 (ES384), Ed25519 (EdDSA).
//! Symmetric keys (`kty: oct`) and keys marked `use: enc` are ignored: a
//! JWKS is public, and an HMAC secret in it would let anyone sign.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::RwLock;

/// How long a set is used when its answer says nothing.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// Bounds on the `max-age` a provider may ask for.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(30);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// At most one fetch per this interval for tokens naming an unknown key.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(5);
/// A JWKS answer larger than this is refused.
pub const MAX_BODY: usize = 512 * 1024;
/// Keys taken from one set at most.
pub const MAX_KEYS: usize = 64;
/// A fetch that takes longer fails.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One usable key: what it verifies with, and the algorithms it accepts.
#[derive(Clone)]
pub struct Key {
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

struct Set {
    by_kid: HashMap<String, Key>,
    /// Keys without a `kid` (tried for tokens without one).
    anonymous: Vec<Key>,
    fetched: Option<Instant>,
    max_age: Duration,
    /// Why the last fetch failed, while no keys are held.
    error: Option<String>,
}

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    set: RwLock<Set>,
    /// One fetch at a time; others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    last_unknown_fetch: parking_lot::Mutex<Option<Instant>>,
    /// Bumped each time a fetch drops a key: tokens verified with it are
    /// forgotten.
    generation: AtomicU64,
    pub fetches: AtomicU64,
}

/// Why no key could be found for a token.
pub enum Missing {
    /// The set does not hold it (401).
    Unknown(String),
    /// No set could be fetched (503).
    Unavailable(String),
}

impl Jwks {
    /// Fetch the set once now; a failure is logged, not fatal (the
    /// provider may come up after Herald), and tokens are answered 503
    /// until a fetch succeeds.
    pub async fn start(url: &str) -> anyhow::Result<Arc<Jwks>> {
        let parsed =
            url::Url::parse(url).map_err(|e| anyhow::anyhow!("--jwks-url {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            anyhow::bail!("--jwks-url {url:?}: only https:// (or http://) URLs");
        }
        let jwks = Arc::new(Jwks {
            url: url.to_string(),
            client: http_client()?,
            set: RwLock::new(Set {
                by_kid: HashMap::new(),
                anonymous: Vec::new(),
                fetched: None,
                max_age: DEFAULT_MAX_AGE,
                error: Some("not fetched yet".into()),
            }),
            fetching: tokio::sync::Mutex::new(()),
            last_unknown_fetch: parking_lot::Mutex::new(None),
            generation: AtomicU64::new(0),
            fetches: AtomicU64::new(0),
        });
        jwks.refresh(None).await;
        Ok(jwks)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The keys that may verify a token with `kid` and `alg`.
    pub async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Key>, Missing> {
        let stale = {
            let set = self.set.read();
            set.fetched.is_none_or(|at| at.elapsed() >= set.max_age)
        };
        if stale {
            self.refresh(None).await;
        }
        if let Some(found) = self.held(kid, alg)? {
            return Ok(found);
        }
        // Perhaps a key the provider added since (a rotation).
        let may_fetch = {
            let mut last = self.last_unknown_fetch.lock();
            let due = last.is_none_or(|at| at.elapsed() >= UNKNOWN_KID_INTERVAL);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if may_fetch {
            let seen = self.fetches.load(Ordering::Relaxed);
            self.refresh(Some(seen)).await;
            if let Some(found) = self.held(kid, alg)? {
                return Ok(found);
            }
        }
        Err(Missing::Unknown(match kid {
            Some(kid) => format!(
                "no key with id (kid) {kid:?} for {alg:?} in the JWKS at {} (fetched again at \
                 most every {} s for unknown keys)",
                self.url,
                UNKNOWN_KID_INTERVAL.as_secs()
            ),
            None => format!(
                "the token names no key (kid) and no key without an id in the JWKS at {} takes {alg:?}",
                self.url
            ),
        }))
    }

    /// The keys held now for `kid` and `alg` (no fetch).
    pub fn held(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<Vec<Key>>, Missing> {
        let set = self.set.read();
        if set.fetched.is_none() {
            return Err(Missing::Unavailable(format!(
                "the keys at {} could not be fetched: {}",
                self.url,
                set.error.as_deref().unwrap_or("unknown error")
            )));
        }
        let found: Vec<Key> = match kid {
            Some(kid) => set.by_kid.get(kid).into_iter().cloned().collect(),
            None => set.anonymous.clone(),
        };
        let found: Vec<Key> = found
            .into_iter()
            .filter(|k| k.algorithms.contains(&alg))
            .collect();
        Ok((!found.is_empty()).then_some(found))
    }

    /// Fetch the set. `after`: skip if another fetch finished since that
    /// count (waiters share one fetch).
    async fn refresh(&self, after: Option<u64>) {
        let _one = self.fetching.lock().await;
        if after.is_some_and(|seen| self.fetches.load(Ordering::Relaxed) > seen) {
            return;
        }
        let result = self.fetch().await;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let mut set = self.set.write();
        match result {
            Ok((by_kid, anonymous, max_age)) => {
                let dropped = set.by_kid.keys().any(|k| !by_kid.contains_key(k))
                    || set.anonymous.len() > anonymous.len();
                if dropped {
                    self.generation.fetch_add(1, Ordering::Relaxed);
                }
                set.by_kid = by_kid;
                set.anonymous = anonymous;
                set.fetched = Some(Instant::now());
                set.max_age = max_age;
                set.error = None;
            }
            Err(e) => {
                tracing::error!(url = %self.url, error = %e, "cannot fetch the JWKS; keeping the keys held");
                if set.fetched.is_none() {
                    set.error = Some(e);
                } else {
                    // Try again after a short while, not a whole max-age.
                    set.fetched = Some(Instant::now());
                    set.max_age = MIN_MAX_AGE;
                }
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, Key>, Vec<Key>, Duration), String> {
        let resp = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the provider answered {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok())
            .and_then(max_age_of)
            .unwrap_or(DEFAULT_MAX_AGE)
            .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("the answer is larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let (by_kid, anonymous) = parse_set(&body)?;
        Ok((by_kid, anonymous, max_age))
    }
}

type Keys = (HashMap<String, Key>, Vec<Key>);

/// The usable keys of a JWKS document.
pub fn parse_set(body: &[u8]) -> Result<Keys, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array (not a JWKS)")?;
    let mut by_kid = HashMap::new();
    let mut anonymous = Vec::new();
    for value in keys.iter().take(MAX_KEYS) {
        // A key of a kind we do not take is skipped, not fatal.
        let Ok(jwk) = serde_json::from_value::<Jwk>(value.clone()) else {
            continue;
        };
        let Some(key) = usable(&jwk) else { continue };
        match &jwk.common.key_id {
            Some(kid) => {
                by_kid.insert(kid.clone(), key);
            }
            None => anonymous.push(key),
        }
    }
    Ok((by_kid, anonymous))
}

fn usable(jwk: &Jwk) -> Option<Key> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => super::RSA_ALGORITHMS.to_vec(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return None,
        },
        // Never a shared secret from a public document.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family,
        Some(declared) => {
            let alg = algorithm_of(declared)?;
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { key, algorithms })
}

fn algorithm_of(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// `max-age=N` of a Cache-Control value (`no-store`/`no-cache`: the
/// shortest we allow).
fn max_age_of(value: &str) -> Option<Duration> {
    for part in value.split(',') {
        let part = part.trim();
        if part.eq_ignore_ascii_case("no-store") || part.eq_ignore_ascii_case("no-cache") {
            return Some(MIN_MAX_AGE);
        }
        if let Some(n) = part.strip_prefix("max-age=") {
            return n.trim().parse().ok().map(Duration::from_secs);
        }
    }
    None
}

/// An HTTP client for the provider: rustls with ring, the system's roots
/// (reqwest's `rustls-tls-native-roots`).
fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_keeps_signature_keys_and_never_a_shared_secret() {
        let body = br#"{"keys":[
            {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
            {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"Ed25519","kid":"enc","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"RSA","kid":"rsa","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"XYZ","kid":"odd"}
        ]}"#;
        let (by_kid, anonymous) = parse_set(body).unwrap();
        let mut kids: Vec<&str> = by_kid.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["ed", "rsa"]);
        assert!(anonymous.is_empty());
        assert_eq!(by_kid["rsa"].algorithms, [Algorithm::RS256]);
        assert_eq!(by_kid["ed"].algorithms, [Algorithm::EdDSA]);
        assert!(parse_set(b"{}").is_err());
        assert!(parse_set(b"nope").is_err());
    }

    #[test]
    fn cache_control_sets_the_max_age() {
        assert_eq!(
            max_age_of("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age_of("no-store"), Some(MIN_MAX_AGE));
        assert_eq!(max_age_of("public"), None);
    }
}
