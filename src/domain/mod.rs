//! The registration's fields as types that can only hold valid values (SPEC §2). Each has one
//! constructor, `parse`, which trims, validates and normalises, so the RegistrationActor's check
//! and the unique indexes always compare the same forms.

mod email;
mod new_registration;
mod password;
mod username;

pub use email::Email;
pub use new_registration::NewRegistration;
pub use password::Password;
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
