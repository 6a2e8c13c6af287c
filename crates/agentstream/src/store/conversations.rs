//! Conversations: a user's chats and onboarding sessions.

use serde::Serialize;
use sqlx::{AnyConnection, Row, any::AnyRow};
use uuid::Uuid;

use super::{Store, StoreError, now, parse_enum, parse_id, query};
use crate::text::text_enum;

text_enum! {
    /// What a conversation is for; it picks the agent that answers.
    // The variants' wire names are their lowercase names (see `as_str`).
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    pub enum ConversationKind {
        /// General chat with the chat agent.
        Chat = "chat",
        /// The onboarding flow that fills the user's profile.
        Onboarding = "onboarding",
    }
}

impl ConversationKind {
    /// The kind of a conversation with `agent`: the built-in onboarding
    /// agent's are `onboarding`, every other agent's `chat`.
    pub fn of_agent(agent: &str) -> ConversationKind {
        if agent == ConversationKind::Onboarding.as_str() {
            ConversationKind::Onboarding
        } else {
            ConversationKind::Chat
        }
    }
}

/// A conversation as stored and as returned by the API.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Conversation {
    /// The conversation's ID.
    pub id: Uuid,
    /// `onboarding` for the onboarding agent's conversations (the seed's
    /// routes pick by it), `chat` for every other agent's.
    pub kind: ConversationKind,
    /// An optional title given by the client.
    pub title: Option<String>,
    /// When it was created (UTC, RFC 3339).
    pub created_at: String,
    /// When a message was last added (UTC, RFC 3339).
    pub updated_at: String,
    /// The agent that answers it, by name (see `GET /v1/agents`).
    pub agent: String,
    #[serde(skip)]
    /// The owner.
    pub user_id: Uuid,
}

