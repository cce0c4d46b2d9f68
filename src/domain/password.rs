use secrecy::{ExposeSecret, SecretString};

use super::FieldError;

/// A password of 8–128 Unicode scalar values. Held as a secret: it never reaches a log line,
/// an error body or the database (only its argon2id hash does).
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    pub(crate) const MIN_CHARS: usize = 8;
    pub(crate) const MAX_CHARS: usize = 128;

    /// `identities` are the person's raw username and email: the password must differ from
    /// both (compared case-insensitively, after trimming them).
    pub(crate) fn parse(raw: &str, identities: &[&str]) -> Result<Self, FieldError> {
        let err = |code, message: &str| Err(FieldError::new("password", code, message));
        let chars = raw.chars().count();
        if chars == 0 {
            return err("required", "Choose a password.");
        }
        if chars < Self::MIN_CHARS {
            return err("too_short", "Passwords have at least 8 characters.");
        }
        if chars > Self::MAX_CHARS {
            return err("too_long", "Passwords have at most 128 characters.");
        }
        let lowered = raw.to_lowercase();
        if identities
            .iter()
            .map(|id| id.trim())
            .any(|id| !id.is_empty() && id.to_lowercase() == lowered)
        {
            return err(
                "same_as_identity",
                "Choose a password that differs from your username and email.",
            );
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_passwords_are_kept_exactly() {
        let cases = [
            ("12345678", "eight ASCII characters"),
            (" spaced out ", "spaces are kept, not trimmed"),
            ("ééééééééé", "counted in characters, not bytes"),
            ("🔑🔑🔑🔑🔑🔑🔑🔑", "eight emoji"),
        ];
        for (raw, why) in cases {
            let password = Password::parse(raw, &["someone", "someone@example.com"])
                .unwrap_or_else(|e| panic!("{why}: {e:?}"));
            assert_eq!(password.expose(), raw, "{why}");
        }
        assert!(
            Password::parse(&"p".repeat(128), &[]).is_ok(),
            "128 characters"
        );
    }

    #[test]
    fn invalid_passwords_are_refused_with_a_code() {
        let long = "p".repeat(129);
        let cases = [
            ("", "required", "empty"),
            ("1234567", "too_short", "seven characters"),
            ("é234567", "too_short", "seven characters, eight bytes"),
            (long.as_str(), "too_long", "129 characters"),
            ("alice_2024", "same_as_identity", "equal to the username"),
            (
                "ALICE_2024",
                "same_as_identity",
                "equal to the username in another case",
            ),
            (
                "alice@example.com",
                "same_as_identity",
                "equal to the email",
            ),
        ];
        for (raw, code, why) in cases {
            let err = Password::parse(raw, &["Alice_2024", " alice@example.com "]).expect_err(why);
            assert_eq!(err.code, code, "{why}");
            assert_eq!(err.field, "password", "{why}");
            assert!(
                !err.message.contains(raw) || raw.is_empty(),
                "{why}: message echoes the password"
            );
        }
    }
}
