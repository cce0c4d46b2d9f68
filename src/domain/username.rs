use super::FieldError;

/// A username: 3–32 characters of `a–z`, `0–9`, `_`, `-`, `.` (either case), starting with a
/// letter or digit. Unique case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    display: String,
    normalized: String,
}

impl Username {
    pub(crate) const MIN_CHARS: usize = 3;
    pub(crate) const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let display = raw.trim();
        let err = |code, message: &str| Err(FieldError::new("username", code, message));
        if display.is_empty() {
            return err("required", "Choose a username.");
        }
        let chars = display.chars().count();
        if chars < Self::MIN_CHARS {
            return err("too_short", "Usernames have at least 3 characters.");
        }
        if chars > Self::MAX_CHARS {
            return err("too_long", "Usernames have at most 32 characters.");
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !display.chars().all(allowed) {
            return err(
                "invalid_characters",
                "Use only letters a–z, digits, and _ - . in usernames.",
            );
        }
        if !display.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return err("invalid_start", "Usernames start with a letter or a digit.");
        }
        Ok(Self {
            display: display.to_string(),
            normalized: display.to_ascii_lowercase(),
        })
    }

    /// As the person typed it (trimmed): for display.
    pub(crate) fn as_str(&self) -> &str {
        &self.display
    }

    /// Lower-cased: what uniqueness compares.
    pub(crate) fn normalized(&self) -> &str {
        &self.normalized
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_usernames_are_trimmed_and_lower_cased_for_uniqueness() {
        let cases = [
            ("abc", "abc", "abc", "the shortest"),
            (
                "  Alice_01  ",
                "Alice_01",
                "alice_01",
                "trimmed, case kept for display",
            ),
            ("9lives", "9lives", "9lives", "may start with a digit"),
            ("a.b-c_d", "a.b-c_d", "a.b-c_d", "all punctuation allowed"),
            (
                &"x".repeat(32),
                &"x".repeat(32),
                &"x".repeat(32),
                "the longest",
            ),
        ];
        for (raw, display, normalized, why) in cases {
            let name = Username::parse(raw).unwrap_or_else(|e| panic!("{why}: {e:?}"));
            assert_eq!(name.as_str(), display, "{why}");
            assert_eq!(name.normalized(), normalized, "{why}");
        }
    }

    #[test]
    fn invalid_usernames_are_refused_with_a_code() {
        let cases = [
            ("", "required", "empty"),
            ("   ", "required", "blank"),
            ("ab", "too_short", "two characters"),
            ("  ab  ", "too_short", "length counts after trimming"),
            (&"x".repeat(33), "too_long", "33 characters"),
            ("héllo", "invalid_characters", "non-ASCII letter"),
            ("a b", "invalid_characters", "inner space"),
            ("a@b", "invalid_characters", "at sign"),
            ("<script>", "invalid_characters", "markup"),
            ("_abc", "invalid_start", "starts with underscore"),
            (".abc", "invalid_start", "starts with a dot"),
            ("-abc", "invalid_start", "starts with a dash"),
        ];
        for (raw, code, why) in cases {
            let err = Username::parse(raw).expect_err(why);
            assert_eq!(err.code, code, "{why}");
            assert_eq!(err.field, "username", "{why}");
        }
    }
}
