//! CSRF protection for the form, and the signed welcome cookie (SPEC §4.7).
//!
//! A browser gets a random session id in an HttpOnly cookie; each rendering of the form gets a
//! token `<nonce>.<HMAC-SHA256(server key, "csrf" ‖ session id ‖ nonce)>` in a hidden field.
//! The server key is generated once and stored in the database (every instance shares it, and
//! it survives restarts), so a token cannot be made by anyone who does not hold it: keying the
//! HMAC by the cookie itself, as before, let a client choose the cookie and compute the token.
//!
//! Every rendering of the form gets a fresh nonce, so the nonce also names *this* submission:
//! a resubmission of the same form (back button, double click) carries the same nonce and is
//! recognised as a replay instead of a second registration.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sea_orm::{DatabaseConnection, DbErr};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Random bytes in a session id (43 base64url characters).
const SESSION_BYTES: usize = 32;
/// Random bytes in a nonce (22 base64url characters): what the idempotency key stores.
const NONCE_BYTES: usize = 16;
/// The row of `server_keys` holding this key.
const KEY_NAME: &str = "csrf";

/// The cookies' names and attributes: `__Host-` prefixed and `Secure` when the server's public
/// URL is https (the prefix obliges `Secure` and `Path=/`); plain otherwise, so that a trial on
/// http://localhost works. Never decided by a request header a client can forge.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CookiePolicy {
    pub secure: bool,
}

impl CookiePolicy {
    /// The cookie holding the browser's session id.
    pub(crate) fn session(&self) -> &'static str {
        if self.secure {
            "__Host-signup_csrf"
        } else {
            "signup_csrf"
        }
    }

    /// The cookie naming, signed, whom this browser just registered.
    pub(crate) fn welcome(&self) -> &'static str {
        if self.secure {
            "__Host-signup_welcome"
        } else {
            "signup_welcome"
        }
    }

    pub(crate) fn path(&self) -> &'static str {
        if self.secure { "/" } else { "/register" }
    }

    /// The operator console's signed session.
    pub(crate) fn console(&self) -> &'static str {
        if self.secure {
            "__Host-signup_console"
        } else {
            "signup_console"
        }
    }

    /// The console's sign-in page's session id (binds the sign-in form's CSRF token).
    pub(crate) fn console_login(&self) -> &'static str {
        if self.secure {
            "__Host-signup_console_login"
        } else {
            "signup_console_login"
        }
    }

    pub(crate) fn console_path(&self) -> &'static str {
        if self.secure { "/" } else { "/admin" }
    }
}

/// The server's key for CSRF tokens and the welcome cookie.
#[derive(Clone)]
pub(crate) struct CsrfKey(SecretSlice<u8>);

impl std::fmt::Debug for CsrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CsrfKey(…)")
    }
}

