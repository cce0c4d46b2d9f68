//! signup's schema, as sea-orm migrations applied at `signup serve` and `signup migrate`.
//! A migration's name is its module name: never rename or edit one that has shipped.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_users;
mod m20261126_000002_create_email_outbox;
mod m20261126_000003_create_idempotency_keys;
mod m20261126_000004_add_outbox_retry_from;
mod m20261130_000005_create_server_keys_and_write_probe;
mod m20261130_000006_outbox_events_in_order;
mod m20261207_000007_outbox_order_per_contact;
mod m20261207_000008_outbox_provider_imports;
mod m20261207_000009_create_console_sessions;
mod m20261207_000010_create_consent;
mod m20261207_000011_create_provider_budget;
mod m20261207_000012_outbox_traceparent;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_users::Migration),
            Box::new(m20261126_000002_create_email_outbox::Migration),
            Box::new(m20261126_000003_create_idempotency_keys::Migration),
            Box::new(m20261126_000004_add_outbox_retry_from::Migration),
            Box::new(m20261130_000005_create_server_keys_and_write_probe::Migration),
            Box::new(m20261130_000006_outbox_events_in_order::Migration),
            Box::new(m20261207_000007_outbox_order_per_contact::Migration),
            Box::new(m20261207_000008_outbox_provider_imports::Migration),
            Box::new(m20261207_000009_create_console_sessions::Migration),
            Box::new(m20261207_000010_create_consent::Migration),
            Box::new(m20261207_000011_create_provider_budget::Migration),
            Box::new(m20261207_000012_outbox_traceparent::Migration),
        ]
    }
}
