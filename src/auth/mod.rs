//! JWT validation and what a token lets its bearer do.
//!
//! Both claim dialects in the wild are understood, and a token may carry
//! both (grants are the union):
//! - deployed: `{"mercure": {"publish": [...], "subscribe": [...],
//!   "payload": ...}}`, each entry a topic selector (`*`, URI template or
//!   exact topic);
//! - current draft: `{"authorization_details": [{"type":
//!   "https://mercure.rocks/authorization-detail", "actions": [...],
//!   "topics": [{"match": ..., "match_type": "exact"|"urlpattern"}],
//!   "payload": {...}}]}`. A malformed Mercure detail makes the whole token
//!   invalid: partial acceptance would silently change what it grants.
//!
//! Keys come only from configuration (never from the token), and each key
//! accepts only the algorithms of its kind, so an HMAC secret can never be
//! confused with a public key.

pub mod jwks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};

use crate::topic::TopicSelector;

pub const AUTHORIZATION_DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// Limits on what a token may carry (the draft asks for them; a token over
/// them is invalid).
const MAX_DETAILS: usize = 100;
const MAX_TOPICS_PER_DETAIL: usize = 1000;
const MAX_MATCHER_LEN: usize = 2048;

/// Clock skew tolerated on `exp` and `nbf` unless configured
/// (`--jwt-leeway`).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);
/// What an RSA public key verifies (from a PEM file or a JWKS).
pub const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// Longest token accepted unless configured (`--max-token-len`): a token
/// is base64-decoded, its signature checked and its JSON parsed before its
/// own limits can apply, so its length is bounded first.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 16 * 1024;

/// A verification key and the algorithms it accepts.
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    leeway: Duration,
    max_token_len: usize,
    /// Tokens already verified, by their text (see [`Verifier::verify`]),
    /// with the key set generation they were verified under (JWKS: a key
    /// that left the set takes its tokens with it).
    verified: Arc<Mutex<HashMap<String, (Grants, u64)>>>,
}

/// Where the verification keys come from.
#[derive(Clone)]
enum Keys {
    /// One key, given at startup (a secret or a PEM public key).
    Static {
        key: DecodingKey,
        algorithms: Vec<Algorithm>,
    },
    /// An identity provider's key set (`--jwks-url`), chosen by `kid`.
    Jwks(Arc<jwks::Jwks>),
}

/// Most verified tokens remembered; a full cache starts over.
const VERIFIED_CAPACITY: usize = 4096;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.keys {
            Keys::Static { algorithms, .. } => write!(f, "Verifier({algorithms:?})"),
            Keys::Jwks(_) => write!(f, "Verifier(JWKS)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a PEM RSA or EC public key ({reason}); expected a file starting with -----BEGIN PUBLIC KEY-----")]
    Pem { path: String, reason: String },
    #[error("the JWT secret is empty")]
    Empty,
}

