use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

/// Order per provider contact (SPEC §6): rows about the same normalised email, across users,
/// reach the provider in the order they were written (an erased person's `user.deleted` before
/// the `user.registered` of whoever registers the address next).
/// - `contact`: a keyed hash of the normalised email (never the address: erasure scrubs it);
///   NULL on the rows written before (they keep the per-user order).
/// - the write order: SQLite's `rowid` (one writer at a time, so rowids grow in commit order);
///   on PostgreSQL a `written` sequence, drawn at insert: a row inserted after another's
///   transaction committed always draws a larger value.
/// - an index per backend that the claim's "earlier row about this contact" lookup walks.
#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &[&str] = &[
    r#"ALTER TABLE "email_outbox" ADD COLUMN "contact" varchar(64)"#,
    // An index on (contact) ends with the rowid: `contact = ? AND rowid < ?` is one range.
    r#"CREATE INDEX "email_outbox_contact_idx" ON "email_outbox" ("contact")"#,
];

const POSTGRES: &[&str] = &[
    r#"ALTER TABLE "email_outbox" ADD COLUMN "contact" varchar(64), ADD COLUMN "written" bigserial"#,
    r#"CREATE INDEX "email_outbox_contact_written_idx" ON "email_outbox" ("contact", "written")"#,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements = match db.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES,
            _ => SQLITE,
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
                r#"DROP INDEX IF EXISTS "email_outbox_contact_written_idx""#,
                r#"ALTER TABLE "email_outbox" DROP COLUMN "contact", DROP COLUMN "written""#,
            ],
            _ => &[
                r#"DROP INDEX IF EXISTS "email_outbox_contact_idx""#,
                r#"ALTER TABLE "email_outbox" DROP COLUMN "contact""#,
            ],
        };
        for sql in statements {
            db.execute_unprepared(sql).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
