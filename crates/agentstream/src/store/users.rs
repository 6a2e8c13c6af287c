//! Users: who owns conversations, runs and profiles.

use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

use super::{Store, StoreError, now, parse_id, query};

/// A user of the server.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    /// The user's ID.
    pub id: Uuid,
    /// The user's unique name.
    pub name: String,
}

impl Store {
    /// Returns the user with this name, creating it if it does not exist.
    #[tracing::instrument(skip_all)]
    pub async fn ensure_user(&self, name: &str) -> Result<User, StoreError> {
        let turn = self.write_turn(false).await;
        let mut conn = self.acquire().await?;
        query(
            "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(name)
        .bind(now())
        .execute(&mut *conn)
        .await?;
        conn.commit().await?;
        drop(turn);
        self.user_named(name).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("the user {name:?} is gone right after its insert"))
        })
    }

    /// The user with this name, if it exists (a read only, no write turn).
    #[tracing::instrument(skip_all)]
    pub async fn user_named(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row = query("SELECT id, name FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.acquire().await?)
            .await?;
        row.map(|row| {
            Ok(User {
                id: parse_id(row.try_get("id")?)?,
                name: row.try_get("name")?,
            })
        })
        .transpose()
    }
}
