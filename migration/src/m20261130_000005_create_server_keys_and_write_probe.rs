use sea_orm_migration::prelude::*;

/// `server_keys`: secrets every instance must share and that must survive restarts (the key
/// that signs CSRF tokens and the welcome cookie), generated once by the first instance.
///
/// `write_probe`: a scratch table readiness writes to (and empties again in the same
/// transaction) while registrations are failing, to tell "the disk is full" from "it is back"
/// without waiting for a person to try to register.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServerKeys::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ServerKeys::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ServerKeys::Secret).binary().not_null())
                    .col(
                        ColumnDef::new(ServerKeys::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WriteProbe::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WriteProbe::Id)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(WriteProbe::Filler).binary().not_null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WriteProbe::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ServerKeys::Table).to_owned())
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum ServerKeys {
    Table,
    Name,
    Secret,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WriteProbe {
    Table,
    Id,
    Filler,
}
