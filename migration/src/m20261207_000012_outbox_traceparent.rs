use sea_orm_migration::prelude::*;

/// `traceparent`: the W3C trace context of the request that wrote the row (SPEC §9), e.g.
/// `00-<trace id>-<span id>-01`: each delivery attempt is a span linked to it, and the webhook
/// kind sends it on as the `traceparent` of its request (the same trace id). NULL for rows
/// written before it, or by no request.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EmailOutbox::Table)
                    .add_column(ColumnDef::new(EmailOutbox::Traceparent).string_len(55))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EmailOutbox::Table)
                    .drop_column(EmailOutbox::Traceparent)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum EmailOutbox {
    Table,
    Traceparent,
}