impl Verifier {
    /// An HMAC secret (HS256, HS384, HS512).
    pub fn hmac(secret: &str) -> Result<Verifier, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Verifier::new(
            DecodingKey::from_secret(secret.as_bytes()),
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        ))
    }

    /// An RSA (RS256/384/512, PS256/384/512) or EC (ES256/ES384) public key
    /// from a PEM file.
    pub fn public_key_file(path: &str) -> Result<Verifier, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        Verifier::public_key_pem(&pem).map_err(|reason| KeyError::Pem {
            path: path.into(),
            reason,
        })
    }

    pub fn public_key_pem(pem: &[u8]) -> Result<Verifier, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Verifier::new(key, RSA_ALGORITHMS.to_vec()));
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Verifier::new(key, vec![Algorithm::ES256, Algorithm::ES384])),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Keys from an identity provider's JWKS (see [`crate::jwks`]).
    pub fn jwks(jwks: Arc<jwks::Jwks>) -> Verifier {
        Verifier {
            keys: Keys::Jwks(jwks),
            leeway: DEFAULT_LEEWAY,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            verified: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn new(key: DecodingKey, algorithms: Vec<Algorithm>) -> Verifier {
        Verifier {
            keys: Keys::Static { key, algorithms },
            leeway: DEFAULT_LEEWAY,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            verified: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Set the clock skew tolerated on `exp`/`nbf` and the longest token.
    pub fn with_limits(mut self, leeway: Duration, max_token_len: usize) -> Verifier {
        self.leeway = leeway;
        self.max_token_len = max_token_len;
        self
    }

    /// Verify signature, `exp` and `nbf` (when present) and parse the grants.
    ///
    /// A token that verified is remembered by its text, so a backend's
    /// long-lived publisher token (sent with every publish) or a page's
    /// token (sent with every reconnect) costs one signature check and one
    /// claims parse, not one per request. A remembered token is used only
    /// while it is within `exp` plus the leeway; past that it is verified
    /// afresh, and fails. `nbf` needs no re-check: a token is remembered
    /// only once valid, and stays valid until `exp`. Only tokens with a
    /// good signature are remembered, so nobody but a key holder can fill
    /// the cache; it is bounded all the same.
    /// With keys from a JWKS the key set may have to be fetched first:
    /// use [`Verifier::verify_async`]; here only the keys held are used.
    pub fn verify(&self, token: &str) -> Result<Grants, AuthError> {
        let now = SystemTime::now();
        if let Some(grants) = self.remembered(token, now, self.generation()) {
            return Ok(grants);
        }
        let grants = self.verify_at(token, now)?;
        self.remember(token, &grants, self.generation());
        Ok(grants)
    }

    /// [`Verifier::verify`], fetching a JWKS when the token names a key
    /// not held yet (or the set expired).
    pub async fn verify_async(&self, token: &str) -> Result<Grants, AuthError> {
        let Keys::Jwks(jwks) = &self.keys else {
            return self.verify(token);
        };
        let now = SystemTime::now();
        let generation = jwks.generation();
        if let Some(grants) = self.remembered(token, now, generation) {
            return Ok(grants);
        }
        let header = self.header(token)?;
        let keys = jwks
            .keys_for(header.kid.as_deref(), header.alg)
            .await
            .map_err(missing)?;
        let grants = self.verify_with_any(token, now, &keys, header.alg)?;
        // Remembered under the generation seen before the fetch: a key
        // dropped meanwhile forgets it.
        self.remember(token, &grants, generation);
        Ok(grants)
    }

    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Static { .. } => 0,
            Keys::Jwks(j) => j.generation(),
        }
    }

    fn remember(&self, token: &str, grants: &Grants, generation: u64) {
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_CAPACITY {
            verified.clear();
        }
        verified.insert(token.to_string(), (grants.clone(), generation));
    }

    fn remembered(&self, token: &str, now: SystemTime, generation: u64) -> Option<Grants> {
        let verified = self.verified.lock();
        let (grants, seen) = verified.get(token)?;
        let live = *seen == generation
            && grants.expires_at.is_none_or(|exp| {
                exp.checked_add(self.leeway)
                    .is_some_and(|limit| now <= limit)
            });
        live.then(|| grants.clone())
    }

    /// The token's header, once its length is within the limit.
    fn header(&self, token: &str) -> Result<Header, AuthError> {
        if token.len() > self.max_token_len {
            return Err(AuthError::Invalid(format!(
                "the token is {} bytes long; the limit is {} (--max-token-len)",
                token.len(),
                self.max_token_len
            )));
        }
        jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(jwt_reason(&e)))
    }

    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Grants, AuthError> {
        let header = self.header(token)?;
        let (key, algorithms) = match &self.keys {
            Keys::Static { key, algorithms } => (key, algorithms),
            Keys::Jwks(jwks) => {
                // Only the keys held now: no fetch on this path.
                let keys = jwks
                    .held(header.kid.as_deref(), header.alg)
                    .map_err(missing)?
                    .ok_or_else(|| {
                        AuthError::Invalid(format!(
                            "no key with id (kid) {:?} for {:?} in the JWKS held",
                            header.kid, header.alg
                        ))
                    })?;
                return self.verify_with_any(token, now, &keys, header.alg);
            }
        };
        if !algorithms.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted for this key",
                header.alg
            )));
        }
        self.verify_with(token, now, key, header.alg)
    }

    /// The first of `keys` that verifies the token (a JWKS may hold several
    /// for one `kid`-less token), else the last refusal.
    fn verify_with_any(
        &self,
        token: &str,
        now: SystemTime,
        keys: &[jwks::Key],
        alg: Algorithm,
    ) -> Result<Grants, AuthError> {
        let mut failure = None;
        for k in keys {
            match self.verify_with(token, now, &k.key, alg) {
                Ok(grants) => return Ok(grants),
                Err(e) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| AuthError::Invalid("no key verifies the token".into())))
    }

    fn verify_with(
        &self,
        token: &str,
        now: SystemTime,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<Grants, AuthError> {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.required_spec_claims.clear();
        // jsonwebtoken only checks `exp`/`nbf` that parse as u64 and
        // silently skips any other (a float, a string, null, -1), which
        // made such tokens never expire. They are checked below instead,
        // failing closed.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Value>(token, key, &validation)
            .map_err(|e| AuthError::Invalid(jwt_reason(&e)))?;
        let grants = Grants::from_claims(&data.claims)?;
        if let Some(exp) = grants.expires_at {
            // Not expired while now <= exp + leeway.
            if exp
                .checked_add(self.leeway)
                .is_some_and(|limit| now > limit)
            {
                return Err(invalid(&format!(
                    "the token expired {:.3} s ago ('exp'; tolerated clock skew: {} s)",
                    now.duration_since(exp).unwrap_or_default().as_secs_f64(),
                    self.leeway.as_secs_f64()
                )));
            }
        }
        if let Some(nbf) = time_claim(&data.claims, "nbf")? {
            // Valid once now >= nbf - leeway.
            if now.checked_add(self.leeway).is_some_and(|n| n < nbf) {
                return Err(invalid(&format!(
                    "the token is not valid for another {:.3} s ('nbf'; tolerated clock skew: {} s)",
                    nbf.duration_since(now).unwrap_or_default().as_secs_f64(),
                    self.leeway.as_secs_f64()
                )));
            }
        }
        Ok(grants)
    }
}

