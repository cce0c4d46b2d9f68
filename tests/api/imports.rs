//! Providers that import asynchronously (SPEC §6), against fakes that behave as their API
//! references say: SendGrid answers an upsert 202 with a `job_id` and makes the contact
//! searchable only once the job has finished; Mailgun's list shows a new member only after a
//! while. An erasure must remove the person even when it comes before the import has landed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use entity::email_outbox::{EventType, Status};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::erasure::register;
use crate::helpers::{TestApp, spawn_app_with, use_provider_kind, wait_until};

const KEY: &str = "import-test-key";
use crate::helpers::PATIENCE;

/// What a fake provider holds: contacts by lower-cased address, and the imports not yet
/// applied (when each lands, and the addresses it brings).
#[derive(Default)]
struct Contacts {
    present: HashMap<String, String>,
    imports: Vec<Import>,
    next_id: u32,
}

struct Import {
    job: String,
    lands_at: Instant,
    emails: Vec<String>,
    landed: bool,
}

impl Contacts {
    /// Applies every import whose time has come.
    fn settle(&mut self) {
        let now = Instant::now();
        let mut landing = Vec::new();
        for import in &mut self.imports {
            if !import.landed && import.lands_at <= now {
                import.landed = true;
                landing.extend(import.emails.iter().cloned());
            }
        }
        for email in landing {
            self.next_id += 1;
            let id = format!("contact-{}", self.next_id);
            self.present.entry(email).or_insert(id);
        }
    }

    /// When the last import lands (now, if none is left).
    fn last_landing(&self) -> Instant {
        self.imports
            .iter()
            .map(|i| i.lands_at)
            .max()
            .unwrap_or_else(Instant::now)
    }

    fn import(&mut self, emails: Vec<String>, takes: Duration) -> String {
        let job = format!("job-{}", self.imports.len() + 1);
        self.imports.push(Import {
            job: job.clone(),
            lands_at: Instant::now() + takes,
            emails,
            landed: false,
        });
        job
    }
}

/// SendGrid's marketing contacts API as its reference describes it: `PUT` answers 202 with a
/// `job_id` and the contacts appear `takes` later; `GET imports/{id}` says `pending` until
/// then and `completed` after; `search/emails` takes addresses of at most 100 characters (400
/// otherwise), `search/identifiers/email` any; both answer 404 when nothing matches; `DELETE
/// ?ids=` removes the contacts and answers 202 with a job. Every call needs the bearer key.
struct SendgridFake {
    contacts: Arc<Mutex<Contacts>>,
    takes: Duration,
}

fn errors(message: &str) -> Value {
    json!({"errors": [{"field": null, "message": message}]})
}

fn search_answer(contacts: &Contacts, emails: &[String]) -> ResponseTemplate {
    let mut result = serde_json::Map::new();
    for email in emails {
        if let Some(id) = contacts.present.get(&email.to_lowercase()) {
            result.insert(
                email.to_lowercase(),
                json!({"contact": {"id": id, "email": email.to_lowercase()}}),
            );
        }
    }
    if result.is_empty() {
        ResponseTemplate::new(404).set_body_json(errors("No contacts found"))
    } else {
        ResponseTemplate::new(200).set_body_json(json!({ "result": result }))
    }
}

