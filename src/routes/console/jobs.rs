//! Dead and pending jobs, paged, and retrying them.

use super::*;

/// Where a Retry button sends the operator back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Back {
    Dead,
    Pending,
    User(Uuid),
}

impl Back {
    fn parse(text: &str) -> Self {
        match text {
            "pending" => Back::Pending,
            _ => match text.strip_prefix("user:").map(Uuid::parse_str) {
                Some(Ok(id)) => Back::User(id),
                _ => Back::Dead,
            },
        }
    }

    pub(crate) fn as_field(&self) -> String {
        match self {
            Back::Dead => "dead".into(),
            Back::Pending => "pending".into(),
            Back::User(id) => format!("user:{id}"),
        }
    }

    fn location(&self, done: &str) -> String {
        match self {
            Back::Dead => format!("/admin/jobs?status=dead&done={done}"),
            Back::Pending => format!("/admin/jobs?status=pending&done={done}"),
            Back::User(id) => format!("/admin/search?q={id}&done={done}"),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsQuery {
    /// dead (the default) or pending.
    status: Option<String>,
    /// A job id: list jobs older than it (the "Older" link).
    before: Option<String>,
    /// What the last action did (set by the console's own redirects).
    done: Option<String>,
}

/// What a `done=` in a redirect's query says (a fixed set: nothing a link can make up).
pub(super) fn notice_of(done: Option<&str>) -> Option<String> {
    let done = done?;
    if done == "retried" {
        return Some("The job is due again; the email sync sends it now.".into());
    }
    if done == "erased" {
        return Some(
            "Erased. Their removal at the email provider is queued as a user.deleted job.".into(),
        );
    }
    let n: u64 = done.strip_prefix("requeued-")?.parse().ok()?;
    Some(format!(
        "{n} dead job{} due again; the email sync sends them at its usual pace.",
        if n == 1 { " is" } else { "s are" }
    ))
}

/// `GET /admin/jobs?status=dead|pending&before=<id>`: newest first, a page at a time.
#[utoipa::path(get, path = "/admin/jobs", tag = "console", security(("console_session" = [])), params(JobsQuery),
    responses(
        (status = 200, description = "A page of jobs", body = String, content_type = "text/html"),
        PageRefused,
        Unavailable,
    ))]
pub(crate) async fn jobs(
    operator: Operator,
    state: web::Data<AppState>,
    query: web::Query<JobsQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let pending = query.status.as_deref() == Some("pending");
    let (status, back) = if pending {
        (Status::Pending, Back::Pending)
    } else {
        (Status::Dead, Back::Dead)
    };
    let before = query
        .before
        .as_deref()
        .and_then(|b| Uuid::parse_str(b).ok());
    let (jobs, next) = outbox::list(&state.db, Some(status), PAGE, before).await?;
    let status_name = status.as_str();
    let view = JobsView {
        nav: status_name,
        heading: if pending { "Pending jobs" } else { "Dead jobs" },
        empty: if pending {
            "Nothing is waiting: every registration is synced."
        } else {
            "No dead jobs."
        },
        show_retry_all: !pending && !jobs.is_empty(),
        jobs: jobs.into_iter().map(JobRow::from).collect(),
        back: back.as_field(),
        next_page: next.map(|id| format!("/admin/jobs?status={status_name}&before={id}")),
        not_first_page: before.is_some(),
        first_page: format!("/admin/jobs?status={status_name}"),
        notice: notice_of(query.done.as_deref()),
    };
    Ok(pages::console_jobs(&operator.csrf_token(&state), &view))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct RetryForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    back: String,
}

/// `POST /admin/jobs/{id}/retry`: the admin API's retry, then back where the button was.
#[utoipa::path(post, path = "/admin/jobs/{id}/retry", tag = "console", security(("console_session" = [])),
    params(("id" = String, Path, description = "Job (outbox row) id")),
    request_body(content = RetryForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Due now: back to the list (or to the search, or to the sign-in when signed out)", headers(("Location" = String, description = "The page the button was on"))),
        FormRefused,
        Expired,
        (status = 404, description = "No such job, or admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Delivered meanwhile, or cancelled by an erasure", body = String, content_type = "text/html"),
        Unavailable,
    ))]
pub(crate) async fn retry(
    action: Action,
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<RetryForm>,
) -> Result<HttpResponse, ConsoleError> {
    action.checked(&state, &form.csrf_token)?;
    let id = path_id(&path)?;
    let back = Back::parse(&form.back);
    match outbox::requeue(&state.db, id, Utc::now()).await? {
        Requeue::Due(_) => {
            wake(&state);
            tracing::info!(outbox_id = %id, "operator requeued a job (console)");
            Ok(see_other(&back.location("retried")))
        }
        Requeue::Delivered => Ok(pages::console_message(
            StatusCode::CONFLICT,
            "Delivered already",
            "This job was delivered meanwhile; there is nothing to retry.",
        )),
        Requeue::Cancelled => Ok(pages::console_message(
            StatusCode::CONFLICT,
            "Cancelled by an erasure",
            "This job's user was erased; it is never sent.",
        )),
        Requeue::NotFound => Err(ConsoleError::NotFound),
    }
}

/// `POST /admin/retry-dead`.
#[utoipa::path(post, path = "/admin/retry-dead", tag = "console", security(("console_session" = [])),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Every dead job is due: to the dead jobs (or to the sign-in when signed out)", headers(("Location" = String, description = "/admin/jobs?status=dead&done=requeued-N"))),
        FormRefused,
        Expired,
        (status = 404, description = "admin.token is not set", body = crate::routes::error::Problem, content_type = "application/problem+json"),
        Unavailable,
    ))]
pub(crate) async fn retry_dead(
    action: Action,
    state: web::Data<AppState>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, ConsoleError> {
    action.checked(&state, &form.csrf_token)?;
    let requeued = outbox::requeue_all_dead(&state.db, Utc::now(), REQUEUE_BATCH).await?;
    wake(&state);
    tracing::info!(requeued, "operator requeued every dead job (console)");
    Ok(see_other(&format!(
        "/admin/jobs?status=dead&done=requeued-{requeued}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_back_field_only_leads_to_console_pages() {
        let id = Uuid::now_v7();
        assert_eq!(Back::parse("pending"), Back::Pending);
        assert_eq!(Back::parse(&format!("user:{id}")), Back::User(id));
        for other in ["", "dead", "https://evil.example/", "user:nope", "//evil"] {
            assert_eq!(Back::parse(other), Back::Dead, "{other}");
        }
        assert!(
            Back::parse("//evil")
                .location("retried")
                .starts_with("/admin/")
        );
    }

    #[test]
    fn a_done_parameter_shows_only_messages_of_the_console_s_own() {
        assert!(notice_of(Some("retried")).is_some());
        assert_eq!(
            notice_of(Some("requeued-3")).as_deref(),
            Some("3 dead jobs are due again; the email sync sends them at its usual pace.")
        );
        for other in ["<script>", "requeued-x", "requeued-", ""] {
            assert_eq!(notice_of(Some(other)), None, "{other}");
        }
    }
}
