//! Signing in and out of the console.

use super::*;

/// The sign-in form. No `Debug`: it holds the token.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf_token: String,
}

/// The sign-in page, with a CSRF token bound to a cookie of its own.
fn login_page(
    request: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    problem: Option<&str>,
) -> HttpResponse {
    let existing = request
        .cookie(state.cookies.console_login())
        .map(|c| c.value().to_owned())
        .filter(|v| csrf::is_session_id(v));
    let session = existing.clone().unwrap_or_else(csrf::new_session);
    let mut response = pages::console_login(status, &state.csrf.issue(&session), problem);
    if existing.is_none() {
        let cookie = cookie(
            state,
            state.cookies.console_login(),
            session,
            CookieDuration::hours(1),
        );
        add_cookie(&mut response, &cookie);
    }
    response
}

/// `GET /admin/login`: the console's sign-in page.
#[utoipa::path(get, path = "/admin/login", tag = "console",
    responses(
        (status = 200, description = "The sign-in form, with a csrf_token bound to a cookie", body = String, content_type = "text/html"),
        (status = 303, description = "Signed in already: to the overview", headers(("Location" = String, description = "/admin"))),
        (status = 404, description = "admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn show_login(
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    match signed_in(&request, &state).await {
        Ok(_) => Ok(see_other("/admin")),
        Err(ConsoleError::SignIn) => Ok(login_page(&request, &state, StatusCode::OK, None)),
        Err(e) => Err(e),
    }
}

/// `POST /admin/login`: the admin token in, a session cookie out.
#[utoipa::path(post, path = "/admin/login", tag = "console",
    request_body(content = SignInForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: a session cookie, to the overview", headers(("Location" = String, description = "/admin"))),
        FormRefused,
        (status = 401, description = "The page again: not the admin token", body = String, content_type = "text/html"),
        (status = 403, description = "The page again: the sign-in form's CSRF token is missing or wrong", body = String, content_type = "text/html"),
        (status = 404, description = "admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "The page again: too many sign-in attempts from this address", body = String, content_type = "text/html", headers(("Retry-After" = String, description = "Seconds"))),
    ))]
pub(crate) async fn login(
    request: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<SignInForm>,
) -> Result<HttpResponse, ConsoleError> {
    let token = state.admin_token.as_ref().ok_or(ConsoleError::NotFound)?;
    let client = super::super::limits::client_of(&request, &state);
    if let Some(client) = client
        && let Err(wait) = state.sign_in_limiter.check(client)
    {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(%client, "console: too many sign-in attempts");
        return Ok(html_error(
            &ApiError::RateLimited { retry_after },
            |status| {
                login_page(
                    &request,
                    &state,
                    status,
                    Some(&format!(
                        "Too many sign-in attempts from your address. Try again in {retry_after} s."
                    )),
                )
            },
        ));
    }
    let login_session = request
        .cookie(state.cookies.console_login())
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if state
        .csrf
        .verify(&login_session, &form.csrf_token)
        .is_none()
    {
        return Ok(login_page(
            &request,
            &state,
            StatusCode::FORBIDDEN,
            Some("This sign-in form has expired. Please try again. (Cookies must be enabled.)"),
        ));
    }
    if !token_matches(token, form.token.trim()) {
        tracing::warn!(client = ?client, "console: wrong admin token");
        return Ok(login_page(
            &request,
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That is not the admin token."),
        ));
    }
    // A fresh session id: nothing from before the sign-in carries over. Recorded, so that
    // signing out can end it on every instance.
    let now = Utc::now();
    let expires = now + chrono::Duration::hours(SESSION_HOURS);
    let new_session = csrf::new_session();
    crate::sessions::open(&state.db, &new_session, now, expires).await?;
    let value = state
        .csrf
        .sign_console(&new_session, expires.timestamp(), &token_digest(token));
    let mut response = see_other("/admin");
    let session = cookie(
        &state,
        state.cookies.console(),
        value,
        CookieDuration::hours(SESSION_HOURS),
    );
    add_cookie(&mut response, &session);
    let gone = cookie(
        &state,
        state.cookies.console_login(),
        String::new(),
        CookieDuration::ZERO,
    );
    add_cookie(&mut response, &gone);
    tracing::info!(client = ?client, "console: operator signed in");
    Ok(response)
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub(super) csrf_token: String,
}

/// `POST /admin/logout`.
#[utoipa::path(post, path = "/admin/logout", tag = "console", security(("console_session" = [])),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed out (or was not signed in): to the sign-in page", headers(("Location" = String, description = "/admin/login"))),
        FormRefused,
        Expired,
        (status = 404, description = "admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn logout(
    action: Action,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    let operator = action.checked(&state, &form.csrf_token)?;
    crate::sessions::revoke(&state.db, &operator.session, Utc::now()).await?;
    tracing::info!("console: operator signed out");
    let mut response = see_other("/admin/login");
    let gone = cookie(
        &state,
        state.cookies.console(),
        String::new(),
        CookieDuration::ZERO,
    );
    add_cookie(&mut response, &gone);
    Ok(response)
}
