use super::{Email, FieldError, Password, Username};

/// A validated registration, before its password is hashed.
#[derive(Debug)]
pub struct NewRegistration {
    pub username: Username,
    pub email: Email,
    pub password: Password,
}

impl NewRegistration {
    /// Validates every field and reports every failing one, in form order.
    pub fn parse(username: &str, email: &str, password: &str) -> Result<Self, Vec<FieldError>> {
        match (
            Username::parse(username),
            Email::parse(email),
            Password::parse(password, &[username, email]),
        ) {
            (Ok(username), Ok(email), Ok(password)) => Ok(Self {
                username,
                email,
                password,
            }),
            (u, e, p) => Err([u.err(), e.err(), p.err()].into_iter().flatten().collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failing_field_is_reported_in_form_order() {
        let errors = NewRegistration::parse("x", "nope", "short").expect_err("all invalid");
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["username", "email", "password"]);
    }

    #[test]
    fn a_valid_registration_parses() {
        let r =
            NewRegistration::parse("Alice", "Alice@Example.com", "correct horse").expect("valid");
        assert_eq!(r.username.normalized(), "alice");
        assert_eq!(r.email.normalized(), "alice@example.com");
    }
}
