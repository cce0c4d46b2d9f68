//! CSRF protection for the form: a per-browser secret in an HttpOnly cookie, and per-form
//! tokens `<nonce>.<HMAC-SHA256(secret, nonce)>` in a hidden field. Another site can make the
//! browser send the cookie but cannot read it, so it cannot mint a matching token.
//!
//! Every rendering of the form gets a fresh nonce, so the nonce also names *this* submission:
//! a resubmission of the same form (back button, double click) carries the same nonce and is
//! recognised as a replay instead of a second registration.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The cookie holding the browser's secret.
pub const COOKIE: &str = "signup_csrf";

type HmacSha256 = Hmac<Sha256>;

/// 32 random bytes, base64url: a new browser secret.
pub fn new_secret() -> String {
    random_token(32)
}

/// A token for one rendering of the form, bound to `secret`.
pub fn issue(secret: &str) -> String {
    let nonce = random_token(16);
    let tag = URL_SAFE_NO_PAD.encode(mac(secret, &nonce).finalize().into_bytes());
    format!("{nonce}.{tag}")
}

/// The token's nonce if it was issued for `secret`, compared in constant time.
pub fn verify<'t>(secret: &str, token: &'t str) -> Option<&'t str> {
    let (nonce, tag) = token.split_once('.')?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    if nonce.is_empty() || secret.is_empty() {
        return None;
    }
    mac(secret, nonce).verify_slice(&tag).ok().map(|()| nonce)
}

fn mac(secret: &str, nonce: &str) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(nonce.as_bytes());
    mac
}

fn random_token(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(super::random_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_against_its_own_secret() {
        let secret = new_secret();
        let token = issue(&secret);
        let nonce = verify(&secret, &token).expect("own secret");
        assert!(token.starts_with(nonce));
        assert!(
            verify(&new_secret(), &token).is_none(),
            "another browser's secret"
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let secret = new_secret();
        let token = issue(&secret);
        let (nonce, _) = token.split_once('.').expect("dot");
        for bad in [
            "",
            ".",
            "abc",
            &format!("{nonce}."),
            &format!("{nonce}.!!!"),
            &format!("x{token}"),
        ] {
            assert!(verify(&secret, bad).is_none(), "{bad:?}");
        }
        assert!(verify("", &token).is_none(), "empty secret");
    }

    #[test]
    fn each_form_gets_a_fresh_nonce() {
        let secret = new_secret();
        assert_ne!(issue(&secret), issue(&secret));
    }
}