impl Respond for SendgridFake {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let authorized = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(format!("Bearer {KEY}").as_str());
        if !authorized {
            return ResponseTemplate::new(401).set_body_json(errors("authorization required"));
        }
        let mut contacts = self.contacts.lock().expect("not poisoned");
        contacts.settle();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let strings = |key: &str| -> Vec<String> {
            body[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let path = request.url.path();
        match (request.method.as_str(), path) {
            ("PUT", "/v3/marketing/contacts") => {
                let emails: Vec<String> = body["contacts"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c["email"].as_str().map(str::to_lowercase))
                            .collect()
                    })
                    .unwrap_or_default();
                let job = contacts.import(emails, self.takes);
                ResponseTemplate::new(202).set_body_json(json!({ "job_id": job }))
            }
            ("GET", job) if job.starts_with("/v3/marketing/contacts/imports/") => {
                let id = job.rsplit('/').next().unwrap_or_default();
                match contacts.imports.iter().find(|i| i.job == id) {
                    Some(import) => {
                        let status = if import.landed {
                            "completed"
                        } else {
                            "pending"
                        };
                        ResponseTemplate::new(200).set_body_json(
                            json!({"id": id, "status": status, "job_type": "upsert"}),
                        )
                    }
                    None => ResponseTemplate::new(404).set_body_json(errors("job not found")),
                }
            }
            ("POST", "/v3/marketing/contacts/search/emails") => {
                let emails = strings("emails");
                if emails.iter().any(|e| e.chars().count() > 100) {
                    return ResponseTemplate::new(400)
                        .set_body_json(errors("email addresses must be at most 100 characters"));
                }
                search_answer(&contacts, &emails)
            }
            ("POST", "/v3/marketing/contacts/search/identifiers/email") => {
                search_answer(&contacts, &strings("identifiers"))
            }
            ("DELETE", "/v3/marketing/contacts") => {
                let ids: Vec<String> = request
                    .url
                    .query_pairs()
                    .filter(|(k, _)| k == "ids")
                    .flat_map(|(_, v)| v.split(',').map(str::to_owned).collect::<Vec<_>>())
                    .collect();
                contacts.present.retain(|_, id| !ids.contains(id));
                ResponseTemplate::new(202).set_body_json(json!({"job_id": "delete-job"}))
            }
            _ => ResponseTemplate::new(404).set_body_json(errors("no such route")),
        }
    }
}

/// Mailgun's mailing list members API as it behaves: a member added with `upsert=yes` shows in
/// the list only `takes` later; `DELETE members/{address}` of a member not (yet) shown is 404.
struct MailgunFake {
    contacts: Arc<Mutex<Contacts>>,
    takes: Duration,
}

impl Respond for MailgunFake {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut contacts = self.contacts.lock().expect("not poisoned");
        contacts.settle();
        let prefix = "/v3/lists/news@mg.example.com/members";
        let path = request.url.path();
        match request.method.as_str() {
            "POST" if path == prefix => {
                let form: HashMap<String, String> = url::form_urlencoded::parse(&request.body)
                    .into_owned()
                    .collect();
                let address = form.get("address").cloned().unwrap_or_default();
                contacts.import(vec![address.to_lowercase()], self.takes);
                ResponseTemplate::new(200).set_body_json(
                    json!({"member": {"address": address}, "message": "Mailing list member has been created"}),
                )
            }
            "DELETE" if path.starts_with(&format!("{prefix}/")) => {
                let address = path[prefix.len() + 1..].replace("%40", "@").to_lowercase();
                if contacts.present.remove(&address).is_some() {
                    ResponseTemplate::new(200).set_body_json(json!({
                        "member": {"address": address},
                        "message": "Mailing list member has been deleted",
                    }))
                } else {
                    ResponseTemplate::new(404).set_body_json(json!({"message": "Member not found"}))
                }
            }
            _ => ResponseTemplate::new(404).set_body_json(json!({"message": "no such route"})),
        }
    }
}

async fn app_with_kind(
    kind: signup::configuration::ProviderKind,
    provider: &MockServer,
) -> TestApp {
    let base = provider.uri();
    spawn_app_with(move |s| {
        use_provider_kind(s, kind, &base, KEY);
        s.email_sync.sendgrid.list_ids = vec!["l-1".into()];
    })
    .await
}

/// Waits until every import the fake accepted has landed, then says whether it holds `email`.
async fn holds_after_every_import(contacts: &Mutex<Contacts>, email: &str) -> bool {
    let last = contacts.lock().expect("not poisoned").last_landing();
    tokio::time::sleep(last.saturating_duration_since(Instant::now())).await;
    let mut contacts = contacts.lock().expect("not poisoned");
    contacts.settle();
    contacts.present.contains_key(email)
}

