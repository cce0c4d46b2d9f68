//! A person's consent as the provider states it (SPEC §8): the states and who said so. Plain
//! values, used by the consent store, the outbox's `user.consent_changed` and the views.

/// A contact's consent state (SPEC §8).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ConsentState {
    /// Double opt-in asked; not confirmed yet.
    Pending,
    /// On the list.
    Subscribed,
    /// The person left the list.
    Unsubscribed,
    /// The address bounced hard.
    Bounced,
    /// The person reported a message as spam.
    Complained,
    /// The provider removed the address (bounces, or inactive).
    Cleaned,
}

impl ConsentState {
    /// Every state, for the gauge.
    pub(crate) const ALL: [ConsentState; 6] = [
        ConsentState::Pending,
        ConsentState::Subscribed,
        ConsentState::Unsubscribed,
        ConsentState::Bounced,
        ConsentState::Complained,
        ConsentState::Cleaned,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConsentState::Pending => "pending",
            ConsentState::Subscribed => "subscribed",
            ConsentState::Unsubscribed => "unsubscribed",
            ConsentState::Bounced => "bounced",
            ConsentState::Complained => "complained",
            ConsentState::Cleaned => "cleaned",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Whether no delivery may subscribe the address again (SPEC §8, "never undone"): the
    /// person said no, or the provider did for them. Erasure keeps these, and only these.
    pub(crate) fn suppresses(self) -> bool {
        matches!(
            self,
            ConsentState::Unsubscribed | ConsentState::Complained | ConsentState::Cleaned
        )
    }
}

/// Who said it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub(crate) enum Source {
    /// An event the provider sent to one of the `/hooks/…` routes.
    #[serde(rename = "provider event")]
    ProviderEvent,
    /// The provider's answer to a delivery (Mailchimp's compliance state).
    #[serde(rename = "provider answer")]
    ProviderAnswer,
    /// An operator.
    #[serde(rename = "operator")]
    Operator,
}

impl Source {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::ProviderEvent => "provider event",
            Source::ProviderAnswer => "provider answer",
            Source::Operator => "operator",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [
            Source::ProviderEvent,
            Source::ProviderAnswer,
            Source::Operator,
        ]
        .into_iter()
        .find(|source| source.as_str() == text)
    }
}
