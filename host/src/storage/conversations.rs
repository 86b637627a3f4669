//! Conversations between a user and a bot, and their messages.
//!
//! Message text and dialog state are sealed with the owner's own key (see
//! [`Vault::seal_for_user`]), or the tenant's key for anonymous visitors.
//! The associated data binds the message's random id, so a ciphertext
//! copied into another row or conversation fails to open. Each message gets the next sequence
//! number of its conversation, so history reads back in order.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{Db, StorageError, TenantId, UserId, now_unix, uuid_column};
use crate::crypto::{ColumnRef, CryptoError, Vault};

const TABLE: &str = "messages";
const COLUMN: &str = "content_sealed";

/// Most messages returned by one history read.
pub const MAX_HISTORY_PAGE: u32 = 500;

/// Most conversations returned by one listing.
pub const MAX_CONVERSATIONS_PAGE: u32 = 100;

/// A conversation id; the WebSocket protocol calls it `session_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ConversationId(pub Uuid);

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The owner of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A signed-in account.
    Account(UserId),
    /// An anonymous visitor of a public bot.
    Visitor(Uuid),
}

/// A conversation as stored.
#[derive(Clone, Debug, Serialize)]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// The bot's name.
    pub bot: String,
    /// Its owner.
    #[serde(skip)]
    pub owner: Owner,
    /// Messages so far.
    pub message_count: i64,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Time of the last message, Unix seconds.
    pub updated_at: i64,
}

/// The author of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person chatting.
    User,
    /// The bot.
    Bot,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Bot => "bot",
        }
    }
}

/// One opened message.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    /// Position in the conversation, from 0.
    pub seq: i64,
    /// Its author.
    pub role: Role,
    /// The text.
    pub content: String,
    /// When it was stored, Unix seconds.
    pub created_at: i64,
}

const COLUMNS: &str =
    "id, tenant_id, bot_name, owner_id, visitor_id, message_count, created_at, updated_at";

fn corrupt(column: &'static str) -> StorageError {
    StorageError::CorruptRow {
        table: "conversations",
        column,
    }
}

fn from_row(row: &AnyRow) -> Result<Conversation, StorageError> {
    let owner_id: Option<String> = row.try_get("owner_id")?;
    let visitor_id: Option<String> = row.try_get("visitor_id")?;
    let parse = |text: String, column| Uuid::parse_str(&text).map_err(|_| corrupt(column));
    let owner = match (owner_id, visitor_id) {
        (Some(owner), None) => Owner::Account(UserId(parse(owner, "owner_id")?)),
        (None, Some(visitor)) => Owner::Visitor(parse(visitor, "visitor_id")?),
        _ => return Err(corrupt("owner_id")),
    };
    Ok(Conversation {
        id: ConversationId(uuid_column(row, "conversations", "id")?),
        bot: row.try_get("bot_name")?,
        owner,
        message_count: row.try_get("message_count")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Starts a conversation of `owner` with `bot`.
///
/// # Errors
///
/// Returns [`StorageError`] when the insert fails, for example because the
/// bot was deleted meanwhile.
pub async fn create(
    db: &Db,
    tenant: TenantId,
    bot: &str,
    owner: Owner,
) -> Result<Conversation, StorageError> {
    let id = ConversationId(Uuid::new_v4());
    let (owner_id, visitor_id) = match owner {
        Owner::Account(user) => (Some(user.to_string()), None),
        Owner::Visitor(visitor) => (None, Some(visitor.to_string())),
    };
    let now = now_unix();
    sqlx::query(
        "INSERT INTO conversations (id, tenant_id, bot_name, owner_id, visitor_id, \
         message_count, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
    )
    .bind(id.to_string())
    .bind(tenant.to_string())
    .bind(bot)
    .bind(owner_id)
    .bind(visitor_id)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(Conversation {
        id,
        bot: bot.to_owned(),
        owner,
        message_count: 0,
        created_at: now,
        updated_at: now,
    })
}

/// Returns a conversation of `tenant`.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or the row is corrupt.
pub async fn find(
    db: &Db,
    tenant: TenantId,
    id: ConversationId,
) -> Result<Option<Conversation>, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE tenant_id = $1 AND id = $2"
    ))
    .bind(tenant.to_string())
    .bind(id.to_string())
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Returns the conversations of an account, most recently active first.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is corrupt.
pub async fn list_for_account(
    db: &Db,
    tenant: TenantId,
    user: UserId,
) -> Result<Vec<Conversation>, StorageError> {
    let order = format!("ORDER BY updated_at DESC, id LIMIT {MAX_CONVERSATIONS_PAGE}");
    select_for_account(db, tenant, user, &order).await
}

/// Returns every conversation of an account, oldest first, for exports.
///
/// # Errors
///
/// Returns [`StorageError`] when the query fails or a row is corrupt.
pub async fn list_all_for_account(
    db: &Db,
    tenant: TenantId,
    user: UserId,
) -> Result<Vec<Conversation>, StorageError> {
    select_for_account(db, tenant, user, "ORDER BY created_at, id").await
}

/// Selects an account's conversations; `order` is a fixed SQL tail, never
/// built from input.
async fn select_for_account(
    db: &Db,
    tenant: TenantId,
    user: UserId,
    order: &str,
) -> Result<Vec<Conversation>, StorageError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM conversations WHERE tenant_id = $1 AND owner_id = $2 {order}"
    ))
    .bind(tenant.to_string())
    .bind(user.to_string())
    .fetch_all(db.pool())
    .await?;
    rows.iter().map(from_row).collect()
}

