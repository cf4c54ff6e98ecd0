//! Who is asking: storefront JWTs, the operator token, signed payment callbacks.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use engine::domain::UserId;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::AppError;

/// Header carrying a payment callback's signature.
pub const SIGNATURE_HEADER: &str = "flashsale-signature";

/// Verifies storefront tokens: HS256 only, `sub` and `exp` required.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl JwtVerifier {
    pub fn new(secret: &str, leeway_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key: DecodingKey::from_secret(secret.as_bytes()), validation }
    }

    pub fn verify(&self, token: &str) -> Result<UserId, AppError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| AppError::Unauthenticated)?;
        UserId::parse(&data.claims.sub).map_err(|_| AppError::Unauthenticated)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// What the extractors check callers against (the application state provides it).
pub trait Credentials {
    fn jwt(&self) -> &JwtVerifier;
    fn admin_token(&self) -> &str;
}

/// A storefront user, from `Authorization: Bearer <JWT>`.
pub struct Buyer(pub UserId);

impl<S: Credentials + Send + Sync> FromRequestParts<S> for Buyer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(AppError::Unauthenticated)?;
        state.jwt().verify(token).map(Buyer)
    }
}

/// The operator, from `Authorization: Bearer <admin.token>`.
pub struct Operator;

impl<S: Credentials + Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(AppError::Unauthenticated)?;
        if constant_time_eq(token.as_bytes(), state.admin_token().as_bytes()) {
            Ok(Operator)
        } else {
            Err(AppError::Unauthenticated)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare MACs of both sides: `verify_slice` is constant-time, and MACs have one
    // length, so neither the secret's length nor its content leaks through timing.
    let Ok(mut mac_a) = <Hmac<Sha256>>::new_from_slice(b"operator-token-compare") else {
        return false;
    };
    let mut mac_b = mac_a.clone();
    mac_a.update(a);
    mac_b.update(b);
    mac_b.verify_slice(&mac_a.finalize().into_bytes()).is_ok()
}

/// Checks `Flashsale-Signature: t=<unix secs>,v1=<hex>[,v1=<hex>...]` over
/// `"<t>.<raw body>"` with HMAC-SHA256: one matching `v1` suffices (key rotation),
/// the time must be within `tolerance_secs` of `now_secs`, comparison in constant time.
pub fn verify_signature(
    header: Option<&str>,
    body: &[u8],
    secret: &str,
    now_secs: i64,
    tolerance_secs: u64,
) -> Result<(), AppError> {
    let header = header.ok_or(AppError::InvalidSignature)?;
    let mut timestamp: Option<&str> = None;
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => timestamp = Some(v),
            Some(("v1", v)) => {
                if let Ok(sig) = hex::decode(v) {
                    candidates.push(sig);
                }
            }
            _ => {}
        }
    }
    let t = timestamp.ok_or(AppError::InvalidSignature)?;
    let t_secs: i64 = t.parse().map_err(|_| AppError::InvalidSignature)?;
    if now_secs.abs_diff(t_secs) > tolerance_secs {
        return Err(AppError::InvalidSignature);
    }
    let mut mac =
        <Hmac<Sha256>>::new_from_slice(secret.as_bytes()).map_err(|_| AppError::InvalidSignature)?;
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    if candidates.iter().any(|sig| mac.clone().verify_slice(sig).is_ok()) {
        Ok(())
    } else {
        Err(AppError::InvalidSignature)
    }
}

#[cfg(test)]
mod tests {
    use testkit::sign;

    use super::*;

    const NOW: i64 = 1_900_000_000;

    #[test]
    fn a_signed_body_verifies_and_any_change_breaks_it() {
        let h = sign("s3cret", NOW, b"{\"a\":1}");
        assert!(verify_signature(Some(&h), b"{\"a\":1}", "s3cret", NOW, 300).is_ok());
        assert!(verify_signature(Some(&h), b"{\"a\":2}", "s3cret", NOW, 300).is_err());
        assert!(verify_signature(Some(&h), b"{\"a\":1}", "other", NOW, 300).is_err());
        assert!(verify_signature(None, b"{}", "s3cret", NOW, 300).is_err());
        assert!(verify_signature(Some("garbage"), b"{}", "s3cret", NOW, 300).is_err());
    }

    #[test]
    fn stale_or_future_timestamps_are_refused() {
        let old = sign("s", NOW - 301, b"x");
        assert!(verify_signature(Some(&old), b"x", "s", NOW, 300).is_err());
        let future = sign("s", NOW + 301, b"x");
        assert!(verify_signature(Some(&future), b"x", "s", NOW, 300).is_err());
        let edge = sign("s", NOW - 300, b"x");
        assert!(verify_signature(Some(&edge), b"x", "s", NOW, 300).is_ok());
    }

    #[test]
    fn one_matching_v1_among_several_suffices() {
        let good = sign("new", NOW, b"x");
        let good_sig = good.split_once(",v1=").unwrap().1;
        let old = sign("old", NOW, b"x");
        let old_sig = old.split_once(",v1=").unwrap().1;
        let h = format!("t={NOW},v1={old_sig},v1=zz,v1={good_sig}");
        assert!(verify_signature(Some(&h), b"x", "new", NOW, 300).is_ok());
        assert!(verify_signature(Some(&h), b"x", "old", NOW, 300).is_ok());
        assert!(verify_signature(Some(&h), b"x", "third", NOW, 300).is_err());
    }

    #[test]
    fn operator_tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
