//! Mailchimp's list members API.

use super::*;

/// Mailchimp's `status_if_new`: what a new member becomes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatusIfNew {
    /// Subscribed at once (the person consented on the sign-up form).
    Subscribed,
    /// Mailchimp sends a confirmation email first (double opt-in).
    Pending,
}

impl StatusIfNew {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StatusIfNew::Subscribed => "subscribed",
            StatusIfNew::Pending => "pending",
        }
    }
}

/// `email_sync.mailchimp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailchimpSettings {
    /// The API key, `<key>-<dc>`; required with `kind = "mailchimp"`.
    pub api_key: SecretString,
    /// The audience (list) id; required with `kind = "mailchimp"`.
    pub list_id: String,
    /// The API's base URL; unset: `https://<dc>.api.mailchimp.com` from the key's suffix.
    #[serde(deserialize_with = "http_url")]
    pub base_url: Option<Url>,
    /// The merge field (tag) that receives the username, e.g. `USERNAME`.
    pub username_merge_field: String,
    /// What a new member becomes: `pending` (double opt-in, the default) or `subscribed`.
    pub status_if_new: StatusIfNew,
    /// How an erased user leaves the audience: `permanent` (delete-permanent, the default: the
    /// address cannot be re-imported, and a later sign-up with it is refused by Mailchimp as
    /// "Forgotten Email Not Subscribed") or `archive` (DELETE: kept archived, may come back).
    pub erase: MailchimpErase,
    /// The secret path segment of Mailchimp's webhook URL (`/hooks/mailchimp/<secret>`):
    /// Mailchimp signs nothing, so this is the credential. Set, that route takes Mailchimp's
    /// events (SPEC §8); unset, it is 404.
    pub webhook_secret: SecretString,
}

/// `email_sync.mailchimp.erase`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MailchimpErase {
    /// `POST …/members/{hash}/actions/delete-permanent`.
    Permanent,
    /// `DELETE …/members/{hash}` (archive).
    Archive,
}

impl Default for MailchimpSettings {
    fn default() -> Self {
        Self {
            api_key: SecretString::from(""),
            list_id: String::new(),
            base_url: None,
            username_merge_field: "USERNAME".into(),
            status_if_new: StatusIfNew::Pending,
            erase: MailchimpErase::Permanent,
            webhook_secret: SecretString::from(""),
        }
    }
}

impl MailchimpSettings {
    /// The first required key that is not set (checked at start-up).
    pub(crate) fn missing(&self) -> Missing {
        missing_key(&self.api_key).or_else(|| missing_text("list_id", &self.list_id))
    }
    /// `base_url`, or the data center's API host named by the key's suffix (`…-us21`).
    pub(crate) fn api_base(&self) -> Url {
        if let Some(url) = &self.base_url {
            return url.clone();
        }
        let dc = self
            .api_key
            .expose_secret()
            .rsplit_once('-')
            .map(|(_, dc)| dc.to_owned())
            .filter(|dc| !dc.is_empty() && dc.bytes().all(|b| b.is_ascii_alphanumeric()))
            .unwrap_or_else(|| "us1".into());
        Url::parse(&format!("https://{dc}.api.mailchimp.com"))
            .unwrap_or_else(|_| unreachable!("an alphanumeric host label"))
    }
}

/// Mailchimp (`email_sync.kind = "mailchimp"`): `PUT /3.0/lists/{list_id}/members/{md5 of the
/// lower-cased email}`, an idempotent upsert (a POST on an existing member is 400 "Member
/// Exists"). Sends `status_if_new` only: `status` would re-subscribe someone who unsubscribed.
/// Basic auth, any user name, the API key as password.
pub type Mailchimp = Api<MailchimpSettings>;

impl Mailchimp {
    pub(crate) fn from_settings(
        settings: &MailchimpSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let list = join(
            &settings.api_base(),
            &format!("3.0/lists/{}", settings.list_id),
        );
        Self::at(list, settings, timeout)
    }

    /// One member as Mailchimp's bodies carry it: `status_if_new` only, never `status`.
    fn member(&self, user: &UserRegistered) -> serde_json::Value {
        let mut merge_fields = serde_json::Map::new();
        merge_fields.insert(
            self.settings.username_merge_field.clone(),
            serde_json::Value::String(user.username.clone()),
        );
        serde_json::json!({
            "email_address": user.email,
            "status_if_new": self.settings.status_if_new.as_str(),
            "merge_fields": merge_fields,
        })
    }

