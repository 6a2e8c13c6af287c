//! API keys: created once and shown once; only their SHA-256 is stored.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Row, any::AnyRow};
use uuid::Uuid;

use super::{Store, StoreError, User, now, parse_id, query};

/// Characters of a key kept in clear, to tell keys apart in listings.
const PREFIX_CHARS: usize = 12;

/// A stored key, without the key.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    /// The key's ID.
    pub id: Uuid,
    /// The user the key acts as.
    pub user: String,
    /// The key's first characters.
    pub prefix: String,
    /// When it was created (UTC, RFC 3339).
    pub created_at: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
}

/// A key just created: the only time the key itself is known.
#[derive(Debug)]
pub struct NewKey {
    /// The key: `ask_` and 64 hex digits (256 random bits).
    pub key: String,
    /// What is stored about it.
    pub record: ApiKey,
    /// No other key was active when it was created: it turned keys on, and
    /// requests without a key stop acting as the local user.
    pub first: bool,
}

/// The stored form of a key. Keys are 256 random bits, so a plain SHA-256
/// is enough: there is nothing to brute-force that a slow hash would slow.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn from_row(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: parse_id(row.try_get("id")?)?,
        user: row.try_get("name")?,
        prefix: row.try_get("prefix")?,
        created_at: row.try_get("created_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Creates a key for the user with this name (creating the user too).
    #[tracing::instrument(skip_all)]
    pub async fn create_api_key(&self, user_name: &str) -> Result<NewKey, StoreError> {
        let user = self.ensure_user(user_name).await?;
        let mut random = [0u8; 32];
        getrandom::fill(&mut random)
            .map_err(|e| StoreError::Corrupt(format!("no randomness for a key: {e}")))?;
        let key: String = std::iter::once("ask_".to_owned())
            .chain(random.iter().map(|b| format!("{b:02x}")))
            .collect();
        let record = ApiKey {
            id: Uuid::now_v7(),
            user: user.name,
            prefix: key[..PREFIX_CHARS].to_owned(),
            created_at: now(),
            revoked_at: None,
        };
        let mut tx = self.begin().await?;
        // In the insert's transaction, so two keys created at once cannot
        // both miss each other on SQLite (its write transactions take turns);
        // on PostgreSQL both may say first, which only repeats a notice.
        let active: i64 = query("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        query(
            "INSERT INTO api_keys (id, user_id, prefix, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(record.id.to_string())
        .bind(user.id.to_string())
        .bind(&record.prefix)
        .bind(hash_key(&key))
        .bind(&record.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(NewKey {
            key,
            record,
            first: active == 0,
        })
    }

    /// Every key, oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = query(
            "SELECT k.id, u.name, k.prefix, k.created_at, k.revoked_at \
             FROM api_keys k JOIN users u ON u.id = k.user_id ORDER BY k.id",
        )
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes the key with this ID or prefix; false if no active key matches.
    pub async fn revoke_api_key(&self, id_or_prefix: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = query(
            "UPDATE api_keys SET revoked_at = $2 WHERE (id = $1 OR prefix = $1) AND revoked_at IS NULL",
        )
        .bind(id_or_prefix)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The user an active key acts as.
    pub async fn user_for_key(&self, key: &str) -> Result<Option<User>, StoreError> {
        let row = query(
            "SELECT u.id, u.name FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(hash_key(key))
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

    /// True when at least one key is active.
    pub async fn any_active_key(&self) -> Result<bool, StoreError> {
        let row = query("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
            .fetch_one(&mut *self.acquire().await?)
            .await?;
        let n: i64 = row.try_get("n")?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
