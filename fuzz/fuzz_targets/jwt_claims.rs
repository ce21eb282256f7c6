//! JWT claims: `Grants::from_claims` on arbitrary JSON never panics; an
//! HS256 token signed over arbitrary claims never makes
//! `Verifier::verify` panic, and is refused whenever its `exp` or `nbf`
//! is present but not a non-negative JSON number (fail closed: an
//! unreadable expiry must not mean "never expires").
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use herald::auth::{Grants, Verifier};
use jsonwebtoken::{EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Number, Value};

const SECRET: &str = "fuzz-secret";

/// Keys the claim parser looks at, so arbitrary objects hit its paths.
const KEYS: &[&str] = &[
    "exp",
    "nbf",
    "mercure",
    "publish",
    "subscribe",
    "payload",
    "authorization_details",
    "type",
    "actions",
    "topics",
    "match",
    "match_type",
];
const STRINGS: &[&str] = &[
    "https://mercure.rocks/authorization-detail",
    "publish",
    "subscribe",
    "exact",
    "urlpattern",
    "*",
    "https://ex.net/books/{id}",
    "https://ex.net/books/:id",
];

fn number(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => Value::from(u.arbitrary::<u64>()?),
        1 => Value::from(u.arbitrary::<i64>()?),
        // Non-finite floats have no JSON form: from_f64 gives None.
        _ => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
    })
}

fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let leaf_only = depth >= 4;
    Ok(match u.int_in_range(0..=if leaf_only { 4 } else { 6 })? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 => Value::String(u.arbitrary()?),
        4 => Value::String(u.choose(STRINGS)?.to_string()),
        5 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array((0..n).map(|_| value(u, depth + 1)).collect::<Result<_>>()?)
        }
        _ => {
            let n = u.int_in_range(0..=5)?;
            let mut m = Map::new();
            for _ in 0..n {
                let k = if u.arbitrary()? {
                    u.choose(KEYS)?.to_string()
                } else {
                    u.arbitrary()?
                };
                m.insert(k, value(u, depth + 1)?);
            }
            Value::Object(m)
        }
    })
}

#[derive(Debug)]
struct Claims(Value);

impl<'a> Arbitrary<'a> for Claims {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // Either raw JSON text or a structured value.
        if u.arbitrary::<u8>()? % 4 == 0 {
            let text: &str = u.arbitrary()?;
            return Ok(Claims(serde_json::from_str(text).unwrap_or(Value::Null)));
        }
        let mut top = match value(u, 1)? {
            Value::Object(m) => m,
            other => {
                let mut m = Map::new();
                m.insert("mercure".into(), other);
                m
            }
        };
        // Bias towards exp/nbf of every JSON type.
        for key in ["exp", "nbf"] {
            if u.arbitrary()? {
                let v = if u.arbitrary()? {
                    number(u)?
                } else {
                    value(u, 3)?
                };
                top.insert(key.into(), v);
            }
        }
        Ok(Claims(Value::Object(top)))
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    claims: Claims,
    raw_token: String,
}

/// Absent, or a finite JSON number >= 0.
fn time_claim_ok(claims: &Value, name: &str) -> bool {
    match claims.get(name) {
        None => true,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0),
        Some(_) => false,
    }
}

fuzz_target!(init: herald_fuzz::allow_caught_urlpattern_panics(), |inp: Input| {
    let claims = &inp.claims.0;
    let from_claims = Grants::from_claims(claims);
    if !time_claim_ok(claims, "exp") {
        assert!(from_claims.is_err(), "bad exp accepted: {claims}");
    }

    let verifier = Verifier::hmac(SECRET).expect("non-empty secret");
    let token = jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("any JSON value can be signed");
    let verified = verifier.verify(&token);
    if !time_claim_ok(claims, "exp") || !time_claim_ok(claims, "nbf") {
        assert!(verified.is_err(), "bad exp/nbf accepted: {claims}");
    }
    if let Ok(g) = &verified {
        // A token that verifies has claims that parse on their own.
        assert!(from_claims.is_ok());
        let _ = g.can_publish("https://ex.net/books/1");
        let _ = g.payload_for("https://ex.net/books/{id}");
    }

    // Arbitrary strings as tokens: refused, never a panic.
    assert!(verifier.verify(&inp.raw_token).is_err());
});