fn from_row(row: &AnyRow) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        id: parse_id(row.try_get("id")?)?,
        user_id: parse_id(row.try_get("user_id")?)?,
        kind: parse_enum("kind", row.try_get("kind")?)?,
        agent: row.try_get("agent")?,
        title: row.try_get("title")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// Creates a conversation owned by `user_id`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn create_conversation(
        &self,
        user_id: Uuid,
        kind: ConversationKind,
        agent: &str,
        title: Option<&str>,
    ) -> Result<Conversation, StoreError> {
        let store = self.clone();
        let title = title.map(str::to_owned);
        let agent = agent.to_owned();
        // One statement: no transaction around it, but SQLite's write turn.
        self.on_db(async move {
            let _turn = store.write_turn(false).await;
            let mut conn = store.acquire().await?;
            let conversation =
                insert_conversation(&mut conn, user_id, kind, &agent, title.as_deref()).await?;
            conn.commit().await?;
            Ok(conversation)
        })
        .await
    }

    /// The conversation with this ID if `user_id` owns it.
    #[tracing::instrument(skip_all, fields(conversation_id = %id))]
    pub async fn conversation(
        &self,
        user_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Conversation>, StoreError> {
        let row = query(
            "SELECT id, user_id, kind, agent, title, created_at, updated_at \
             FROM conversations WHERE id = $1 AND user_id = $2",
        )
        .bind(id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The user's conversation that `chat` names: the one with that ID, else
    /// the one an AI SDK client created under that chat ID.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn chat_conversation(
        &self,
        user_id: Uuid,
        chat: &str,
    ) -> Result<Option<Conversation>, StoreError> {
        if let Ok(id) = Uuid::parse_str(chat)
            && let Some(conversation) = self.conversation(user_id, id).await?
        {
            return Ok(Some(conversation));
        }
        let row = query(
            "SELECT id, user_id, kind, agent, title, created_at, updated_at \
             FROM conversations WHERE chat_id = $1 AND user_id = $2",
        )
        .bind(chat)
        .bind(user_id.to_string())
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// The user's conversations, newest first, at most `limit`, older than `before`.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn list_conversations(
        &self,
        user_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Conversation>, StoreError> {
        // UUID v7 text sorts by creation time; "~" sorts after every ID.
        let before = before.map_or_else(|| "~".to_owned(), |id| id.to_string());
        let rows = query(
            "SELECT id, user_id, kind, agent, title, created_at, updated_at FROM conversations \
             WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(user_id.to_string())
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes the conversation with its messages, runs and events. False if
    /// it does not exist or is not the user's.
    #[tracing::instrument(skip_all, fields(conversation_id = %id))]
    pub async fn delete_conversation(&self, user_id: Uuid, id: Uuid) -> Result<bool, StoreError> {
        let _turn = self.write_turn(false).await;
        let mut conn = self.acquire().await?;
        let done = query("DELETE FROM conversations WHERE id = $1 AND user_id = $2")
            .bind(id.to_string())
            .bind(user_id.to_string())
            .execute(&mut *conn)
            .await?;
        conn.commit().await?;
        Ok(done.rows_affected() > 0)
    }
}

/// Inserts a conversation inside the caller's transaction.
pub(crate) async fn insert_conversation(
    conn: &mut AnyConnection,
    user_id: Uuid,
    kind: ConversationKind,
    agent: &str,
    title: Option<&str>,
) -> Result<Conversation, StoreError> {
    let conversation = new_conversation(user_id, kind, agent, title);
    // A new UUID v7 and no chat ID: nothing it could conflict with.
    insert(conn, &conversation, None).await?;
    Ok(conversation)
}

/// Inserts a conversation of the user's under an AI SDK client's chat ID,
/// inside the caller's transaction; None when the user has one under that
/// chat ID already (made by a concurrent request).
pub(crate) async fn insert_chat_conversation(
    conn: &mut AnyConnection,
    user_id: Uuid,
    kind: ConversationKind,
    agent: &str,
    chat_id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let conversation = new_conversation(user_id, kind, agent, None);
    let inserted = insert(conn, &conversation, Some(chat_id)).await?;
    Ok(inserted.then_some(conversation))
}

fn new_conversation(
    user_id: Uuid,
    kind: ConversationKind,
    agent: &str,
    title: Option<&str>,
) -> Conversation {
    let at = now();
    Conversation {
        id: Uuid::now_v7(),
        user_id,
        kind,
        agent: agent.to_owned(),
        title: title.map(str::to_owned),
        created_at: at.clone(),
        updated_at: at,
    }
}

/// Stores `conversation` under `chat_id`; false when the user has one under
/// that chat ID already.
async fn insert(
    conn: &mut AnyConnection,
    conversation: &Conversation,
    chat_id: Option<&str>,
) -> Result<bool, StoreError> {
    let inserted = query(
        "INSERT INTO conversations \
         (id, user_id, kind, agent, title, chat_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(conversation.id.to_string())
    .bind(conversation.user_id.to_string())
    .bind(conversation.kind.as_str())
    .bind(&conversation.agent)
    .bind(conversation.title.clone())
    .bind(chat_id)
    .bind(&conversation.created_at)
    .bind(&conversation.updated_at)
    .execute(&mut *conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Locks and reads, inside the caller's transaction, the user's
/// conversation that `chat` names: the one with that ID, else the one an AI
/// SDK client created under that chat ID.
pub(crate) async fn chat_for_update(
    conn: &mut AnyConnection,
    user_id: Uuid,
    chat: &str,
) -> Result<Option<Conversation>, StoreError> {
    if let Ok(id) = Uuid::parse_str(chat)
        && let Some(conversation) = conversation_for_update(conn, user_id, id).await?
    {
        return Ok(Some(conversation));
    }
    lock_where(conn, "chat_id", chat, user_id).await
}

/// Locks and reads the user's conversation inside the caller's transaction.
pub(crate) async fn conversation_for_update(
    conn: &mut AnyConnection,
    user_id: Uuid,
    id: Uuid,
) -> Result<Option<Conversation>, StoreError> {
    lock_where(conn, "id", &id.to_string(), user_id).await
}

/// The user's conversation whose `column` (`id` or `chat_id`) is `value`,
/// locked and read inside the caller's transaction.
async fn lock_where(
    conn: &mut AnyConnection,
    column: &'static str,
    value: &str,
    user_id: Uuid,
) -> Result<Option<Conversation>, StoreError> {
    // Touching updated_at takes the row lock on PostgreSQL (SQLite already
    // holds the write lock from BEGIN IMMEDIATE), so concurrent run starts on
    // one conversation are serialised.
    let sql = format!(
        "UPDATE conversations SET updated_at = $3 WHERE {column} = $1 AND user_id = $2 \
         RETURNING id, user_id, kind, agent, title, created_at, updated_at"
    );
    let row = query(&sql)
        .bind(value)
        .bind(user_id.to_string())
        .bind(now())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for kind in [ConversationKind::Chat, ConversationKind::Onboarding] {
            assert_eq!(kind.as_str().parse::<ConversationKind>(), Ok(kind));
        }
        assert!("other".parse::<ConversationKind>().is_err());
    }
}
