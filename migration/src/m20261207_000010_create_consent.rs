use sea_orm_migration::prelude::*;

/// `consent`: each contact's consent state as the provider last told it (SPEC §8), keyed by the
/// contact's keyed hash (as `email_outbox.contact`), so that the one entry erasure keeps for a
/// person who unsubscribed holds no address. `provider_events`: the event ids applied or seen,
/// so that a replayed event changes nothing.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Consent::Table)
                    .col(
                        ColumnDef::new(Consent::Contact)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Consent::State).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Consent::ChangedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Consent::Source).string_len(16).not_null())
                    .col(ColumnDef::new(Consent::Kind).string_len(16))
                    .col(ColumnDef::new(Consent::EventId).string_len(128))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProviderEvents::Table)
                    .col(
                        ColumnDef::new(ProviderEvents::Kind)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ProviderEvents::EventId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ProviderEvents::Contact).string_len(64))
                    .col(
                        ColumnDef::new(ProviderEvents::ReceivedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ProviderEvents::Kind)
                            .col(ProviderEvents::EventId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("provider_events_contact_idx")
                    .table(ProviderEvents::Table)
                    .col(ProviderEvents::Contact)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("provider_events_received_at_idx")
                    .table(ProviderEvents::Table)
                    .col(ProviderEvents::ReceivedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProviderEvents::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Consent::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Consent {
    Table,
    Contact,
    State,
    ChangedAt,
    Source,
    Kind,
    EventId,
}

#[derive(DeriveIden)]
enum ProviderEvents {
    Table,
    Kind,
    EventId,
    Contact,
    ReceivedAt,
}
