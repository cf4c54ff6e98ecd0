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
///
/// A buyer sends the same token with every press of the button, so tokens verified
/// recently are remembered, whole token text to `sub` and `exp` (`auth.verified_tokens`
/// of them at most, rarely used ones forgotten first): a remembered token costs a hash
/// lookup instead of two base64 decodes, two JSON parses and an HMAC. Only a token
/// byte for byte identical to one whose signature was checked is taken from memory,
/// and its `exp` is checked again on every use.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    verified: Option<quick_cache::sync::Cache<String, Verified>>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// What a checked token proved.
#[derive(Clone)]
struct Verified {
    user: UserId,
    exp: u64,
}

impl JwtVerifier {
    /// `remember`: how many verified tokens to keep (0: check every token in full).
    pub fn new(secret: &str, leeway_secs: u64, remember: usize) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_secs;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let verified = (remember > 0).then(|| quick_cache::sync::Cache::new(remember));
        Self { key: DecodingKey::from_secret(secret.as_bytes()), validation, verified }
    }

    pub fn verify(&self, token: &str) -> Result<UserId, AppError> {
        if let Some(seen) = self.verified.as_ref().and_then(|c| c.get(token)) {
            // The same rule as the full check, whose answer for this exact text can
            // differ only by the clock: expired once `exp` is more than the leeway in
            // the past.
            let live =
                seen.exp.saturating_add(self.validation.leeway) >= jsonwebtoken::get_current_timestamp();
            return if live { Ok(seen.user) } else { Err(AppError::Unauthenticated) };
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|_| AppError::Unauthenticated)?;
        let user = UserId::parse(&data.claims.sub).map_err(|_| AppError::Unauthenticated)?;
        if let Some(cache) = &self.verified {
            cache.insert(token.to_owned(), Verified { user: user.clone(), exp: data.claims.exp });
        }
        Ok(user)
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
    /// Every operator's name and token (`admin.token` as `admin`, then `admin.tokens`).
    fn operators(&self) -> &[common::config::OperatorToken];
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

/// The operator, by name, from `Authorization: Bearer <their token>`.
pub struct Operator(pub String);

impl<S: Credentials + Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(AppError::Unauthenticated)?;
        // Every token is compared (in constant time), whichever matches: how many
        // comparisons ran says nothing about which operator, if any, matched.
        let mut who = None;
        for (name, secret) in state.operators() {
            if constant_time_eq(
                token.as_bytes(),
                common::config::ExposeSecret::expose_secret(secret).as_bytes(),
            ) && who.is_none()
            {
                who = Some(name.clone());
            }
        }
        who.map(Operator).ok_or(AppError::Unauthenticated)
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

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_remembered_token_is_answered_from_memory_and_only_that_exact_text() {
        let v = JwtVerifier::new("k", 0, 100);
        let t = testkit::token("k", &serde_json::json!({"sub": "alice", "exp": now() + 600}));
        assert_eq!(v.verify(&t).unwrap().as_str(), "alice");
        assert_eq!(v.verified.as_ref().unwrap().len(), 1, "a verified token is remembered");
        // What is remembered answers without a signature check: planted under a text
        // that is no token at all, it answers for that exact text and nothing else.
        let planted = Verified { user: UserId::parse("mallory").unwrap(), exp: now() + 600 };
        v.verified.as_ref().unwrap().insert("planted".to_owned(), planted);
        assert_eq!(v.verify("planted").unwrap().as_str(), "mallory");
        assert!(matches!(v.verify("planted "), Err(AppError::Unauthenticated)));
        // A remembered token with its signature changed is checked in full, and refused.
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let flipped = if sig.starts_with('A') { "B" } else { "A" };
        assert!(matches!(
            v.verify(&format!("{signed}.{flipped}{}", &sig[1..])),
            Err(AppError::Unauthenticated)
        ));
        assert_eq!(v.verify(&t).unwrap().as_str(), "alice");
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let v = JwtVerifier::new("k", 1, 100);
        // Planted as the full check would have left it: expired as soon as `exp` is
        // more than the leeway (1 s) in the past.
        let remember = |text: &str, exp: u64| {
            let seen = Verified { user: UserId::parse("bob").unwrap(), exp };
            v.verified.as_ref().unwrap().insert(text.to_owned(), seen);
        };
        remember("within-leeway", now() - 1);
        remember("past-leeway", now() - 3);
        assert!(v.verify("within-leeway").is_ok());
        assert!(matches!(v.verify("past-leeway"), Err(AppError::Unauthenticated)));
        // A real token, remembered, then past its exp and leeway.
        let t = testkit::token("k", &serde_json::json!({"sub": "bob", "exp": now()}));
        assert!(v.verify(&t).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        assert!(matches!(v.verify(&t), Err(AppError::Unauthenticated)));
    }

    #[test]
    fn with_no_memory_every_token_is_checked_in_full() {
        let v = JwtVerifier::new("k", 0, 0);
        let t = testkit::token("k", &serde_json::json!({"sub": "carol", "exp": now() + 600}));
        assert_eq!(v.verify(&t).unwrap().as_str(), "carol");
        assert_eq!(v.verify(&t).unwrap().as_str(), "carol");
        assert!(v.verified.is_none());
        assert!(matches!(v.verify("not.a.jwt"), Err(AppError::Unauthenticated)));
    }

    #[test]
    fn operator_tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