/// Registers `email`, waits for its upsert to be accepted, erases the person at once (before
/// the provider's import lands), and waits for the deletion to be delivered.
async fn register_then_erase_before_the_import_lands(app: &TestApp, username: &str, email: &str) {
    let user = register(app, username, email).await;
    wait_until("the upsert is accepted", PATIENCE, || async {
        app.outbox_rows()
            .await
            .iter()
            .any(|r| r.user_id == user && r.status == Status::Delivered)
    })
    .await;
    signup::erasure::erase(&app.db, &signup::erasure::Who::Id(user), chrono::Utc::now())
        .await
        .expect("erased");
    app.email_sync.do_send(signup::actors::WakeUp);
    wait_until("the deletion is delivered", PATIENCE, || async {
        app.outbox_rows().await.iter().any(|r| {
            r.user_id == user && r.event == EventType::UserDeleted && r.status == Status::Delivered
        })
    })
    .await;
}

/// A SendGrid erasure that searched before the import had finished used to get 404, count it
/// as "already gone", and let the import create the contact afterwards: the erased person
/// stayed at SendGrid. And an address over 100 characters went to `search/emails`, which
/// refuses it: that deletion went dead.
#[actix_web::test]
async fn a_sendgrid_erasure_waits_for_the_import_and_removes_the_contact_whatever_its_length() {
    let provider = MockServer::start().await;
    let contacts = Arc::new(Mutex::new(Contacts::default()));
    let takes = Duration::from_secs(2);
    Mock::given(wiremock::matchers::any())
        .respond_with(SendgridFake {
            contacts: Arc::clone(&contacts),
            takes,
        })
        .mount(&provider)
        .await;
    let app = app_with_kind(signup::configuration::ProviderKind::Sendgrid, &provider).await;
    // 60 + 1 + 63 = 124 characters: over search/emails' 100.
    let long = format!("{}@{}.example.com", "l".repeat(60), "d".repeat(51));
    assert!(long.len() > 100);

    for (username, email) in [
        ("alice", "alice@example.com".to_owned()),
        ("longaddr", long),
    ] {
        register_then_erase_before_the_import_lands(&app, username, &email).await;
        // Whatever the fake still has to apply lands now: nothing may bring the person back.
        assert!(
            !holds_after_every_import(&contacts, &email).await,
            "{username}: SendGrid still holds the erased contact"
        );
    }
    let requests = provider.received_requests().await.expect("recorded");
    assert!(
        requests
            .iter()
            .any(|r| r.url.path().starts_with("/v3/marketing/contacts/imports/")),
        "the import job was asked about"
    );
    let deletions: Vec<_> = app
        .outbox_rows()
        .await
        .into_iter()
        .filter(|r| r.event == EventType::UserDeleted)
        .collect();
    assert_eq!(deletions.len(), 2);
    assert!(
        deletions.iter().all(|r| r.status == Status::Delivered),
        "{deletions:?}"
    );
}

/// A Mailgun erasure right after the upsert used to take the list's 404 as "already gone";
/// the member then showed up in the list and stayed. Within `import_window` of the upsert, a
/// 404 is asked again.
#[actix_web::test]
async fn a_mailgun_404_soon_after_the_upsert_is_asked_again_not_taken_as_gone() {
    let provider = MockServer::start().await;
    let contacts = Arc::new(Mutex::new(Contacts::default()));
    let takes = Duration::from_millis(1500);
    Mock::given(wiremock::matchers::any())
        .respond_with(MailgunFake {
            contacts: Arc::clone(&contacts),
            takes,
        })
        .mount(&provider)
        .await;
    let app = app_with_kind(signup::configuration::ProviderKind::Mailgun, &provider).await;

    register_then_erase_before_the_import_lands(&app, "bob", "bob@example.com").await;

    assert!(
        !holds_after_every_import(&contacts, "bob@example.com").await,
        "Mailgun's list still holds the erased member"
    );
    let deletion = app
        .outbox_rows()
        .await
        .into_iter()
        .find(|r| r.event == EventType::UserDeleted)
        .expect("the deletion");
    assert_eq!(
        deletion.last_status,
        Some(200),
        "deleted, not a 404 taken as gone"
    );
}
