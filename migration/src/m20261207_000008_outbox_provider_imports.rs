use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

/// Asynchronous imports (SPEC §6): what a deletion must know of the upsert before it.
/// - `claimed_at`: when the row was last claimed. A request carrying it may reach the provider
///   until that claim's lease ends, answered or not (a timeout may still have been accepted).
/// - `provider_job`: the provider's import job for the row's last accepted upsert (SendGrid's
///   `job_id`), kept so that a deletion of the same contact waits until the import finished.
///
/// And the index of order per contact covers deletions only. A row waits only for an earlier
/// `user.deleted` about its contact (besides its own user's earlier rows): an address belongs
/// to one live user at a time, so every earlier row about it is an erased user's, and while
/// such a user's cancelled registration is still leased, their deletion is pending behind it.
/// Registrations, nearly every row, then write no entry in it: a keyed hash is random, and an
/// entry per registration cost a B-tree page per row and commit (the raw registration loop
/// ran at 0.6 of its speed before).
///
/// SQLite takes one column per `ALTER TABLE`, hence separate statements.
#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE_INDEX: &[&str] = &[
    r#"DROP INDEX IF EXISTS "email_outbox_contact_idx""#,
    r#"CREATE INDEX "email_outbox_deletion_contact_idx" ON "email_outbox" ("contact") WHERE "event" = 'user.deleted'"#,
];

const POSTGRES_INDEX: &[&str] = &[
    r#"DROP INDEX IF EXISTS "email_outbox_contact_written_idx""#,
    r#"CREATE INDEX "email_outbox_deletion_contact_written_idx" ON "email_outbox" ("contact", "written") WHERE "event" = 'user.deleted'"#,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EmailOutbox::Table)
                    .add_column(ColumnDef::new(EmailOutbox::ClaimedAt).timestamp_with_time_zone())
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(EmailOutbox::Table)
                    .add_column(ColumnDef::new(EmailOutbox::ProviderJob).string_len(128))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let statements = match db.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES_INDEX,
            _ => SQLITE_INDEX,
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DatabaseBackend::Postgres => &[
                r#"DROP INDEX IF EXISTS "email_outbox_deletion_contact_written_idx""#,
                r#"CREATE INDEX "email_outbox_contact_written_idx" ON "email_outbox" ("contact", "written")"#,
            ],
            _ => &[
                r#"DROP INDEX IF EXISTS "email_outbox_deletion_contact_idx""#,
                r#"CREATE INDEX "email_outbox_contact_idx" ON "email_outbox" ("contact")"#,
            ],
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        for column in [EmailOutbox::ProviderJob, EmailOutbox::ClaimedAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(EmailOutbox::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum EmailOutbox {
    Table,
    ClaimedAt,
    ProviderJob,
}
