//! Conversations: a user's chats and onboarding sessions.

use serde::Serialize;
use sqlx::{AnyConnection, Row, any::AnyRow};
use uuid::Uuid;

use super::{Backend, Query, Store, StoreError, now, parse_enum, parse_id, query};
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
    /// Its title: the one given when it was created or renamed, else one
    /// made from its first message (see `text::title_from`).
    pub title: Option<String>,
    /// When it was created (UTC, RFC 3339).
    pub created_at: String,
    /// Its last activity: when a message was last sent in it (UTC, RFC
    /// 3339); the list is ordered by it.
    pub updated_at: String,
    /// The start of its last user or assistant message with text, up to 120
    /// characters (as listed and read; null when it has none, and in the
    /// answers to a run's start).
    pub preview: Option<String>,
    /// The agent that answers it, by name (see `GET /v1/agents`).
    pub agent: String,
    #[serde(skip)]
    /// The owner.
    pub user_id: Uuid,
}

/// Longest `preview`, in characters.
const PREVIEW_CHARS: usize = 120;

/// The columns of a conversation of `conversations c` with its last
/// message's text as `last_text`: a literal, for `concat!`.
macro_rules! with_last_text {
    () => {
        "c.id, c.user_id, c.kind, c.agent, c.title, c.created_at, c.updated_at, \
         (SELECT m.content FROM messages m WHERE m.conversation_id = c.id \
         AND m.role IN ('user', 'assistant') AND m.content <> '' ORDER BY m.id DESC LIMIT 1) \
         AS last_text"
    };
}

/// Where a page of the list starts: after the conversation with this last
/// activity and ID (the previous page's last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    /// Its `updated_at`.
    pub updated_at: String,
    /// Its ID.
    pub id: Uuid,
}

fn with_preview(row: &AnyRow) -> Result<Conversation, StoreError> {
    let last: Option<String> = row.try_get("last_text")?;
    Ok(Conversation {
        preview: last.map(|text| crate::text::preview(&text, PREVIEW_CHARS)),
        ..from_row(row)?
    })
}

