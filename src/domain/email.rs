use super::FieldError;

/// An email address, by the HTML standard's "valid e-mail address" rule (what a browser's
/// `<input type=email>` accepts): a local part of ASCII letters, digits and
/// ``.!#$%&'*+/=?^_`{|}~-``, an `@`, and a domain of labels of letters, digits and hyphens with
/// at least one dot. An internationalised domain is accepted and checked in its A-label
/// (punycode) form. No markup, control, bidi or zero-width characters anywhere: the address is
/// shown to operators and sent to the email provider, whose tools may not escape it.
///
/// Unique case-insensitively: the normalised form is the lower-cased local part `@` the
/// lower-case A-label domain, at most 254 characters (the column's bound, checked after
/// lower-casing, which can lengthen Unicode text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    display: String,
    normalized: String,
}

impl Email {
    pub(crate) const MAX_CHARS: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let display = raw.trim();
        let err = |code, message: &str| Err(FieldError::new("email", code, message));
        let shape = "Enter an address like name@example.com.";
        if display.is_empty() {
            return err("required", "Enter your email address.");
        }
        if display.chars().count() > Self::MAX_CHARS {
            return err("too_long", "Email addresses have at most 254 characters.");
        }
        if display.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err("invalid", "Email addresses contain no spaces.");
        }
        if display.chars().any(is_invisible) {
            return err("invalid", shape);
        }
        let Some((local, domain)) = display.split_once('@') else {
            return err("invalid", shape);
        };
        if local.is_empty() || !local.chars().all(is_local_char) {
            return err("invalid", shape);
        }
        let Some(domain) = ascii_domain(domain) else {
            return err("invalid", shape);
        };
        let normalized = format!("{}@{domain}", local.to_ascii_lowercase());
        if normalized.len() > Self::MAX_CHARS {
            return err("too_long", "Email addresses have at most 254 characters.");
        }
        Ok(Self {
            display: display.to_string(),
            normalized,
        })
    }

    /// As the person typed it (trimmed).
    pub(crate) fn as_str(&self) -> &str {
        &self.display
    }

    /// Lower-cased local part and A-label domain: what uniqueness compares.
    pub(crate) fn normalized(&self) -> &str {
        &self.normalized
    }

    /// `a***@example.com`: enough to follow a registration in logs without writing the address.
    pub(crate) fn masked(&self) -> String {
        mask(&self.display)
    }
}

/// The HTML standard's local-part characters (RFC 5322 atext, and dots anywhere).
fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c)
}

/// Characters that change how text is shown without being seen: bidi controls and marks,
/// zero-width spaces and joiners, the soft hyphen, the word joiner and the BOM.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// The domain in lower-case A-label form if it is a valid one: labels of 1–63 letters, digits
/// and hyphens, neither starting nor ending with a hyphen, at least two of them.
fn ascii_domain(domain: &str) -> Option<String> {
    if domain.is_empty() || domain.ends_with('.') {
        return None;
    }
    let ascii = idna::domain_to_ascii(domain).ok()?.to_ascii_lowercase();
    let labels: Vec<&str> = ascii.split('.').collect();
    let valid_label = |label: &&str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    (labels.len() >= 2 && labels.iter().all(valid_label)).then_some(ascii)
}

/// Masks an address's local part but its first character.
pub(super) fn mask(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// `text` (a provider's error message, say) with every address in it masked, for logs.
pub(crate) fn mask_addresses_in(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let trimmed = word.trim_matches(|c: char| "()[]<>\"',;:".contains(c));
            if trimmed.contains('@') {
                word.replace(trimmed, &mask(trimmed))
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An address as the unique index holds it: normalised as a registration would, or, for text
/// that is not a valid address (a lookup by what an operator typed), trimmed and lower-cased.
pub(crate) fn normalized_email(text: &str) -> String {
    Email::parse(text)
        .map(|e| e.normalized().to_owned())
        .unwrap_or_else(|_| text.trim().to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_a_providers_message_are_masked_for_logs() {
        assert_eq!(
            mask_addresses_in(
                "Mailchimp: Invalid Resource: jane.doe@example.com looks fake (\"jd@x.io\")"
            ),
            "Mailchimp: Invalid Resource: j***@example.com looks fake (\"j***@x.io\")"
        );
    }

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
                "Jane@Exämple.DE",
                "jane@xn--exmple-cua.de",
                "an internationalised domain, unique in its A-label form",
            ),
            (
                "o'brien&co!#$%*/=?^_`{|}~@example.com",
                "o'brien&co!#$%*/=?^_`{|}~@example.com",
                "every special character the HTML rule allows",
            ),
            ("a@b-c.example", "a@b-c.example", "a hyphen inside a label"),
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
    fn the_254_character_bound_holds_after_normalisation() {
        // 200 × "İ" lower-cases to 400 characters; as a local part it is not valid anyway.
        let dotted = format!("{}@x.co", "İ".repeat(200));
        assert_eq!(
            Email::parse(&dotted).expect_err("non-ASCII").code,
            "invalid"
        );
        // A domain that becomes longer as an A-label: 233 characters typed, 263 as punycode.
        let labels: Vec<String> = (0..5).map(|_| "ü".repeat(11)).collect();
        let long_idn = format!("{}@{}.de", "a".repeat(170), labels.join("."));
        assert!(long_idn.chars().count() <= 254);
        let err = Email::parse(&long_idn).expect_err("too long as punycode");
        assert_eq!(err.code, "too_long");
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
            (
                "\"><script>alert(1)</script>@x.co",
                "invalid",
                "markup in the local part",
            ),
            ("a@x.co<b>", "invalid", "markup in the domain"),
            ("ab\u{202E}moc@x.co", "invalid", "a bidi override"),
            (
                "a\u{200B}b@x.co",
                "invalid",
                "a zero-width space in the local part",
            ),
            (
                "ab@ex\u{200B}ample.com",
                "invalid",
                "a zero-width space in the domain",
            ),
            ("ab@x.co\u{2066}", "invalid", "a bidi isolate"),
            ("Ünïcode@example.de", "invalid", "a non-ASCII local part"),
            ("a@-x.co", "invalid", "a label starting with a hyphen"),
            ("a@x-.co", "invalid", "a label ending with a hyphen"),
            ("a@x_y.co", "invalid", "an underscore in the domain"),
            ("a(b)@x.co", "invalid", "a comment"),
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
