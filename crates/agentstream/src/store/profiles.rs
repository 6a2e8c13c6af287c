//! Profiles: what the onboarding tools learn about a user, field by field.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::{Store, StoreError, query};

/// A user's onboarding profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Profile {
    /// Field name to value.
    pub fields: BTreeMap<String, String>,
    /// When onboarding was completed (UTC, RFC 3339), if it was.
    pub completed_at: Option<String>,
}

impl Store {
    /// The user's profile.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn profile(&self, user_id: Uuid) -> Result<Profile, StoreError> {
        let mut conn = self.acquire().await?;
        profile(&mut conn, user_id).await
    }

    /// Resets the user's profile: every field, or only `field`, and with the
    /// whole profile its completion. False when there was nothing to remove.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn delete_profile(
        &self,
        user_id: Uuid,
        field: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let fields =
            query("DELETE FROM profiles WHERE user_id = $1 AND ($2 IS NULL OR field = $2)")
                .bind(user_id.to_string())
                .bind(field)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let completion = if field.is_none() {
            query(
                "UPDATE users SET onboarding_completed_at = NULL \
                 WHERE id = $1 AND onboarding_completed_at IS NOT NULL",
            )
            .bind(user_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            0
        };
        tx.commit().await?;
        Ok(fields + completion > 0)
    }
}

/// Reads the user's profile inside the caller's transaction.
async fn profile(conn: &mut AnyConnection, user_id: Uuid) -> Result<Profile, StoreError> {
    let rows = query("SELECT field, value FROM profiles WHERE user_id = $1 ORDER BY field")
        .bind(user_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let fields = rows
        .iter()
        .map(|row| Ok((row.try_get("field")?, row.try_get("value")?)))
        .collect::<Result<_, sqlx::Error>>()?;
    let completed_at = query("SELECT onboarding_completed_at FROM users WHERE id = $1")
        .bind(user_id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .map(|row| row.try_get("onboarding_completed_at"))
        .transpose()?
        .flatten();
    Ok(Profile {
        fields,
        completed_at,
    })
}