fn missing(m: jwks::Missing) -> AuthError {
    match m {
        jwks::Missing::Unknown(why) => AuthError::Invalid(why),
        jwks::Missing::Unavailable(why) => AuthError::Unavailable(why),
    }
}

/// Why a request was not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token where one is required (401, no error code).
    #[error("a token is required: send it as 'Authorization: Bearer <jwt>', a mercureAuthorization cookie or an 'authorization' query parameter")]
    Missing,
    /// The token's presentation is malformed (400, `invalid_request`).
    #[error("malformed credentials: {0}")]
    Malformed(String),
    /// Bad signature, expired, unparsable claims (401, `invalid_token`).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Valid token, not enough rights (403, `insufficient_scope`).
    #[error("{0}")]
    Forbidden(String),
    /// The keys to check it with cannot be had now (503): a JWKS that
    /// could not be fetched.
    #[error("cannot verify tokens now: {0}")]
    Unavailable(String),
}

/// A `subscribe` grant with the payload it attaches to matching
/// subscriptions.
#[derive(Debug, Clone)]
struct PayloadRule {
    selectors: Vec<TopicSelector>,
    payload: Value,
}

/// What a verified token allows.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub publish: Vec<TopicSelector>,
    pub subscribe: Vec<TopicSelector>,
    /// Deployed dialect: one payload for every subscription.
    legacy_payload: Option<Value>,
    /// Current draft: the first matching `subscribe` detail's payload.
    payload_rules: Vec<PayloadRule>,
    /// `exp`, with its sub-second part: a stream ends when the token
    /// expires, whatever the number format.
    pub expires_at: Option<SystemTime>,
    /// The Herald claim `{"herald": {"status": true}}`: the bearer may open
    /// the status page (`/ui/`) from any address. Anything but `true`
    /// grants nothing (and does not make the token invalid).
    pub status: bool,
}

/// A NumericDate claim (`exp`, `nbf`): absent, or a finite, non-negative
/// JSON number of seconds (integer or not). Anything else makes the token
/// invalid: an unreadable expiry must not mean "never expires".
fn time_claim(claims: &Value, name: &str) -> Result<Option<SystemTime>, AuthError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let got = match v {
        Value::Number(n) => {
            let since_epoch = match n.as_u64() {
                Some(secs) => Some(Duration::from_secs(secs)),
                None => n
                    .as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .and_then(|f| Duration::try_from_secs_f64(f).ok()),
            };
            match since_epoch.and_then(|d| UNIX_EPOCH.checked_add(d)) {
                Some(t) => return Ok(Some(t)),
                None => "a negative or out-of-range number",
            }
        }
        Value::String(_) => "a string",
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    Err(invalid(&format!(
        "the '{name}' claim must be a non-negative number of seconds since 1970-01-01 UTC, not {got}"
    )))
}

