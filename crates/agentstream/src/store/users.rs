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
        query(
            "INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(name)
        .bind(now())
        .execute(&mut *self.acquire().await?)
        .await?;
        drop(turn);
        let row = query("SELECT id, name FROM users WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *self.acquire().await?)
            .await?;
        Ok(User {
            id: parse_id(row.try_get("id")?)?,
            name: row.try_get("name")?,
        })
    }
}
