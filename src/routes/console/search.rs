//! Finding a user by email or id, and erasing them after a confirmation.

use super::*;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SearchQuery {
    /// An email address (any case) or a user id.
    q: Option<String>,
    /// What the last action did (set by the console's own redirects).
    done: Option<String>,
}

/// `GET /admin/search?q=<email or user id>`.
#[utoipa::path(get, path = "/admin/search", tag = "console", security(("console_session" = [])), params(SearchQuery),
    responses(
        (status = 200, description = "The user and their jobs", body = String, content_type = "text/html"),
        PageRefused,
        Unavailable,
    ))]
pub(crate) async fn search(
    operator: Operator,
    state: web::Data<AppState>,
    query: web::Query<SearchQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let text = query.q.as_deref().unwrap_or_default().trim().to_owned();
    let mut view = SearchView {
        query: text.clone(),
        user: None,
        registered: String::new(),
        consent: String::new(),
        message: None,
        jobs: Vec::new(),
        back: String::new(),
        notice: notice_of(query.done.as_deref()),
    };
    if !text.is_empty() {
        let (user, user_id) = match text.parse::<Who>() {
            Ok(Who::Id(id)) => (store::find_user(&state.db, id).await?, Some(id)),
            Ok(Who::Email(email)) => {
                let user = store::find_user_by_email(&state.db, &email).await?;
                let id = user.as_ref().map(|u| u.id);
                (user, id)
            }
            Err(never) => match never {},
        };
        if let Some(id) = user_id {
            view.jobs = outbox::jobs_of_user(&state.db, id)
                .await?
                .into_iter()
                .map(JobRow::from)
                .collect();
            view.back = Back::User(id).as_field();
        }
        view.message = match (&user, view.jobs.is_empty()) {
            (Some(_), _) => None,
            (None, false) => Some("No user has this id now (erased); their jobs are below.".into()),
            (None, true) => Some("No user registered with this address or id.".into()),
        };
        view.registered = user
            .as_ref()
            .map(|u| u.created_at.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        if let Some(user) = &user {
            let consent =
                crate::consent::store::of(&state.db, &state.inbound.contacts, &user.email).await?;
            view.consent = consent.describe();
        }
        view.user = user;
    }
    Ok(pages::console_search(&operator.csrf_token(&state), &view))
}

/// `GET /admin/users/{id}/erase`: what will happen, and the button.
#[utoipa::path(get, path = "/admin/users/{id}/erase", tag = "console", security(("console_session" = [])),
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "What an erasure does, and its button", body = String, content_type = "text/html"),
        (status = 303, description = "Signed out: to the sign-in page", headers(("Location" = String, description = "/admin/login"))),
        (status = 404, description = "No such user, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub(crate) async fn confirm_erase(
    operator: Operator,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let id = path_id(&path)?;
    let user = store::find_user(&state.db, id)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    Ok(pages::console_erase(&operator.csrf_token(&state), &user))
}

/// `POST /admin/users/{id}/erase`: the admin API's erasure.
#[utoipa::path(post, path = "/admin/users/{id}/erase", tag = "console", security(("console_session" = [])),
    params(("id" = String, Path, description = "The user's id")),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Erased: to the search for their id (or to the sign-in when signed out)", headers(("Location" = String, description = "/admin/search?q=<id>&done=erased"))),
        FormRefused,
        Expired,
        (status = 404, description = "No such user (or erased already), or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub(crate) async fn erase(
    action: Action,
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    action.checked(&state, &form.csrf_token)?;
    let id = path_id(&path)?;
    let erased = super::super::admin::erase(&state, id).await?;
    tracing::info!(user_id = %erased.user_id, deletion_job = %erased.deletion_job, cancelled = erased.cancelled, "operator erased a user (console)");
    Ok(see_other(&format!("/admin/search?q={id}&done=erased")))
}