impl Grants {
    pub fn from_claims(claims: &Value) -> Result<Grants, AuthError> {
        let mut g = Grants {
            expires_at: time_claim(claims, "exp")?,
            status: claims.pointer("/herald/status") == Some(&Value::Bool(true)),
            ..Grants::default()
        };
        if let Some(m) = claims.get("mercure") {
            let m = m
                .as_object()
                .ok_or_else(|| invalid("the 'mercure' claim must be an object"))?;
            g.publish
                .extend(legacy_selectors(m.get("publish"), "mercure.publish")?);
            g.subscribe
                .extend(legacy_selectors(m.get("subscribe"), "mercure.subscribe")?);
            g.legacy_payload = m.get("payload").cloned();
        }
        if let Some(details) = claims.get("authorization_details") {
            let details = details
                .as_array()
                .ok_or_else(|| invalid("'authorization_details' must be an array"))?;
            if details.len() > MAX_DETAILS {
                return Err(invalid("too many authorization details"));
            }
            for d in details {
                let obj = d
                    .as_object()
                    .ok_or_else(|| invalid("each authorization detail must be an object"))?;
                if obj.get("type").and_then(Value::as_str) != Some(AUTHORIZATION_DETAIL_TYPE) {
                    continue; // Some other API's detail: not ours to judge.
                }
                parse_detail(obj, &mut g)?;
            }
        }
        Ok(g)
    }

    pub fn can_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|s| s.matches(topic))
    }

    pub fn can_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|s| s.matches(topic))
    }

    /// The payload to show for a subscription with this matcher.
    pub fn payload_for(&self, matcher: &str) -> Option<Value> {
        self.payload_rules
            .iter()
            .find(|r| {
                r.selectors
                    .iter()
                    .any(|s| s.as_str() == matcher || s.matches(matcher))
            })
            .map(|r| r.payload.clone())
            .or_else(|| self.legacy_payload.clone())
    }
}

/// Why jsonwebtoken refused a token, in words a developer can act on.
fn jwt_reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => {
            "the signature does not verify with the configured key (--jwt-key, \
             --jwt-public-key-file or their per-role variants)"
                .into()
        }
        ErrorKind::InvalidToken => {
            "not a JWT: expected three base64url parts separated by dots".into()
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token's algorithm ('alg') does not match the configured key".into()
        }
        ErrorKind::InvalidKeyFormat => {
            "the configured key cannot verify this token's algorithm".into()
        }
        ErrorKind::Base64(_) => format!("the token is not valid base64url: {e}"),
        ErrorKind::Json(_) => format!("the token's header or claims are not valid JSON: {e}"),
        ErrorKind::Utf8(_) => "the token's header or claims are not UTF-8".into(),
        _ => e.to_string(),
    }
}

fn invalid(msg: &str) -> AuthError {
    AuthError::Invalid(msg.to_string())
}

fn legacy_selectors(v: Option<&Value>, name: &str) -> Result<Vec<TopicSelector>, AuthError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(&format!("'{name}' must be an array of strings")))?;
    arr.iter()
        .map(|e| {
            let s = e
                .as_str()
                .ok_or_else(|| invalid(&format!("'{name}' must be an array of strings")))?;
            if s.len() > MAX_MATCHER_LEN {
                return Err(invalid(&format!("a '{name}' entry is too long")));
            }
            TopicSelector::uri_template(s).map_err(|e| AuthError::Invalid(format!("'{name}': {e}")))
        })
        .collect()
}

