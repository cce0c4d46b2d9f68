use super::FieldError;

/// An email address: at most 254 characters, one `@`, a non-empty local part, a domain with a
/// dot, no spaces or control characters. Unique case-insensitively (the whole address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    display: String,
    normalized: String,
}

impl Email {
    pub const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let display = raw.trim();
        let err = |code, message: &str| Err(FieldError::new("email", code, message));
        if display.is_empty() {
            return err("required", "Enter your email address.");
        }
        if display.chars().count() > Self::MAX_CHARS {
            return err("too_long", "Email addresses have at most 254 characters.");
        }
        if display.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err("invalid", "Email addresses contain no spaces.");
        }
        let mut parts = display.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return err("invalid", "Enter an address like name@example.com.");
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || !domain_ok {
            return err("invalid", "Enter an address like name@example.com.");
        }
        Ok(Self {
            display: display.to_string(),
            normalized: display.to_lowercase(),
        })
    }

    /// As the person typed it (trimmed).
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// Lower-cased whole address: what uniqueness compares.
    pub fn normalized(&self) -> &str {
        &self.normalized
    }

    /// `a***@example.com`: enough to follow a registration in logs without writing the address.
    pub fn masked(&self) -> String {
        mask(&self.display)
    }
}

/// Masks an address's local part but its first character.
pub fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses_are_trimmed_and_lower_cased_whole() {
        let cases = [
            ("a@b.co", "a@b.co", "the shortest shape"),
            (
                "  Jane.Doe@Example.COM ",
                "jane.doe@example.com",
                "trimmed and lower-cased",
            ),
            (
                "x+tag@sub.example.org",
                "x+tag@sub.example.org",
                "plus and subdomain",
            ),
            (
                "Ünïcode@exämple.de",
                "ünïcode@exämple.de",
                "Unicode is lower-cased too",
            ),
        ];
        for (raw, normalized, why) in cases {
            let email = Email::parse(raw).unwrap_or_else(|e| panic!("{why}: {e:?}"));
            assert_eq!(email.normalized(), normalized, "{why}");
            assert_eq!(email.as_str(), raw.trim(), "{why}");
        }
        let longest = format!("{}@example.com", "a".repeat(254 - 12));
        assert!(Email::parse(&longest).is_ok(), "254 characters");
    }

    #[test]
    fn invalid_addresses_are_refused_with_a_code() {
        let too_long = format!("{}@example.com", "a".repeat(255 - 12));
        let cases = [
            ("", "required", "empty"),
            ("  ", "required", "blank"),
            (too_long.as_str(), "too_long", "255 characters"),
            ("plainaddress", "invalid", "no at sign"),
            ("a@@b.com", "invalid", "two at signs"),
            ("a@b@c.com", "invalid", "two at signs apart"),
            ("@example.com", "invalid", "empty local part"),
            ("a@localhost", "invalid", "domain without a dot"),
            ("a@", "invalid", "empty domain"),
            ("a@.com", "invalid", "domain starts with a dot"),
            ("a@b.", "invalid", "domain ends with a dot"),
            ("a@b..com", "invalid", "empty domain label"),
            ("a b@c.com", "invalid", "inner space"),
            ("a\u{7}b@c.com", "invalid", "control character"),
            ("a@c.com\u{0}x", "invalid", "NUL"),
        ];
        for (raw, code, why) in cases {
            let err = Email::parse(raw).expect_err(why);
            assert_eq!(err.code, code, "{why}");
            assert_eq!(err.field, "email", "{why}");
        }
    }

    #[test]
    fn masking_keeps_the_first_character_and_the_domain() {
        assert_eq!(mask("jane@example.com"), "j***@example.com");
        assert_eq!(mask("nonsense"), "***");
    }
}
