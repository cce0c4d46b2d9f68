use sea_orm_migration::prelude::*;

/// One provider budget for all instances (SPEC §3.6), used on PostgreSQL (SQLite is one
/// process, whose budget stays in memory):
/// - `provider_budget`: per provider kind, the pause every instance honours after a 429 with a
///   reset (`paused_until`), and the shared requests-per-second allowance as a GCRA's
///   theoretical arrival time (`tat`).
/// - `provider_slots`: `max_in_flight` concurrency slots per kind, each leased by one instance
///   (`holder`) until `lease_until`; a dead instance's slots come back when that passes.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProviderBudget::Table)
                    .col(
                        ColumnDef::new(ProviderBudget::Kind)
                            .string_len(16)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ProviderBudget::PausedUntil).timestamp_with_time_zone())
                    .col(ColumnDef::new(ProviderBudget::Tat).timestamp_with_time_zone())
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProviderSlots::Table)
                    .col(
                        ColumnDef::new(ProviderSlots::Kind)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(ProviderSlots::Slot).integer().not_null())
                    .col(ColumnDef::new(ProviderSlots::Holder).uuid())
                    .col(ColumnDef::new(ProviderSlots::LeaseUntil).timestamp_with_time_zone())
                    .primary_key(
                        Index::create()
                            .col(ProviderSlots::Kind)
                            .col(ProviderSlots::Slot),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProviderSlots::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ProviderBudget::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ProviderBudget {
    Table,
    Kind,
    PausedUntil,
    Tat,
}

#[derive(DeriveIden)]
enum ProviderSlots {
    Table,
    Kind,
    Slot,
    Holder,
    LeaseUntil,
}
