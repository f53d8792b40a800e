//! A database connection as collectors use it: queries with a deadline that cancels the
//! statement on the server when it passes, results decoded into [`Value`]s.
//!
//! PostgreSQL is queried on the extended protocol, which reports column types (booleans,
//! timestamps and predicate results depend on them). Pgbouncer's admin console accepts only
//! the simple protocol; its values arrive as untyped text.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_postgres::{CancelToken, Client, SimpleQueryMessage};

use crate::value::{RawColumn, Value};

/// Which wire protocol queries use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Extended protocol with typed binary results (PostgreSQL).
    Extended,
    /// Simple protocol with text results (Pgbouncer's admin console).
    Simple,
}

/// Why a query failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The deadline passed; a cancel request was sent to the server.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered with an error, or the connection broke.
    #[error("{0}")]
    Db(String),
}

/// How long a statement cancelled at its timeout is given to end before the connection's
/// next statement is sent.
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Column names and decoded rows of one query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    /// Column names in result order.
    pub columns: Vec<String>,
    /// Rows of values, one per column.
    pub rows: Vec<Vec<Value>>,
}

/// Sends a cancel request for whatever runs on a connection (needs the connection's TLS
/// settings, so it is built by whoever connected).
pub type Canceller = Arc<dyn Fn(CancelToken) -> BoxFuture<'static, ()> + Send + Sync>;

/// The text of the last NOTICE a connection received (Pgbouncer before 1.12 answers
/// `SHOW VERSION` with one). Shared between the connection task, which sets it, and the
/// [`DbConnection`], which takes it.
#[derive(Debug, Clone, Default)]
pub struct LastNotice(Arc<Mutex<Option<String>>>);

impl LastNotice {
    /// Replaces the kept notice.
    pub fn set(&self, message: String) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    /// Takes the kept notice, leaving none.
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// One open connection. Its queries run one at a time, in the order they ask: a timeout
/// counts from the moment the statement is sent, never the wait behind another scrape's
/// statement, and the cancel request sent when it expires can only reach its own statement.
pub struct DbConnection {
    client: Client,
    protocol: Protocol,
    canceller: Canceller,
    notice: LastNotice,
    turn: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DbConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConnection")
            .field("protocol", &self.protocol)
            .field("closed", &self.client.is_closed())
            .finish()
    }
}

impl DbConnection {
    /// Wraps a connected client.
    pub fn new(client: Client, protocol: Protocol, canceller: Canceller) -> DbConnection {
        DbConnection {
            client,
            protocol,
            canceller,
            notice: LastNotice::default(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads NOTICE messages from `notice` (the slot the connection task fills).
    pub fn with_notices(mut self, notice: LastNotice) -> DbConnection {
        self.notice = notice;
        self
    }

    /// Takes the last NOTICE received since the previous call, if any. A notice arrives
    /// before the answer of the statement that raised it is complete, so after a query it
    /// is already here.
    pub fn take_notice(&self) -> Option<String> {
        self.notice.take()
    }

    /// Whether the connection has broken.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The underlying client, for statements outside collectors (facts, probes).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `sql` once the statements asked for before it on this connection have ended;
    /// when `timeout` passes after it was sent, cancels it on the server and returns
    /// [`QueryError::Timeout`]. The connection stays usable afterwards: the next statement is
    /// sent only once the cancelled one has ended (or [`CANCEL_GRACE`] has passed), so the
    /// cancel cannot hit it.
    pub async fn query(
        &self,
        sql: &str,
        timeout: Option<Duration>,
    ) -> Result<ResultSet, QueryError> {
        let _turn = self.turn.lock().await;
        let run = async {
            match self.protocol {
                Protocol::Extended => self.query_extended(sql).await,
                Protocol::Simple => self.query_simple(sql).await,
            }
        };
        let Some(timeout) = timeout else {
            return run.await;
        };
        let mut run = std::pin::pin!(run);
        if let Ok(result) = tokio::time::timeout(timeout, run.as_mut()).await {
            return result;
        }
        (self.canceller)(self.client.cancel_token()).await;
        let _ = tokio::time::timeout(CANCEL_GRACE, run).await;
        Err(QueryError::Timeout(timeout))
    }

    async fn query_extended(&self, sql: &str) -> Result<ResultSet, QueryError> {
        // One round trip: Parse/Bind/Describe/Execute on the unnamed statement.
        let rows = self
            .client
            .query_typed(sql, &[])
            .await
            .map_err(|e| QueryError::Db(db_error_text(&e)))?;
        let mut result = ResultSet::default();
        if let Some(first) = rows.first() {
            result.columns = first
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect();
        }
        result.rows.reserve(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(row.len());
            for (i, column) in row.columns().iter().enumerate() {
                let raw: RawColumn<'_> =
                    row.try_get(i).map_err(|e| QueryError::Db(e.to_string()))?;
                values.push(Value::decode(column.type_(), raw.0));
            }
            result.rows.push(values);
        }
        Ok(result)
    }

    async fn query_simple(&self, sql: &str) -> Result<ResultSet, QueryError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(|e| QueryError::Db(db_error_text(&e)))?;
        let mut result = ResultSet::default();
        for message in messages {
            match message {
                SimpleQueryMessage::RowDescription(columns) => {
                    result.columns = columns.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(row) => {
                    if result.columns.is_empty() {
                        result.columns =
                            row.columns().iter().map(|c| c.name().to_owned()).collect();
                    }
                    result.rows.push(
                        (0..row.len())
                            .map(|i| Value::from_text(row.get(i)))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        Ok(result)
    }
}

/// The server's message with its SQLSTATE when there is one (tokio-postgres' Display only says
/// "db error").
pub fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}
