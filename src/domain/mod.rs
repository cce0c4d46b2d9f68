//! The registration's fields as types that can only hold valid values (SPEC §2). Each has one
//! constructor, `parse`, which trims, validates and normalises, so the RegistrationActor's check
//! and the unique indexes always compare the same forms.

mod consent;
mod email;
mod new_registration;
mod password;
mod registered_user;
mod username;

pub(crate) use consent::{ConsentState, Source};
pub use email::Email;
pub(crate) use email::{mask_addresses_in, normalized_email};
pub use new_registration::NewRegistration;
pub(crate) use password::Password;
pub(crate) use registered_user::RegisteredUser;
pub use username::Username;

/// Why one field was refused: `code` is stable and machine-readable, `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// `username`, `email` or `password`.
    pub field: &'static str,
    /// `required`, `too_short`, `too_long`, `invalid_characters`, `invalid_start`, `invalid`,
    /// `same_as_identity`.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_username_input_parses_to_a_valid_normalised_name_or_a_field_error(raw in any::<String>()) {
            match Username::parse(&raw) {
                Ok(name) => {
                    let n = name.as_str().chars().count();
                    prop_assert!((3..=32).contains(&n));
                    prop_assert!(name.as_str().chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)));
                    prop_assert_eq!(name.normalized(), name.as_str().to_ascii_lowercase());
                }
                Err(e) => prop_assert_eq!(e.field, "username"),
            }
        }

        #[test]
        fn well_formed_usernames_always_parse(raw in "[A-Za-z0-9][A-Za-z0-9_.-]{2,31}") {
            prop_assert!(Username::parse(&raw).is_ok());
        }

        #[test]
        fn any_email_input_parses_to_a_valid_normalised_address_or_a_field_error(raw in any::<String>()) {
            match Email::parse(&raw) {
                Ok(email) => {
                    prop_assert!(email.as_str().chars().count() <= 254);
                    prop_assert_eq!(email.as_str().matches('@').count(), 1);
                    prop_assert!(!email.as_str().chars().any(|c| c.is_whitespace() || c.is_control()));
                    prop_assert!(email.normalized().len() <= 254);
                    prop_assert!(email.normalized().is_ascii());
                    prop_assert!(!email.as_str().contains(['<', '>', '"']));
                    if email.as_str().is_ascii() {
                        prop_assert_eq!(email.normalized(), email.as_str().to_ascii_lowercase());
                    }
                }
                Err(e) => prop_assert_eq!(e.field, "email"),
            }
        }

        #[test]
        fn well_formed_addresses_always_parse(local in "[a-z0-9.+_-]{1,30}", domain in "[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?", tld in "[a-z]{2,6}") {
            let raw = format!("{local}@{domain}.{tld}");
            prop_assert!(Email::parse(&raw).is_ok(), "{}", raw);
        }

        #[test]
        fn any_password_is_accepted_exactly_when_8_to_128_characters_and_not_an_identity(raw in any::<String>()) {
            let n = raw.chars().count();
            let accepted = Password::parse(&raw, &["someone", "someone@example.com"]).is_ok();
            let identity = ["someone", "someone@example.com"].contains(&raw.to_lowercase().as_str());
            prop_assert_eq!(accepted, (8..=128).contains(&n) && !identity);
        }
    }
}
