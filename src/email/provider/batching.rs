//! Sending contacts one per request, or many per request with halving on a refusal.

use super::*;

/// A contacts API that takes one person per request.
pub(crate) trait OneAtATime {
    /// One attempt to add or update `user` at the provider.
    fn send(
        &self,
        user: &UserRegistered,
    ) -> impl std::future::Future<Output = AttemptOutcome> + Send;

    /// One attempt to remove an erased user from the provider (SPEC §6); "not found" there is
    /// already gone: delivered, unless `earlier`, the last upsert of the address, may still be
    /// landing at a provider that imports asynchronously.
    fn erase(
        &self,
        user: &UserDeleted,
        earlier: Option<&EarlierUpsert>,
    ) -> impl std::future::Future<Output = AttemptOutcome> + Send;
}

/// Each row's payload read as the user it announces, sent one request each.
pub(super) async fn contacts_one_by_one<A: OneAtATime + Sync>(
    api: &A,
    rows: &[Delivery],
    gate: &Gate<'_>,
) -> Vec<AttemptOutcome> {
    one_by_one(rows, gate, |row, _trace| async move {
        match event(row) {
            Ok(Event::UserRegistered(user)) => api.send(&user).await,
            Ok(Event::UserDeleted(user)) => api.erase(&user, row.upsert.as_ref()).await,
            Ok(Event::UserConsentChanged(_)) => no_call(),
            Err(unreadable) => unreadable,
        }
    })
    .await
}

/// A `user.consent_changed` row, which [`Provider`] keeps from contacts APIs: not sent.
fn no_call() -> AttemptOutcome {
    AttemptOutcome::Suppressed {
        reason: "a contacts API has no call for user.consent_changed".into(),
    }
}

/// What the answer to a batch request says.
#[derive(Debug)]
pub(crate) enum BatchAnswer {
    /// One outcome per member, in order (a 200 listing per-member errors).
    Each(Vec<AttemptOutcome>),
    /// The request as a whole: the same outcome for every member.
    Whole(AttemptOutcome),
}

/// A contacts API that also takes many people in one request.
pub(crate) trait InBatches: OneAtATime {
    /// One request adding or updating every one of `users` (at least two).
    fn send_batch(
        &self,
        users: &[UserRegistered],
    ) -> impl std::future::Future<Output = BatchAnswer> + Send;
}

/// `rows` in one batch request; a batch refused as a whole with a permanent answer (a 400 or
/// 413 about some member, most likely) is split in halves and each half sent again, down to
/// single rows, so that only the rows the provider refuses go dead. Any other answer to the
/// whole batch (delivered, transient) is every row's.
pub(super) async fn bisecting<A: InBatches + Sync>(
    api: &A,
    rows: &[Delivery],
    gate: &Gate<'_>,
) -> Vec<AttemptOutcome> {
    let mut outcomes: Vec<Option<AttemptOutcome>> = vec![None; rows.len()];
    // The readable rows: their users, and where each one's outcome goes.
    let mut users = Vec::with_capacity(rows.len());
    let mut places = Vec::with_capacity(rows.len());
    // Erasures go one request each (no provider batches them), after the batch.
    let mut erasures = Vec::new();
    for (place, row) in rows.iter().enumerate() {
        match event(row) {
            Ok(Event::UserRegistered(user)) => {
                users.push(user);
                places.push(place);
            }
            Ok(Event::UserDeleted(user)) => erasures.push((place, user, row.upsert.as_ref())),
            Ok(Event::UserConsentChanged(_)) => outcomes[place] = Some(no_call()),
            Err(unreadable) => outcomes[place] = Some(unreadable),
        }
    }
    // Parts of `users` still to send, the next one last.
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    parts.push(0..users.len());
    while let Some(part) = parts.pop() {
        let members = &users[part.clone()];
        if members.is_empty() {
            continue;
        }
        // Held until the answer is in: the request's place in the provider's budget.
        let permit = gate.admit().await;
        let answer = match (members, &permit) {
            (_, Err(retry_after)) => BatchAnswer::Whole(AttemptOutcome::NotSent {
                retry_after: *retry_after,
            }),
            ([one], Ok(_)) => BatchAnswer::Whole(api.send(one).await),
            (_, Ok(_)) => api.send_batch(members).await,
        };
        drop(permit);
        match answer {
            BatchAnswer::Each(each) if each.len() == members.len() => {
                gate.observe(&each).await;
                for (place, outcome) in places[part].iter().zip(each) {
                    outcomes[*place] = Some(outcome);
                }
            }
            BatchAnswer::Each(each) => {
                let whole = AttemptOutcome::Transient {
                    status: None,
                    error: format!(
                        "the provider answered for {} of the {} members sent",
                        each.len(),
                        members.len()
                    ),
                    retry_after: None,
                };
                for place in &places[part] {
                    outcomes[*place] = Some(whole.clone());
                }
            }
            BatchAnswer::Whole(AttemptOutcome::Permanent { .. }) if members.len() > 1 => {
                let middle = part.start + members.len() / 2;
                parts.push(middle..part.end);
                parts.push(part.start..middle);
            }
            BatchAnswer::Whole(whole) => {
                gate.observe([&whole]).await;
                for place in &places[part] {
                    outcomes[*place] = Some(whole.clone());
                }
            }
        }
    }
    for (place, user, earlier) in erasures {
        let outcome = match gate.admit().await {
            Ok(_permit) => {
                let outcome = api.erase(&user, earlier).await;
                gate.observe([&outcome]).await;
                outcome
            }
            Err(retry_after) => AttemptOutcome::NotSent { retry_after },
        };
        outcomes[place] = Some(outcome);
    }
    outcomes
        .into_iter()
        .map(|outcome| outcome.unwrap_or_else(AttemptOutcome::no_outcome))
        .collect()
}