fn column(tenant: TenantId, message_id: &str) -> ColumnRef<'_> {
    ColumnRef {
        tenant,
        table: TABLE,
        row: message_id,
        column: COLUMN,
    }
}

/// Seals `plaintext` for `at` with the key of the conversation's owner.
async fn seal_owned(
    vault: &Vault,
    owner: Owner,
    at: &ColumnRef<'_>,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    match owner {
        Owner::Account(user) => vault.seal_for_user(at, user, plaintext).await,
        Owner::Visitor(_) => vault.seal(at, plaintext).await,
    }
}

/// Opens a value sealed by [`seal_owned`].
async fn open_owned(
    vault: &Vault,
    owner: Owner,
    at: &ColumnRef<'_>,
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    match owner {
        Owner::Account(user) => vault.open_for_user(at, user, sealed).await,
        Owner::Visitor(_) => vault.open(at, sealed).await,
    }
}

/// Seals and appends a message to a conversation.
///
/// # Errors
///
/// Returns [`CryptoError`] when sealing fails, or its storage variant when
/// the conversation is gone or the write fails. Nothing is written then.
pub async fn append(
    db: &Db,
    vault: &Vault,
    tenant: TenantId,
    conversation: &Conversation,
    role: Role,
    content: &str,
) -> Result<(), CryptoError> {
    let id = Uuid::new_v4().to_string();
    let at = column(tenant, &id);
    let sealed = seal_owned(vault, conversation.owner, &at, content.as_bytes()).await?;
    let conversation = conversation.id;
    let now = now_unix();
    let mut tx = db.pool().begin().await.map_err(StorageError::from)?;
    let row = sqlx::query(
        "UPDATE conversations SET message_count = message_count + 1, updated_at = $1 \
         WHERE tenant_id = $2 AND id = $3 RETURNING message_count",
    )
    .bind(now)
    .bind(tenant.to_string())
    .bind(conversation.to_string())
    .fetch_optional(&mut *tx)
    .await
    .map_err(StorageError::from)?
    .ok_or(StorageError::CorruptRow {
        table: "conversations",
        column: "id",
    })?;
    let count: i64 = row.try_get("message_count").map_err(StorageError::from)?;
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, seq, tenant_id, role, content_sealed, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(conversation.to_string())
    .bind(count - 1)
    .bind(tenant.to_string())
    .bind(role.as_str())
    .bind(sealed)
    .bind(now)
    .execute(&mut *tx)
    .await
    .map_err(StorageError::from)?;
    tx.commit().await.map_err(StorageError::from)?;
    Ok(())
}

