//! Reads of users for the routes.

use super::*;

/// The user with `id`, if registered.
pub(crate) async fn find_user(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Option<RegisteredUser>, DbErr> {
    Ok(user::Entity::find_by_id(id).one(db).await?.map(Into::into))
}

/// The user registered with `email`, in any case.
pub(crate) async fn find_user_by_email(
    db: &DatabaseConnection,
    email: &str,
) -> Result<Option<RegisteredUser>, DbErr> {
    let normalized = crate::domain::normalized_email(email);
    Ok(user::Entity::find()
        .filter(user::Column::EmailNormalized.eq(normalized))
        .one(db)
        .await?
        .map(Into::into))
}