    /// Sends `request` with the key; the status, headers and body of the answer.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, HeaderMap, String), AttemptOutcome> {
        let response =
            sent(request.basic_auth("signup", Some(self.settings.api_key.expose_secret()))).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(request_failed)?;
        Ok((status, headers, text))
    }
}

/// Mailchimp's subscriber hash: MD5 of the lower-cased address, in hex.
pub fn subscriber_hash(email: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(email.to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mailchimp's answers beyond §3.2: a 400 is judged by [`mailchimp_refusal`].
fn mailchimp_outcome(status: StatusCode, headers: &HeaderMap, body: &str) -> AttemptOutcome {
    if status == StatusCode::BAD_REQUEST {
        let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let title = problem["title"].as_str().unwrap_or("Bad Request");
        let detail = problem["detail"].as_str().unwrap_or("");
        return mailchimp_refusal(&format!("{title}: {detail}"));
    }
    classify(
        status,
        headers,
        "x-ratelimit-reset",
        "email_sync.mailchimp.api_key",
    )
}

/// What Mailchimp refusing one member means, from its words (a 400's title and detail, or a
/// batch answer's member error): an address that "signed up to a lot of lists very recently"
/// may be tried again, no sooner than an hour; everything else (compliance state, permanently
/// deleted or forgotten, fake or invalid, validation) is final, kept with Mailchimp's words.
fn mailchimp_refusal(words: &str) -> AttemptOutcome {
    // The person declined (unsubscribed, bounced, complained, or was forgotten at Mailchimp):
    // their consent says so from now on (SPEC §8), and the row is done.
    if words.contains("Member In Compliance State")
        || words.contains("Forgotten Email Not Subscribed")
    {
        return AttemptOutcome::Declined {
            status: 400,
            state: "unsubscribed",
            error: format!("Mailchimp: {words}"),
        };
    }
    if words.contains("signed up to a lot of lists very recently") {
        return AttemptOutcome::Transient {
            status: Some(400),
            error: format!("Mailchimp: {words}"),
            retry_after: Some(Duration::from_secs(3600)),
        };
    }
    AttemptOutcome::Permanent {
        status: Some(400),
        error: format!("Mailchimp: {words}"),
    }
}

/// The outcome of each of `users` in Mailchimp's 200 answer to a batch subscribe: a member
/// its `errors[]` names (by address, in any case) is refused as [`mailchimp_refusal`] says;
/// every other member was added or updated.
fn mailchimp_batch_outcomes(users: &[UserRegistered], body: &str) -> BatchAnswer {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        errors: Vec<MemberError>,
    }
    #[derive(serde::Deserialize)]
    struct MemberError {
        email_address: String,
        #[serde(default)]
        error: String,
        #[serde(default)]
        error_code: String,
    }
    let Ok(answer) = serde_json::from_str::<Answer>(body) else {
        return BatchAnswer::Whole(AttemptOutcome::Transient {
            status: Some(200),
            error: "Mailchimp answered the batch with an unreadable body".into(),
            retry_after: None,
        });
    };
    let refused: std::collections::HashMap<String, MemberError> = answer
        .errors
        .into_iter()
        .map(|e| (e.email_address.to_lowercase(), e))
        .collect();
    BatchAnswer::Each(
        users
            .iter()
            .map(|user| match refused.get(&user.email.to_lowercase()) {
                Some(e) => mailchimp_refusal(&format!("{} ({})", e.error, e.error_code)),
                None => AttemptOutcome::delivered(200),
            })
            .collect(),
    )
}

impl OneAtATime for Mailchimp {
    async fn send(&self, user: &UserRegistered) -> AttemptOutcome {
        let url = join(
            &self.endpoint,
            &format!("members/{}", subscriber_hash(&user.email)),
        );
        let request = self.client.put(url).json(&self.member(user));
        match self.exchange(request).await {
            Ok((status, headers, text)) => mailchimp_outcome(status, &headers, &text),
            Err(failed) => failed,
        }
    }

    /// `POST …/members/{hash}/actions/delete-permanent` (`erase = "permanent"`) or
    /// `DELETE …/members/{hash}` (`erase = "archive"`).
    async fn erase(&self, user: &UserDeleted, _: Option<&EarlierUpsert>) -> AttemptOutcome {
        let hash = subscriber_hash(&user.email);
        let request = match self.settings.erase {
            MailchimpErase::Permanent => self.client.post(with_segments(
                &self.endpoint,
                &["members", &hash, "actions", "delete-permanent"],
            )),
            MailchimpErase::Archive => self
                .client
                .delete(with_segments(&self.endpoint, &["members", &hash])),
        };
        let request = request.basic_auth("signup", Some(self.settings.api_key.expose_secret()));
        erase_request(request, "x-ratelimit-reset", "email_sync.mailchimp.api_key").await
    }
}

impl InBatches for Mailchimp {
    /// `POST /3.0/lists/{list_id}` `{"members": [...], "update_existing": true}`.
    async fn send_batch(&self, users: &[UserRegistered]) -> BatchAnswer {
        let members: Vec<_> = users.iter().map(|user| self.member(user)).collect();
        let body = serde_json::json!({"members": members, "update_existing": true});
        let request = self.client.post(self.endpoint.clone()).json(&body);
        match self.exchange(request).await {
            Ok((status, _, text)) if status.is_success() => mailchimp_batch_outcomes(users, &text),
            Ok((status, headers, text)) => {
                BatchAnswer::Whole(mailchimp_outcome(status, &headers, &text))
            }
            Err(failed) => BatchAnswer::Whole(failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mailchimp_subscriber_hash_is_the_md5_of_the_lower_cased_address() {
        // Mailchimp's documented example: "Urist.McVankab@freddiesjokes.com".
        assert_eq!(
            subscriber_hash("Urist.McVankab@freddiesjokes.com"),
            subscriber_hash("urist.mcvankab@freddiesjokes.com")
        );
        assert_eq!(
            subscriber_hash("urist.mcvankab@freddiesjokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn mailchimp_400s_are_permanent_a_declined_member_is_consent_and_too_many_recent_signups_waits_an_hour()
     {
        let body = |title: &str, detail: &str| json_body(title, detail);
        let permanent = mailchimp_outcome(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body(
                "Member In Compliance State",
                "x@example.com is in a compliance state",
            ),
        );
        assert!(
            matches!(&permanent, AttemptOutcome::Declined { status: 400, state: "unsubscribed", error } if error.contains("Member In Compliance State")),
            "{permanent:?}"
        );
        // After a permanent delete (erasure), the same address signing up again: final, and
        // the person's consent says they declined (SPEC §8) instead of a retry loop.
        let forgotten = mailchimp_outcome(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body(
                "Forgotten Email Not Subscribed",
                "x@example.com was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list.",
            ),
        );
        assert!(
            matches!(&forgotten, AttemptOutcome::Declined { status: 400, state: "unsubscribed", error } if error.contains("Forgotten Email Not Subscribed")),
            "{forgotten:?}"
        );
        let recent = mailchimp_outcome(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            &body(
                "Invalid Resource",
                "x@example.com has signed up to a lot of lists very recently; we're not allowing more signups for now",
            ),
        );
        assert!(
            matches!(recent, AttemptOutcome::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(3600)),
            "{recent:?}"
        );
    }

    #[test]
    fn mailchimp_batch_member_errors_are_read_per_member_by_address_in_any_case() {
        let user = |n: u32| UserRegistered {
            user_id: Uuid::nil(),
            username: format!("user{n}"),
            email: format!("user{n}@example.com"),
            registered_at: chrono::Utc::now(),
        };
        let body = serde_json::json!({
            "new_members": [], "updated_members": [],
            "errors": [{"email_address": "USER2@example.com", "error": "USER2@example.com was permanently deleted and cannot be re-imported", "error_code": "ERROR_CONTACT_EXISTS"}],
        })
        .to_string();
        let BatchAnswer::Each(outcomes) = mailchimp_batch_outcomes(&[user(1), user(2)], &body)
        else {
            panic!("a 200 answer is per member")
        };
        assert_eq!(outcomes[0], AttemptOutcome::delivered(200));
        assert!(
            matches!(&outcomes[1], AttemptOutcome::Permanent { error, .. } if error.contains("permanently deleted")),
            "{outcomes:?}"
        );
        let unreadable = mailchimp_batch_outcomes(&[user(1)], "<html>");
        assert!(
            matches!(
                unreadable,
                BatchAnswer::Whole(AttemptOutcome::Transient { .. })
            ),
            "{unreadable:?}"
        );
    }

    fn json_body(title: &str, detail: &str) -> String {
        serde_json::json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": title, "status": 400, "detail": detail}).to_string()
    }
}