fn parse_detail(obj: &serde_json::Map<String, Value>, g: &mut Grants) -> Result<(), AuthError> {
    let actions = obj
        .get("actions")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid("an authorization detail needs a non-empty 'actions' array"))?;
    let mut publish = false;
    let mut subscribe = false;
    for a in actions {
        match a.as_str() {
            Some("publish") => publish = true,
            Some("subscribe") => subscribe = true,
            Some(_) => {} // Unknown actions grant nothing.
            None => return Err(invalid("'actions' entries must be strings")),
        }
    }
    let topics = obj
        .get("topics")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| invalid("an authorization detail needs a non-empty 'topics' array"))?;
    if topics.len() > MAX_TOPICS_PER_DETAIL {
        return Err(invalid("too many topics in an authorization detail"));
    }
    let mut selectors = Vec::with_capacity(topics.len());
    for t in topics {
        let t = t
            .as_object()
            .ok_or_else(|| invalid("each 'topics' entry must be an object"))?;
        let m = t
            .get("match")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("each 'topics' entry needs a string 'match'"))?;
        if m.len() > MAX_MATCHER_LEN {
            return Err(invalid("a 'match' value is too long"));
        }
        let sel = match t.get("match_type") {
            None => TopicSelector::exact(m),
            Some(Value::String(k)) if k == "exact" => TopicSelector::exact(m),
            Some(Value::String(k)) if k == "urlpattern" => TopicSelector::url_pattern(m, None)
                .map_err(|e| AuthError::Invalid(e.to_string()))?,
            Some(other) => {
                return Err(AuthError::Invalid(format!(
                    "unsupported match_type {other}"
                )))
            }
        };
        selectors.push(sel);
    }
    let payload = match obj.get("payload") {
        None => None,
        Some(p @ Value::Object(_)) => Some(p.clone()),
        Some(_) => return Err(invalid("'payload' must be a JSON object")),
    };
    if publish {
        g.publish.extend(selectors.iter().cloned());
    }
    if subscribe {
        if let Some(payload) = payload {
            g.payload_rules.push(PayloadRule {
                selectors: selectors.clone(),
                payload,
            });
        }
        g.subscribe.extend(selectors);
    }
    Ok(())
}

/// Mint an HS256 token (development helper behind `herald token` and the
/// startup banner). Carries both claim dialects so any Mercure hub and
/// client understands it.
pub fn mint_hs256(
    secret: &str,
    publish: &[String],
    subscribe: &[String],
    payload: Option<Value>,
    ttl_secs: Option<u64>,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_with(secret, publish, subscribe, payload, ttl_secs, None)
}