fn from_row(row: &AnyRow) -> Result<Conversation, StoreError> {
    Ok(Conversation {
        preview: None,
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
        let row = query(concat!(
            "SELECT ",
            with_last_text!(),
            " FROM conversations c WHERE c.id = $1 AND c.user_id = $2"
        ))
        .bind(id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut *self.acquire().await?)
        .await?;
        row.as_ref().map(with_preview).transpose()
    }

    /// Renames the user's conversation (`None` clears its title); the
    /// conversation as it is then, or None when it is not the user's.
    #[tracing::instrument(skip_all, fields(conversation_id = %id))]
    pub async fn rename_conversation(
        &self,
        user_id: Uuid,
        id: Uuid,
        title: Option<&str>,
    ) -> Result<Option<Conversation>, StoreError> {
        let renamed = {
            let _turn = self.write_turn(false).await;
            let mut conn = self.acquire().await?;
            let done = query("UPDATE conversations SET title = $3 WHERE id = $1 AND user_id = $2")
                .bind(id.to_string())
                .bind(user_id.to_string())
                .bind(title)
                .execute(&mut *conn)
                .await?;
            conn.commit().await?;
            done.rows_affected() > 0
        };
        if !renamed {
            return Ok(None);
        }
        self.conversation(user_id, id).await
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

    /// The user's conversations, latest activity first, at most `limit`,
    /// after `cursor` (keyset paging on `(updated_at, id)`: a conversation
    /// that moves up while a client pages neither repeats nor hides
    /// another), whose title contains `search` (any case), each with its
    /// preview.
    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub async fn list_conversations(
        &self,
        user_id: Uuid,
        cursor: Option<&ListCursor>,
        search: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Conversation>, StoreError> {
        // Timestamps sort as text; "~" sorts after every one and every ID.
        let (updated_at, id) = cursor.map_or_else(
            || ("~".to_owned(), "~".to_owned()),
            |c| (c.updated_at.clone(), c.id.to_string()),
        );
        // `LIKE` with the search's own % and _ taken literally.
        let pattern = search.map(|search| {
            let escaped = search
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let rows = query(concat!(
            "SELECT ",
            with_last_text!(),
            " FROM conversations c WHERE c.user_id = $1 \
             AND (c.updated_at < $2 OR (c.updated_at = $2 AND c.id < $3)) \
             AND ($4 IS NULL OR LOWER(c.title) LIKE $4 ESCAPE '\\') \
             ORDER BY c.updated_at DESC, c.id DESC LIMIT $5"
        ))
        .bind(user_id.to_string())
        .bind(updated_at)
        .bind(id)
        .bind(pattern)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.acquire().await?)
        .await?;
        rows.iter().map(with_preview).collect()
    }

    /// Deletes the conversation with its messages, runs and events, unless
    /// one of its runs is active (queued, running or waiting for approval).
    ///
    /// The check and the deletion are one transaction, so no run can start
    /// in between: on SQLite the write turn orders them; on PostgreSQL the
    /// conversation's row is locked first, and a run start in it takes a
    /// key-share lock on that row (its foreign key) until it commits, so a
    /// start under way is waited for and seen, and later ones wait for the
    /// deletion (then find no conversation).
    #[tracing::instrument(skip_all, fields(conversation_id = %id))]
    pub async fn delete_conversation(
        &self,
        user_id: Uuid,
        id: Uuid,
    ) -> Result<Deletion, StoreError> {
        let mut tx = self.begin().await?;
        let find = match self.backend {
            Backend::Sqlite => "SELECT id FROM conversations WHERE id = $1 AND user_id = $2",
            Backend::Postgres => {
                "SELECT id FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE"
            }
        };
        let found = query(find)
            .bind(id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(Deletion::NotFound);
        }
        let active = query(
            "SELECT id FROM runs WHERE conversation_id = $1 \
             AND status IN ('queued', 'running', 'requires_action') LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        if active.is_some() {
            return Ok(Deletion::ActiveRun);
        }
        // The event log has no foreign key to cascade through (migration
        // 0011): its rows go first, in the same transaction.
        query(
            "DELETE FROM run_events WHERE run_key IN \
             (SELECT event_key FROM runs WHERE conversation_id = $1)",
        )
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        query("DELETE FROM conversations WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Deletion::Deleted)
    }
}

/// What [`Store::delete_conversation`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The conversation and everything in it are gone.
    Deleted,
    /// No such conversation of the user's.
    NotFound,
    /// One of its runs is active: nothing was deleted.
    ActiveRun,
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
    title: Option<&str>,
) -> Result<Option<Conversation>, StoreError> {
    let conversation = new_conversation(user_id, kind, agent, title);
    let inserted = insert(conn, &conversation, Some(chat_id)).await?;
    Ok(inserted.then_some(conversation))
}

/// A new conversation of the user's, not stored yet.
pub(crate) fn new_conversation(
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
        preview: None,
    }
}

/// Stores `conversation` under `chat_id`; false when the user has one under
/// that chat ID already.
async fn insert(
    conn: &mut AnyConnection,
    conversation: &Conversation,
    chat_id: Option<&str>,
) -> Result<bool, StoreError> {
    let inserted = bind_conversation(query(INSERT_CONVERSATION), conversation, chat_id)
        .execute(&mut *conn)
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Stores a conversation; values bound by [`bind_conversation`].
pub(super) const INSERT_CONVERSATION: &str = "INSERT INTO conversations \
     (id, user_id, kind, agent, title, chat_id, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";

/// Binds the values of [`INSERT_CONVERSATION`].
pub(super) fn bind_conversation<'q>(
    query: Query<'q>,
    conversation: &'q Conversation,
    chat_id: Option<&'q str>,
) -> Query<'q> {
    query
        .bind(conversation.id.to_string())
        .bind(conversation.user_id.to_string())
        .bind(conversation.kind.as_str())
        .bind(&conversation.agent)
        .bind(conversation.title.as_deref())
        .bind(chat_id)
        .bind(&conversation.created_at)
        .bind(&conversation.updated_at)
}

/// Locks and reads, inside the caller's transaction, the user's
/// conversation that `chat` names: the one with that ID, else the one an AI
/// SDK client created under that chat ID. Its last activity is now, and
/// `title` its title if it has none.
pub(crate) async fn chat_for_update(
    conn: &mut AnyConnection,
    user_id: Uuid,
    chat: &str,
    title: Option<&str>,
) -> Result<Option<Conversation>, StoreError> {
    if let Ok(id) = Uuid::parse_str(chat)
        && let Some(conversation) = conversation_for_update(conn, user_id, id, title).await?
    {
        return Ok(Some(conversation));
    }
    lock_where(conn, "chat_id", chat, user_id, title).await
}

/// Locks and reads the user's conversation inside the caller's transaction.
/// Its last activity is now, and `title` its title if it has none.
pub(crate) async fn conversation_for_update(
    conn: &mut AnyConnection,
    user_id: Uuid,
    id: Uuid,
    title: Option<&str>,
) -> Result<Option<Conversation>, StoreError> {
    lock_where(conn, "id", &id.to_string(), user_id, title).await
}

/// The user's conversation whose `column` (`id` or `chat_id`) is `value`,
/// locked and read inside the caller's transaction, its activity now and
/// `title` its title if it has none.
async fn lock_where(
    conn: &mut AnyConnection,
    column: &'static str,
    value: &str,
    user_id: Uuid,
    title: Option<&str>,
) -> Result<Option<Conversation>, StoreError> {
    // Touching updated_at takes the row lock on PostgreSQL (SQLite already
    // holds the write lock from BEGIN IMMEDIATE), so concurrent run starts on
    // one conversation are serialised.
    let sql = format!(
        "UPDATE conversations SET updated_at = $3, title = COALESCE(title, $4) \
         WHERE {column} = $1 AND user_id = $2 \
         RETURNING id, user_id, kind, agent, title, created_at, updated_at"
    );
    let row = query(&sql)
        .bind(value)
        .bind(user_id.to_string())
        .bind(now())
        .bind(title)
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
