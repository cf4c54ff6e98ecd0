//! JSON request bodies: the contract's errors instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::AppError;

/// Largest request body (the contract's 64 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body parsed into `T`. Too large → 413; malformed JSON, wrong types or
/// unknown fields (every body type denies them) → 400 `invalid_request`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = raw_body(req, state).await?;
        parse(&bytes).map(JsonBody)
    }
}

/// The raw body, within the size limit (too large → 413), for handlers that parse it
/// themselves.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        raw_body(req, state).await.map(RawBody)
    }
}

/// The raw body, within the size limit.
async fn raw_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, AppError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge
        } else {
            AppError::InvalidRequest(format!("cannot read body: {rejection}"))
        }
    })
}

/// Every body is a JSON object: serde would also fill a struct from an array.
/// JSON Schema's `integer` includes numbers written with a zero fraction (`2.0`,
/// `1e3`); serde refuses them for integer fields, so a body that fails is read again
/// with such numbers made integers (the happy path parses once).
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    let invalid = |e: serde_json::Error| AppError::InvalidRequest(format!("invalid JSON body: {e}"));
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') || !arrays_hold_objects(bytes) {
        return Err(AppError::InvalidRequest(
            "the body must be a JSON object; every list in it holds objects or strings".into(),
        ));
    }
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(first) => {
            let Ok(mut value) = serde_json::from_slice::<Value>(bytes) else { return Err(invalid(first)) };
            if !whole_numbers_as_integers(&mut value) {
                return Err(invalid(first));
            }
            serde_json::from_value(value).map_err(|_| invalid(first))
        }
    }
}

/// Whether every array in the JSON text holds only objects or strings. serde fills a
/// struct from an array of its fields' values too (`[1, 2]` for `{"a": 1, "b": 2}`);
/// no request body of this API has a list of anything but objects or ids, so a list of
/// anything else is refused before serde sees it (a struct given as a list of strings
/// still fails on its first field that is not a string). Text inside strings is
/// skipped.
fn arrays_hold_objects(bytes: &[u8]) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let mut after_open = false; // just after `[` or a `,` inside an array
    let mut stack: Vec<u8> = Vec::new();
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if b.is_ascii_whitespace() {
            continue;
        }
        if after_open {
            after_open = false;
            if b != b'{' && b != b']' && b != b'"' {
                return false;
            }
        }
        match b {
            b'"' => in_string = true,
            b'[' => {
                stack.push(b);
                after_open = true;
            }
            b'{' => stack.push(b),
            b']' | b'}' => {
                stack.pop();
            }
            b',' => after_open = stack.last() == Some(&b'['),
            _ => {}
        }
    }
    true
}

/// Rewrites every float with no fraction that fits an i64 or u64 as an integer;
/// whether anything changed.
fn whole_numbers_as_integers(v: &mut Value) -> bool {
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let whole = f.fract() == 0.0 && f.abs() < 9.0e15; // exact in an f64
            if whole {
                *v = if f < 0.0 { Value::from(f as i64) } else { Value::from(f as u64) };
            }
            whole
        }
        Value::Array(items) => {
            items.iter_mut().fold(false, |changed, i| whole_numbers_as_integers(i) | changed)
        }
        Value::Object(fields) => {
            fields.values_mut().fold(false, |changed, i| whole_numbers_as_integers(i) | changed)
        }
        _ => false,
    }
}

/// For optional fields that hold a struct: absent or `null` → `None`, an object → the
/// struct, anything else refused. serde would also fill a struct from a list, and a
/// struct whose fields all have defaults from an empty one (`[]`), which
/// [`arrays_hold_objects`] lets through as an empty list.
pub fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error;
    use serde::Deserialize;
    match Option::<Value>::deserialize(d)? {
        None => Ok(None),
        Some(fields @ Value::Object(_)) => T::deserialize(fields).map(Some).map_err(D::Error::custom),
        Some(_) => Err(D::Error::custom("expected an object")),
    }
}

/// For optional fields whose `null` means something: absent → `None`,
/// `null` → `Some(None)`, a value → `Some(Some(v))`.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Line {
        quantity: u64,
        #[serde(default)]
        price: Option<i64>,
    }

    #[test]
    fn only_objects_and_whole_numbers_in_any_spelling() {
        assert_eq!(parse::<Line>(b" {\"quantity\": 2}").unwrap(), Line { quantity: 2, price: None });
        assert_eq!(
            parse::<Line>(b"{\"quantity\": 2.0, \"price\": -1e3}").unwrap(),
            Line { quantity: 2, price: Some(-1000) }
        );
        for bad in [
            &b"[2]"[..],
            b"[null]",
            b"2",
            b"{\"quantity\": 2.5}",
            b"{\"quantity\": -1}",
            b"{\"quantity\": 1e300}",
        ] {
            assert!(
                matches!(parse::<Line>(bad), Err(AppError::InvalidRequest(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn lists_hold_objects_or_strings_only() {
        assert!(arrays_hold_objects(br#"{"items": [{"a": [ {"b": 1} ]}, {"c": "[1, 2]"}], "d": []}"#));
        assert!(arrays_hold_objects(br#"{"s": "\"[1]\\", "items": [ ]}"#));
        assert!(arrays_hold_objects(br#"{"order_ids": ["c.1", "c.2"]}"#));
        for bad in
            [&br#"{"t": [null, null]}"#[..], br#"{"items": [{"a": 1}, ["x", 1]]}"#, br#"{"items": [1]}"#]
        {
            assert!(!arrays_hold_objects(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