/// Opens up to `limit` messages of a conversation with `seq` greater than
/// `after`, oldest first.
///
/// # Errors
///
/// Returns [`CryptoError`] when a message fails to open (it was tampered
/// with or moved), or its storage variant when the query fails.
pub async fn messages(
    db: &Db,
    vault: &Vault,
    tenant: TenantId,
    conversation: &Conversation,
    after: Option<i64>,
    limit: u32,
) -> Result<Vec<Message>, CryptoError> {
    let owner = conversation.owner;
    let conversation = conversation.id;
    let rows = sqlx::query(
        "SELECT id, seq, role, content_sealed, created_at FROM messages \
         WHERE tenant_id = $1 AND conversation_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
    )
    .bind(tenant.to_string())
    .bind(conversation.to_string())
    .bind(after.unwrap_or(-1))
    .bind(i64::from(limit.min(MAX_HISTORY_PAGE)))
    .fetch_all(db.pool())
    .await
    .map_err(StorageError::from)?;
    let mut messages = Vec::with_capacity(rows.len());
    for row in &rows {
        messages.push(open_message(vault, tenant, owner, row).await?);
    }
    Ok(messages)
}

async fn open_message(
    vault: &Vault,
    tenant: TenantId,
    owner: Owner,
    row: &AnyRow,
) -> Result<Message, CryptoError> {
    let id: String = row.try_get("id").map_err(StorageError::from)?;
    let role: String = row.try_get("role").map_err(StorageError::from)?;
    let sealed: Vec<u8> = row.try_get("content_sealed").map_err(StorageError::from)?;
    let role = match role.as_str() {
        "user" => Role::User,
        "bot" => Role::Bot,
        _ => {
            return Err(StorageError::CorruptRow {
                table: TABLE,
                column: "role",
            }
            .into());
        }
    };
    let plaintext = open_owned(vault, owner, &column(tenant, &id), &sealed).await?;
    let content = String::from_utf8(plaintext.to_vec()).map_err(|_| StorageError::CorruptRow {
        table: TABLE,
        column: COLUMN,
    })?;
    Ok(Message {
        seq: row.try_get("seq").map_err(StorageError::from)?,
        role,
        content,
        created_at: row.try_get("created_at").map_err(StorageError::from)?,
    })
}

fn state_column(tenant: TenantId, conversation: &str) -> ColumnRef<'_> {
    ColumnRef {
        tenant,
        table: "conversations",
        row: conversation,
        column: "state_sealed",
    }
}

/// Seals and keeps the dialog state a plugin returned for a conversation,
/// replacing the previous one.
///
/// # Errors
///
/// Returns [`CryptoError`] when sealing or the write fails.
pub async fn save_state(
    db: &Db,
    vault: &Vault,
    tenant: TenantId,
    conversation: &Conversation,
    state: &[u8],
) -> Result<(), CryptoError> {
    let id = conversation.id.to_string();
    let at = state_column(tenant, &id);
    let sealed = seal_owned(vault, conversation.owner, &at, state).await?;
    sqlx::query("UPDATE conversations SET state_sealed = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(sealed)
        .bind(tenant.to_string())
        .bind(&id)
        .execute(db.pool())
        .await
        .map_err(StorageError::from)?;
    Ok(())
}

/// Returns the dialog state last saved for a conversation.
///
/// # Errors
///
/// Returns [`CryptoError`] when the state fails to open or the query fails.
pub async fn state(
    db: &Db,
    vault: &Vault,
    tenant: TenantId,
    conversation: &Conversation,
) -> Result<Option<Vec<u8>>, CryptoError> {
    let id = conversation.id.to_string();
    let row =
        sqlx::query("SELECT state_sealed FROM conversations WHERE tenant_id = $1 AND id = $2")
            .bind(tenant.to_string())
            .bind(&id)
            .fetch_optional(db.pool())
            .await
            .map_err(StorageError::from)?;
    let sealed: Option<Vec<u8>> = match row {
        Some(row) => row.try_get("state_sealed").map_err(StorageError::from)?,
        None => None,
    };
    match sealed {
        Some(sealed) => {
            let at = state_column(tenant, &id);
            let opened = open_owned(vault, conversation.owner, &at, &sealed).await?;
            Ok(Some(opened.to_vec()))
        }
        None => Ok(None),
    }
}