impl CsrfKey {
    /// The stored key, generated and stored first if this is the first instance to start.
    /// Instances starting together agree: only one insert wins, and both read it back.
    pub(crate) async fn load_or_create(db: &DatabaseConnection) -> Result<Self, DbErr> {
        Ok(Self::from_bytes(
            crate::outbox::load_or_create_server_key(db, KEY_NAME).await?,
        ))
    }

    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(SecretSlice::from(bytes))
    }

    /// The key's bytes, by which a restored database file is recognised as this database's
    /// (`db_file`); never logged or sent.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.expose_secret().to_vec()
    }

    fn mac(&self, purpose: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac =
            HmacSha256::new_from_slice(self.0.expose_secret()).expect("HMAC takes any key length");
        mac.update(purpose);
        for part in parts {
            // Length-prefixed, so that no two different splits feed the same bytes.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// A token for one rendering of the form, bound to the browser's `session`.
    pub(crate) fn issue(&self, session: &str) -> String {
        let nonce = random_token(NONCE_BYTES);
        let tag = self
            .mac(b"csrf", &[session.as_bytes(), nonce.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{nonce}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The token's nonce if this server issued it for `session`, compared in constant time.
    /// A nonce of any other shape is refused before anything else looks at it: it becomes an
    /// idempotency key, stored in a column of bounded length.
    pub(crate) fn verify<'t>(&self, session: &str, token: &'t str) -> Option<&'t str> {
        if !is_session_id(session) {
            return None;
        }
        let (nonce, tag) = token.split_once('.')?;
        if !is_token_of(nonce, NONCE_BYTES) {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(b"csrf", &[session.as_bytes(), nonce.as_bytes()])
            .verify_slice(&tag)
            .ok()
            .map(|()| nonce)
    }

    /// The welcome cookie's value for `user`: its id and a tag, so that nobody can be greeted
    /// as somebody else by writing another id into the cookie.
    pub(crate) fn sign_welcome(&self, user: Uuid) -> String {
        let id = user.to_string();
        let tag = self
            .mac(b"welcome", &[id.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The user a welcome cookie names, if this server signed it.
    pub(crate) fn open_welcome(&self, value: &str) -> Option<Uuid> {
        let (id, tag) = value.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(b"welcome", &[id.as_bytes()])
            .verify_slice(&tag)
            .ok()?;
        Uuid::parse_str(id).ok()
    }
}

impl CsrfKey {
    /// The console's session cookie: `<session id>.<expires, Unix seconds>.<tag>`, the tag
    /// binding both to this server's key and to the admin token (`token_digest`), so that
    /// changing `admin.token` signs every console session out.
    pub(crate) fn sign_console(&self, session: &str, expires: i64, token_digest: &[u8]) -> String {
        let expires = expires.to_string();
        let tag = self
            .mac(
                b"console",
                &[session.as_bytes(), expires.as_bytes(), token_digest],
            )
            .finalize()
            .into_bytes();
        format!("{session}.{expires}.{}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// The session id of a console cookie this server signed for `token_digest`, if it has not
    /// expired by `now` (Unix seconds).
    pub(crate) fn open_console<'v>(
        &self,
        value: &'v str,
        now: i64,
        token_digest: &[u8],
    ) -> Option<&'v str> {
        let mut parts = value.splitn(3, '.');
        let (session, expires, tag) = (parts.next()?, parts.next()?, parts.next()?);
        if !is_session_id(session) || expires.parse::<i64>().ok()? <= now {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        self.mac(
            b"console",
            &[session.as_bytes(), expires.as_bytes(), token_digest],
        )
        .verify_slice(&tag)
        .ok()
        .map(|()| session)
    }
}

/// A new browser session id.
pub(crate) fn new_session() -> String {
    random_token(SESSION_BYTES)
}

/// Whether `value` has the shape of a session id this server hands out.
pub(crate) fn is_session_id(value: &str) -> bool {
    is_token_of(value, SESSION_BYTES)
}

/// `bytes` random bytes written as base64url without padding, and nothing else.
fn is_token_of(value: &str, bytes: usize) -> bool {
    value.len() == (bytes * 4).div_ceil(3)
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_token(bytes: usize) -> String {
    URL_SAFE_NO_PAD.encode(super::random_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_key() -> CsrfKey {
        CsrfKey::from_bytes(super::super::random_bytes(32))
    }

    #[test]
    fn a_token_verifies_only_for_its_own_session_and_server_key() {
        let key = server_key();
        let session = new_session();
        let token = key.issue(&session);
        let nonce = key.verify(&session, &token).expect("own session");
        assert!(token.starts_with(nonce));
        assert!(
            key.verify(&new_session(), &token).is_none(),
            "another browser's session"
        );
        assert!(
            server_key().verify(&session, &token).is_none(),
            "another server's key"
        );
    }

    #[test]
    fn a_token_keyed_by_the_cookie_itself_is_refused() {
        // The old scheme: cookie `x`, token nonce.HMAC("x", nonce), all chosen by the client.
        let session = new_session();
        let nonce = random_token(NONCE_BYTES);
        let mut mac = HmacSha256::new_from_slice(session.as_bytes()).expect("any key length");
        mac.update(nonce.as_bytes());
        let forged = format!(
            "{nonce}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        );
        assert!(server_key().verify(&session, &forged).is_none());
    }

    #[test]
    fn a_console_session_opens_only_unexpired_unaltered_and_for_the_same_admin_token() {
        let key = server_key();
        let session = new_session();
        let cookie = key.sign_console(&session, 1000, b"token one");
        assert_eq!(
            key.open_console(&cookie, 999, b"token one"),
            Some(session.as_str())
        );
        assert_eq!(
            key.open_console(&cookie, 1000, b"token one"),
            None,
            "expired"
        );
        assert_eq!(
            key.open_console(&cookie, 999, b"token two"),
            None,
            "token changed"
        );
        assert_eq!(
            server_key().open_console(&cookie, 999, b"token one"),
            None,
            "other key"
        );
        let later = cookie.replacen(".1000.", ".9000.", 1);
        assert_eq!(
            key.open_console(&later, 999, b"token one"),
            None,
            "expiry moved"
        );
        for bad in ["", "a.b", "a.b.c", &format!("{session}.x.y")] {
            assert_eq!(key.open_console(bad, 0, b"token one"), None, "{bad}");
        }
    }

    #[test]
    fn malformed_tokens_and_sessions_are_refused() {
        let key = server_key();
        let session = new_session();
        let token = key.issue(&session);
        let (nonce, tag) = token.split_once('.').expect("dot");
        let long_nonce = "n".repeat(310);
        for (bad, why) in [
            ("", "empty"),
            (".", "only a dot"),
            ("abc", "no dot"),
            (&format!("{nonce}.") as &str, "no tag"),
            (&format!("{nonce}.!!!"), "tag not base64"),
            (&format!("x{token}"), "nonce one character longer"),
            (&format!("{long_nonce}.{tag}"), "310-character nonce"),
            (&format!("{}\0.{tag}", &nonce[1..]), "NUL in the nonce"),
        ] {
            assert!(key.verify(&session, bad).is_none(), "{why}");
        }
        assert!(key.verify("", &token).is_none(), "empty session");
        assert!(
            key.verify("x", &token).is_none(),
            "session of another shape"
        );
    }

    #[test]
    fn each_form_gets_a_fresh_nonce() {
        let key = server_key();
        let session = new_session();
        assert_ne!(key.issue(&session), key.issue(&session));
    }

    #[test]
    fn a_welcome_cookie_opens_only_as_signed() {
        let key = server_key();
        let user = Uuid::new_v4();
        let value = key.sign_welcome(user);
        assert_eq!(key.open_welcome(&value), Some(user));
        assert_eq!(key.open_welcome(&user.to_string()), None, "a bare id");
        let other = Uuid::new_v4();
        let (_, tag) = value.split_once('.').expect("dot");
        assert_eq!(
            key.open_welcome(&format!("{other}.{tag}")),
            None,
            "another id"
        );
    }
}
