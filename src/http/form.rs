//! `application/x-www-form-urlencoded` parsing (query strings and publish
//! bodies) that refuses invalid UTF-8 instead of silently replacing it:
//! a topic that arrived mangled would be a topic nobody subscribed to.

use percent_encoding::percent_decode;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("parameter {0:?} is not valid UTF-8 after percent-decoding")]
pub struct FormError(pub String);

/// Split into (name, value) pairs, in order; `+` is a space; a name without
/// `=` has an empty value; empty pieces (`a=1&&b=2`) are skipped.
pub fn parse(input: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out = Vec::new();
    for piece in input.split(|b| *b == b'&') {
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &b""[..]),
        };
        let name =
            decode(name).map_err(|_| FormError(String::from_utf8_lossy(name).into_owned()))?;
        let value = decode(value).map_err(|_| FormError(name.clone()))?;
        out.push((name, value));
    }
    Ok(out)
}

fn decode(raw: &[u8]) -> Result<String, std::string::FromUtf8Error> {
    // Names and most values need neither step: one copy, no scratch.
    if !raw.iter().any(|b| *b == b'+' || *b == b'%') {
        return String::from_utf8(raw.to_vec());
    }
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    String::from_utf8(percent_decode(&plus_as_space).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Vec<(String, String)> {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn pairs_in_order_with_repeats() {
        assert_eq!(
            p("topic=a&topic=b%2Fc&data=x+y&private&&e="),
            vec![
                ("topic".into(), "a".into()),
                ("topic".into(), "b/c".into()),
                ("data".into(), "x y".into()),
                ("private".into(), "".into()),
                ("e".into(), "".into()),
            ]
        );
        assert_eq!(p("a=1=2"), vec![("a".into(), "1=2".into())]);
        assert_eq!(p("a=%zz"), vec![("a".into(), "%zz".into())]);
        assert_eq!(p("d=%E2%9C%93%0A"), vec![("d".into(), "✓\n".into())]);
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(parse(b"topic=%FF"), Err(FormError("topic".into())));
        assert!(parse(b"%C3=1").is_err());
    }
}
