use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};

/// Erasure and per-user order (SPEC §6):
/// - `event`: which event a row carries (`user.registered`, `user.deleted`); existing rows are
///   registrations.
/// - `seq`: the row's place among its user's rows (1, 2, …): a row is claimed only once every
///   earlier row of its user is settled, so a deletion never overtakes its registration. Time
///   cannot order them: rows written in one instant tie.
/// - no foreign key to `users` any more: erasing a user deletes the user row, while its outbox
///   rows (the `user.deleted` announcement above all) must stay. SQLite cannot drop a
///   constraint, so there the table is rebuilt, rows and indexes included.
#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE: &[&str] = &[
    r#"CREATE TABLE "email_outbox_new" ( "id" uuid_text NOT NULL PRIMARY KEY, "user_id" uuid_text NOT NULL, "payload" text NOT NULL, "status" varchar(16) NOT NULL, "attempts" integer NOT NULL DEFAULT 0, "next_attempt_at" timestamp_with_timezone_text NOT NULL, "locked_until" timestamp_with_timezone_text, "last_error" text, "last_status" integer, "created_at" timestamp_with_timezone_text NOT NULL, "delivered_at" timestamp_with_timezone_text, "retry_from" timestamp_with_timezone_text, "event" varchar(32) NOT NULL DEFAULT 'user.registered', "seq" integer NOT NULL DEFAULT 1 )"#,
    r#"INSERT INTO "email_outbox_new" ("id", "user_id", "payload", "status", "attempts", "next_attempt_at", "locked_until", "last_error", "last_status", "created_at", "delivered_at", "retry_from") SELECT "id", "user_id", "payload", "status", "attempts", "next_attempt_at", "locked_until", "last_error", "last_status", "created_at", "delivered_at", "retry_from" FROM "email_outbox""#,
    r#"DROP TABLE "email_outbox""#,
    r#"ALTER TABLE "email_outbox_new" RENAME TO "email_outbox""#,
    r#"CREATE INDEX "email_outbox_status_next_attempt_at_idx" ON "email_outbox" ("status", "next_attempt_at")"#,
    r#"CREATE UNIQUE INDEX "email_outbox_user_id_seq_idx" ON "email_outbox" ("user_id", "seq")"#,
];

const POSTGRES: &[&str] = &[
    r#"ALTER TABLE "email_outbox" DROP CONSTRAINT IF EXISTS "email_outbox_user_id_fkey""#,
    r#"ALTER TABLE "email_outbox" ADD COLUMN "event" varchar(32) NOT NULL DEFAULT 'user.registered', ADD COLUMN "seq" integer NOT NULL DEFAULT 1"#,
    r#"CREATE UNIQUE INDEX "email_outbox_user_id_seq_idx" ON "email_outbox" ("user_id", "seq")"#,
    r#"DROP INDEX IF EXISTS "email_outbox_user_id_idx""#,
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

    async fn down(&self, _: &SchemaManager) -> Result<(), DbErr> {
        // Putting the foreign key back would delete the announcements of erased users.
        Err(DbErr::Migration(
            "m20261130_000006 cannot be reverted: erased users' outbox rows have no user row"
                .into(),
        ))
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