/// [`mint_hs256`], plus a `herald` claim: `{"status": true}` lets the
/// bearer open the status page (`herald token --status`).
pub fn mint_hs256_with(
    secret: &str,
    publish: &[String],
    subscribe: &[String],
    payload: Option<Value>,
    ttl_secs: Option<u64>,
    herald: Option<Value>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut mercure = json!({ "publish": publish, "subscribe": subscribe });
    if let Some(p) = &payload {
        mercure["payload"] = p.clone();
    }
    let mut claims = json!({ "mercure": mercure, "sub": "herald-dev" });
    if let Some(h) = herald {
        claims["herald"] = h;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    claims["iat"] = json!(now);
    if let Some(ttl) = ttl_secs {
        claims["exp"] = json!(now + ttl);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(claims: Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    }

    fn verify(claims: Value) -> Result<Grants, AuthError> {
        Verifier::hmac("secret").unwrap().verify(&sign(claims))
    }

    #[test]
    fn legacy_claims() {
        let g = verify(json!({"mercure": {"publish": ["https://ex.net/books/{id}"], "subscribe": ["*"], "payload": {"u": 1}}}))
            .unwrap();
        assert!(g.can_publish("https://ex.net/books/1"));
        assert!(!g.can_publish("https://ex.net/users/1"));
        assert!(g.can_subscribe("anything"));
        assert_eq!(g.payload_for("x"), Some(json!({"u": 1})));
    }

    #[test]
    fn authorization_details() {
        let g = verify(json!({"authorization_details": [
            {"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["subscribe", "future"], "topics": [
                {"match": "https://ex.net/users/42/*", "match_type": "urlpattern"},
                {"match": "https://ex.net/books/1"}
            ], "payload": {"tenant": "a"}},
            {"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "*"}]},
            {"type": "https://other.example/detail", "anything": true}
        ]}))
        .unwrap();
        assert!(g.can_subscribe("https://ex.net/users/42/books/1"));
        assert!(g.can_subscribe("https://ex.net/books/1"));
        assert!(!g.can_subscribe("https://ex.net/books/2"));
        assert!(g.can_publish("whatever"));
        assert_eq!(
            g.payload_for("https://ex.net/books/1"),
            Some(json!({"tenant": "a"}))
        );
        assert_eq!(g.payload_for("https://ex.net/other"), None);
    }

    #[test]
    fn malformed_details_invalidate_the_whole_token() {
        for bad in [
            json!({"authorization_details": {}}),
            json!({"authorization_details": [{"type": AUTHORIZATION_DETAIL_TYPE, "actions": [], "topics": [{"match": "a"}]}]}),
            json!({"authorization_details": [{"type": AUTHORIZATION_DETAIL_TYPE, "actions": [1], "topics": [{"match": "a"}]}]}),
            json!({"authorization_details": [{"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["subscribe"], "topics": []}]}),
            json!({"authorization_details": [{"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["subscribe"], "topics": ["a"]}]}),
            json!({"authorization_details": [{"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "a", "match_type": "regex"}]}]}),
            json!({"authorization_details": [{"type": AUTHORIZATION_DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "https://x/(", "match_type": "urlpattern"}]}]}),
            json!({"mercure": {"publish": "x"}}),
            json!({"mercure": {"subscribe": ["https://x/{"]}}),
        ] {
            assert!(
                matches!(verify(bad.clone()), Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn signature_expiry_and_algorithms() {
        let v = Verifier::hmac("secret").unwrap();
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({}),
            &EncodingKey::from_secret(b"other"),
        )
        .unwrap();
        assert!(matches!(v.verify(&other), Err(AuthError::Invalid(_))));
        assert!(matches!(
            v.verify(&sign(json!({"exp": 1000}))),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify(&sign(json!({"nbf": 99999999999u64}))),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(v.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        // alg=none is never accepted.
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64("{}"));
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
        assert!(v.verify(&sign(json!({"exp": 99999999999u64}))).is_ok());
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn minted_tokens_verify() {
        let t = mint_hs256(
            "k",
            &["*".into()],
            &["https://ex.net/u/1".into()],
            None,
            Some(60),
        )
        .unwrap();
        let g = Verifier::hmac("k").unwrap().verify(&t).unwrap();
        assert!(g.can_publish("x"));
        assert!(g.can_subscribe("https://ex.net/u/1"));
        assert!(g.expires_at.is_some());
    }

    fn secs(f: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs_f64(f)
    }

    fn invalid_message(r: Result<Grants, AuthError>) -> String {
        match r {
            Err(AuthError::Invalid(m)) => m,
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    #[test]
    fn malformed_exp_and_nbf_fail_closed() {
        let v = Verifier::hmac("secret").unwrap();
        let now = secs(1_700_000_000.0);
        for (claim, value, expect) in [
            ("exp", json!("99999999999"), "not a string"),
            ("exp", json!(null), "not null"),
            ("exp", json!(-1), "negative"),
            ("exp", json!(-0.5), "negative"),
            ("exp", json!(true), "not a boolean"),
            ("exp", json!({"t": 1}), "not an object"),
            ("exp", json!([99999999999u64]), "not an array"),
            ("nbf", json!("0"), "not a string"),
            ("nbf", json!(null), "not null"),
            ("nbf", json!(-1), "negative"),
            ("nbf", json!(false), "not a boolean"),
        ] {
            let token = sign(json!({ claim: value, "mercure": {"subscribe": ["*"]} }));
            let msg = invalid_message(v.verify_at(&token, now));
            // jsonwebtoken itself trips on some shapes (an object where it
            // or array where it looks for a number) before our check:
            // invalid all the same.
            let ours = msg.contains(claim) && msg.contains(expect);
            assert!(
                ours || value.is_object() || value.is_array(),
                "{claim}={value}: {msg}"
            );
        }
    }

    #[test]
    fn fractional_exp_is_checked_and_kept_to_the_millisecond() {
        let v = Verifier::hmac("secret").unwrap();
        let now = secs(1_700_000_000.0);
        // Far in the past, fractional: jsonwebtoken alone accepted it.
        let msg = invalid_message(v.verify_at(&sign(json!({"exp": 1.5})), now));
        assert!(msg.contains("expired"), "{msg}");
        let msg = invalid_message(v.verify_at(&sign(json!({"exp": 1_699_999_900.5})), now));
        assert!(msg.contains("expired"), "{msg}");
        // In the future, fractional: accepted, and the stream deadline keeps
        // the fraction (it used to be dropped: no deadline at all).
        let g = v
            .verify_at(&sign(json!({"exp": 1_700_000_002.25})), now)
            .unwrap();
        assert_eq!(g.expires_at, Some(secs(1_700_000_002.25)));
        let g = v
            .verify_at(&sign(json!({"exp": 1_700_000_010u64})), now)
            .unwrap();
        assert_eq!(g.expires_at, Some(secs(1_700_000_010.0)));
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let now = secs(1_700_000_000.0);
        let v = Verifier::hmac("secret").unwrap();
        // Default leeway (5 s): slightly expired or slightly early is fine.
        assert!(v
            .verify_at(&sign(json!({"exp": 1_699_999_997.5})), now)
            .is_ok());
        assert!(v
            .verify_at(&sign(json!({"nbf": 1_700_000_003.5})), now)
            .is_ok());
        let msg = invalid_message(v.verify_at(&sign(json!({"exp": 1_699_999_994.9})), now));
        assert!(msg.contains("expired"), "{msg}");
        let msg = invalid_message(v.verify_at(&sign(json!({"nbf": 1_700_000_100})), now));
        assert!(msg.contains("not valid"), "{msg}");
        // No leeway.
        let strict = Verifier::hmac("secret")
            .unwrap()
            .with_limits(Duration::ZERO, DEFAULT_MAX_TOKEN_LEN);
        assert!(strict
            .verify_at(&sign(json!({"exp": 1_699_999_999.9})), now)
            .is_err());
        assert!(strict
            .verify_at(&sign(json!({"nbf": 1_700_000_000.1})), now)
            .is_err());
        assert!(strict
            .verify_at(
                &sign(json!({"exp": 1_700_000_000.1, "nbf": 1_699_999_999.9})),
                now
            )
            .is_ok());
    }

    #[test]
    fn oversized_tokens_are_refused_before_parsing() {
        let v = Verifier::hmac("secret")
            .unwrap()
            .with_limits(DEFAULT_LEEWAY, 200);
        let long = sign(json!({"pad": "x".repeat(300)}));
        let msg = invalid_message(v.verify(&long));
        assert!(msg.contains("limit is 200"), "{msg}");
        // Garbage past the limit is refused the same way, unparsed.
        let msg = invalid_message(v.verify(&"a".repeat(1000)));
        assert!(msg.contains("limit"), "{msg}");
        assert!(v.verify(&sign(json!({}))).is_ok());
        assert!(Verifier::hmac("secret")
            .unwrap()
            .verify(&sign(json!({"pad": "x".repeat(20_000)})))
            .is_err());
    }

    #[test]
    fn verified_tokens_are_remembered_until_they_expire() {
        let v = Verifier::hmac("secret").unwrap();
        let now = SystemTime::now();
        let exp = now.duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
        let token = sign(json!({"mercure": {"publish": ["*"]}, "exp": exp}));
        assert!(v.remembered(&token, now, 0).is_none());
        assert!(v.verify(&token).unwrap().can_publish("x"));
        let hit = v
            .remembered(&token, now, 0)
            .expect("remembered after a success");
        assert!(hit.can_publish("x"));
        // Past exp + leeway a remembered token is not used: it is verified
        // afresh (and fails).
        let later = now + Duration::from_secs(3600) + DEFAULT_LEEWAY + Duration::from_secs(1);
        assert!(v.remembered(&token, later, 0).is_none());
        // A token that fails is never remembered.
        let forged = Verifier::hmac("other").unwrap();
        assert!(forged.verify(&token).is_err());
        assert!(forged.remembered(&token, now, 0).is_none());
        assert!(
            forged.verify(&token).is_err(),
            "still refused the second time"
        );
    }

    #[test]
    fn the_status_claim_must_be_true() {
        assert!(verify(json!({"herald": {"status": true}})).unwrap().status);
        assert!(
            !verify(json!({"mercure": {"subscribe": ["*"]}}))
                .unwrap()
                .status
        );
        for other in [json!("true"), json!(1), json!(null), json!(false)] {
            let g = verify(json!({"herald": {"status": other}})).unwrap();
            assert!(!g.status, "{other}");
        }
        assert!(!verify(json!({"herald": true})).unwrap().status);
        let minted = mint_hs256_with(
            "secret",
            &[],
            &[],
            None,
            Some(60),
            Some(json!({"status": true})),
        )
        .unwrap();
        let g = Verifier::hmac("secret").unwrap().verify(&minted).unwrap();
        assert!(g.status && g.publish.is_empty() && g.subscribe.is_empty());
    }
}
