//! Reaching the database: the pool and its connections' set-up, the pooler
//! settings and the refusal of an undeclared transaction pooler, the
//! connections and write transactions handed out, and the thread those
//! transactions run on.

use std::{
    str::FromStr,
    sync::{
        Arc, Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use sqlx::{
    Any, AnyConnection, ConnectOptions, Connection, Executor, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions},
    pool::PoolConnection,
};
use tokio::sync::watch;
use tracing::Instrument;

use super::{Backend, Store, StoreError};

/// Pool settings, named after the seed's (SQLAlchemy's) so operators recognise them.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections kept open (`DB_POOL_SIZE`).
    pub size: u32,
    /// Connections opened beyond `size` under load (`DB_MAX_OVERFLOW`).
    pub max_overflow: u32,
    /// Maximum lifetime of a connection (`DB_POOL_RECYCLE`).
    pub recycle: Duration,
    /// How long a borrower waits for a connection (`DB_POOL_TIMEOUT`).
    pub timeout: Duration,
    /// Test a connection before handing it out (`DB_POOL_PRE_PING`).
    pub pre_ping: bool,
    /// PostgreSQL `statement_timeout` and `idle_in_transaction_session_timeout`.
    pub statement_timeout: Duration,
    /// PostgreSQL is reached through a pooler in transaction mode (PgBouncer
    /// `pool_mode = transaction`): no named prepared statements and no
    /// session settings, since each transaction may run on another server
    /// connection.
    pub transaction_pooler: bool,
    /// A URL that reaches PostgreSQL itself, for what needs a session of its
    /// own: migrations (they take a session lock) and LISTEN.
    pub direct_url: Option<String>,
}

/// Whether statements are prepared as named, cached statements: true but
/// behind a transaction pooler, where the next transaction may run on a
/// server connection that never saw them. Set once, when the store of the
/// process connects; a process talks to one database.
static NAMED_STATEMENTS: AtomicBool = AtomicBool::new(true);

/// A statement with its values bound, ready to run.
pub(crate) type Query<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>;

/// A statement on the store's connection: prepared once per connection and
/// cached, or, behind a transaction pooler, prepared unnamed each time.
pub(crate) fn query(sql: &str) -> Query<'_> {
    sqlx::query(sql).persistent(NAMED_STATEMENTS.load(Ordering::Relaxed))
}

/// The thread write transactions run on, with a runtime of its own. A write
/// transaction holds SQLite's write turn, or PostgreSQL row locks, from its
/// first statement to its commit, so each statement's result must be taken
/// up at once: on the server's runtime it would wait behind the tasks of
/// thousands of streams, every writer queued behind it would wait as well,
/// and first events and gaps would grow with the number of streams.
#[derive(Debug)]
pub(super) struct DbThread {
    handle: tokio::runtime::Handle,
    /// Dropped with the last clone of the store, which ends the thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl DbThread {
    fn start() -> Result<DbThread, StoreError> {
        let failed = |e| StoreError::Unavailable(sqlx::Error::Io(e));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Its log lines go where the caller's go.
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        std::thread::Builder::new()
            .name("agentstream-db".to_owned())
            .spawn(move || {
                let _log = tracing::dispatcher::set_default(&dispatch);
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(failed)?;
        Ok(DbThread {
            handle,
            _stop: stop,
        })
    }
}

/// A connection for statements outside a write transaction. Behind a
/// transaction pooler it holds a transaction of its own: sqlx prepares a
/// statement and runs it in two exchanges, which the pooler could hand to two
/// different server connections, and inside a transaction it hands both to
/// one. Dropped, that transaction rolls back, so a statement that writes
/// ends with [`Conn::commit`].
#[derive(Debug)]
pub struct Conn(ConnInner);

#[derive(Debug)]
enum ConnInner {
    /// A session of its own (no pooler, or one in session mode).
    Session(PoolConnection<Any>),
    /// Behind a transaction pooler.
    Pooled(Transaction<'static, Any>),
}

impl Conn {
    /// Makes what was written on it durable (behind a transaction pooler,
    /// commits its transaction; otherwise each statement committed itself).
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.0 {
            ConnInner::Session(_) => Ok(()),
            ConnInner::Pooled(tx) => Ok(tx.commit().await?),
        }
    }
}

impl std::ops::Deref for Conn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.0 {
            ConnInner::Session(conn) => conn,
            ConnInner::Pooled(tx) => tx,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.0 {
            ConnInner::Session(conn) => conn,
            ConnInner::Pooled(tx) => tx,
        }
    }
}

/// The event log's connection with SQLite's write turn held (see
/// [`Store::events_connection`]).
#[derive(Debug)]
pub struct EventsConnection<'c> {
    conn: EventsConn<'c>,
    // Dropped after `conn`.
    turn: Option<super::dialect::Turn>,
}

#[derive(Debug)]
enum EventsConn<'c> {
    /// SQLite: the one connection of the process's writes.
    Writer(PoolConnection<Any>),
    /// PostgreSQL: the event log's own connection.
    Own(&'c mut AnyConnection),
}

impl std::ops::Deref for EventsConnection<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.conn {
            EventsConn::Writer(conn) => conn,
            EventsConn::Own(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for EventsConnection<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.conn {
            EventsConn::Writer(conn) => conn,
            EventsConn::Own(conn) => conn,
        }
    }
}

/// A short write transaction: a connection borrowed as the transaction's,
/// with SQLite's write turn held until it ends. Dropped without a commit, it
/// rolls back.
#[derive(Debug)]
pub struct WriteTx<'c> {
    tx: Transaction<'c, Any>,
    // Dropped after `tx`: the next writer's turn begins once this one's
    // rollback is under way.
    _turn: Option<super::dialect::Turn>,
}

impl WriteTx<'_> {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

static INSTALL_DRIVERS: Once = Once::new();

/// With `DB_POOL_PRE_PING`, a PostgreSQL connection idle at least this long
/// is tested before it is handed out. A restart of the database takes longer,
/// so a connection used more recently cannot have missed one; and one in use
/// when the database went away fails its query, which is reported either way.
const PRE_PING_IDLE: Duration = Duration::from_secs(1);

impl Store {
    /// Opens the pool (creating the SQLite file and its folder if needed) and
    /// checks that the database answers.
    #[tracing::instrument(skip_all, fields(backend))]
    pub async fn connect(url: &str, settings: &PoolSettings) -> Result<Store, StoreError> {
        INSTALL_DRIVERS.call_once(sqlx::any::install_default_drivers);
        let backend = Backend::from_url(url).ok_or_else(|| {
            StoreError::Database(sqlx::Error::Configuration(
                "the database URL must start with sqlite: or postgres://".into(),
            ))
        })?;
        tracing::Span::current().record("backend", tracing::field::debug(backend));
        let pooled = settings.transaction_pooler;
        if pooled && backend != Backend::Postgres {
            return Err(StoreError::Setup(
                "--db-pooler transaction is for PostgreSQL behind a pooler; this URL is SQLite"
                    .to_owned(),
            ));
        }
        let direct_url = match (&settings.direct_url, pooled) {
            (Some(direct), _) => Some(Arc::from(direct.as_str())),
            (None, false) => None,
            (None, true) => {
                return Err(StoreError::Setup(
                    "--db-pooler transaction needs --database-direct-url \
                     (AGENTSTREAM_DATABASE_DIRECT_URL): a URL that reaches PostgreSQL itself, \
                     not through the pooler, for migrations and LISTEN, which need a session"
                        .to_owned(),
                ));
            }
        };
        if pooled {
            NAMED_STATEMENTS.store(false, Ordering::Relaxed);
        }
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
        let statement_timeout_ms = settings.statement_timeout.as_millis();
        let pre_ping = settings.pre_ping;
        let closing = Arc::new(AtomicBool::new(false));
        let closing_on_release = closing.clone();
        let pool_options = AnyPoolOptions::new()
            .min_connections(settings.size)
            .max_connections(settings.size + settings.max_overflow)
            .max_lifetime(settings.recycle)
            .acquire_timeout(settings.timeout)
            // DB_POOL_PRE_PING, tested where it can find something: an embedded
            // SQLite file has no connection to lose, and a PostgreSQL connection
            // used a moment ago has not missed a restart. Pinging each of those
            // cost a round trip per transaction, for nothing.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if !pre_ping || backend == Backend::Sqlite || meta.idle_for < PRE_PING_IDLE {
                        return Ok(true);
                    }
                    // A dead connection is closed and another one tried.
                    Ok(conn.ping().await.is_ok())
                })
            })
            .after_connect(move |conn, _meta| {
                Box::pin(async move { prepare(conn, backend, pooled, statement_timeout_ms).await })
            })
            // A connection handed back inside a transaction is closed, never reused dirty.
            .after_release(move |conn, _meta| {
                let reuse =
                    !conn.is_in_transaction() && !closing_on_release.load(Ordering::Acquire);
                Box::pin(async move { Ok(reuse) })
            });
        let own = Arc::new(OwnConnectionSetup {
            options: options.clone(),
            pooled,
            statement_timeout_ms,
            timeout: settings.timeout,
            recycle: settings.recycle,
        });
        let db = Arc::new(DbThread::start()?);
        if backend == Backend::Postgres && !pooled {
            // Before the pool: its connections' first statements would clash
            // behind a transaction pooler, and it would only retry them.
            let checked = options.clone();
            match db.handle.spawn(refuse_transaction_pooler(checked)).await {
                Ok(checked) => checked?,
                Err(_) => return Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
            }
        }
        // Opened on the database thread: the connections' sockets are woken
        // by its runtime, where the transactions run.
        let writer = match backend {
            // SQLite's writes take turns (see `Store::write_turn`), so one
            // connection serves them all: one warm thread and page cache
            // instead of a rotation through the pool's.
            Backend::Sqlite => {
                let options = pool_options
                    .clone()
                    .min_connections(1)
                    .max_connections(1)
                    .connect_with(options.clone());
                match db.handle.spawn(options).await {
                    Ok(writer) => Some(writer?),
                    Err(_) => return Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
                }
            }
            Backend::Postgres => None,
        };
        let pool = match db.handle.spawn(pool_options.connect_with(options)).await {
            Ok(pool) => pool.map_err(|e| undeclared_pooler(e, pooled))?,
            Err(_) => return Err(StoreError::Unavailable(sqlx::Error::PoolClosed)),
        };
        let store = Store {
            pool,
            backend,
            direct_url,
            down: Arc::new(watch::Sender::new(false)),
            closing,
            write_turn: Arc::default(),
            writer,
            db,
            own,
            max_connections: Arc::default(),
        };
        Ok(store)
    }

    /// Runs `work` on the database thread (see [`DbThread`]) and waits for it.
    /// It runs to its end even if the caller stops waiting, so a transaction
    /// is never cut off halfway by a client that went away.
    pub async fn on_db<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        match self.db.handle.spawn(work.in_current_span()).await {
            Ok(result) => result,
            Err(error) => match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // The thread is stopping: the store is being dropped.
                Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolClosed).into()),
            },
        }
    }

    /// The runtime of the database thread, for the event log's writer.
    pub fn db_runtime(&self) -> &tokio::runtime::Handle {
        &self.db.handle
    }

    /// A connection for statements outside a write transaction (see
    /// [`Conn`]). While the probe finds the database down this fails at
    /// once, and a wait already under way ends when the probe notices.
    pub async fn acquire(&self) -> Result<Conn, StoreError> {
        let conn = self.acquire_raw().await?;
        Ok(Conn(if NAMED_STATEMENTS.load(Ordering::Relaxed) {
            ConnInner::Session(conn)
        } else {
            ConnInner::Pooled(Transaction::begin(conn, None).await?)
        }))
    }

    /// A connection from the pool. While the probe finds the database down
    /// this fails at once, and a wait already under way ends when the probe
    /// notices: nobody waits out the pool timeout for a database that is gone.
    async fn acquire_raw(&self) -> Result<PoolConnection<Any>, StoreError> {
        let mut down = self.down.subscribe();
        if *down.borrow_and_update() {
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        let _timer = crate::telemetry::metrics::AcquireTimer::start();
        tokio::select! {
            conn = self.pool.acquire() => Ok(conn?),
            _ = down.wait_for(|down| *down) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Checks that the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        // Straight from the pool, not through `acquire`: this is how the
        // probe learns that the database is back.
        // The simple protocol: one exchange, which any pooler passes whole.
        sqlx::raw_sql("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Stops reusing connections: each one handed back from now on is
    /// closed. Called when shutdown begins, so that no connection is still
    /// being tested for reuse when the process ends.
    pub fn stop_reusing_connections(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Closes every connection; waits for borrowed ones to come back.
    pub async fn close(&self) {
        self.stop_reusing_connections();
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        self.pool.close().await;
    }

    /// Begins a short write transaction. On SQLite it waits for the write
    /// turn, then takes the write lock up front (`BEGIN IMMEDIATE`), so a
    /// transaction that reads before it writes cannot fail to upgrade its lock.
    pub async fn begin(&self) -> Result<WriteTx<'static>, StoreError> {
        self.begin_with_timeout(None).await
    }

    /// Begins a short write transaction as [`Store::begin`] does, whose
    /// statements on PostgreSQL each stop at `statement_timeout` (set with
    /// the `BEGIN`, for this transaction only; `None`: the pool's). SQLite
    /// cannot stop a statement from outside, so there it is not set.
    pub async fn begin_with_timeout(
        &self,
        statement_timeout: Option<Duration>,
    ) -> Result<WriteTx<'static>, StoreError> {
        let turn = self.write_turn(false).await;
        let conn = match &self.writer {
            Some(writer) => writer.acquire().await?,
            None => self.acquire_raw().await?,
        };
        // What `Pool::begin_with` does, on a connection from `acquire`.
        let tx = Transaction::begin(conn, self.begin_statement(statement_timeout)).await?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Begins a run start's transaction for `user_id`, whose runs may number
    /// at most `limit`, as [`Store::begin`] does. On PostgreSQL, where a
    /// start's count cannot see the starts in flight beside it, a limit
    /// they could all fit under is checked by the count alone; under a
    /// smaller one (the default's 8 against `max_connections`) the user's
    /// row is locked in the `BEGIN`'s exchange, so the start's statements
    /// count after every earlier start of the user has committed. Returns
    /// whether the lock was taken (see [`super::insert_run_rows`]).
    pub async fn begin_start(
        &self,
        user_id: uuid::Uuid,
        limit: i64,
    ) -> Result<(WriteTx<'static>, bool), StoreError> {
        let in_flight = self.max_connections.load(Ordering::Relaxed);
        // Known after a first start. A count includes the start's own run,
        // so the count alone can hold only a limit above `max_connections`.
        let lock = self.backend == Backend::Postgres && in_flight > 0 && limit <= in_flight;
        if !lock {
            return Ok((self.begin().await?, false));
        }
        let conn = self.acquire_raw().await?;
        let begin = super::starts::begin_locking_user(user_id);
        let tx = Transaction::begin(conn, Some(begin.into())).await?;
        Ok((WriteTx { tx, _turn: None }, true))
    }

    /// Records PostgreSQL's `max_connections` as a run start read it.
    pub(crate) fn remember_max_connections(&self, max_connections: i64) {
        self.max_connections
            .store(max_connections, Ordering::Relaxed);
    }

    /// Begins the event log's transaction, as `begin` does, on the event
    /// log's connection (see [`Store::events_connection`]).
    pub async fn begin_events<'c>(
        &self,
        held: &'c mut Option<OwnConnection>,
    ) -> Result<WriteTx<'c>, StoreError> {
        let EventsConnection { conn, turn } = self.events_connection(held).await?;
        let begin = self.begin_statement(None);
        let tx = match conn {
            EventsConn::Writer(conn) => Transaction::begin(conn, begin).await?,
            EventsConn::Own(conn) => Transaction::begin(conn, begin).await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// The event log's connection, for a statement that commits itself
    /// (see [`Store::statements_commit_alone`]) or a transaction: on SQLite
    /// the one connection of its writes, with the write turn taken before
    /// every transaction still waiting but a few (events do not wait behind
    /// a queue of run starts); on PostgreSQL the log's own connection (see
    /// [`OwnConnection`]), opened first if `held` is empty or has been used
    /// for `DB_POOL_RECYCLE`.
    pub async fn events_connection<'c>(
        &self,
        held: &'c mut Option<OwnConnection>,
    ) -> Result<EventsConnection<'c>, StoreError> {
        let turn = self.write_turn(true).await;
        if let Some(writer) = &self.writer {
            let conn = EventsConn::Writer(writer.acquire().await?);
            return Ok(EventsConnection { conn, turn });
        }
        if held
            .as_ref()
            .is_some_and(|conn| conn.opened.elapsed() >= self.own.recycle)
            && let Some(old) = held.take()
        {
            old.close().await;
        }
        let own = match held {
            Some(conn) => conn,
            None => held.insert(self.connect_events().await?),
        };
        let conn = EventsConn::Own(&mut own.conn);
        Ok(EventsConnection { conn, turn })
    }

    /// Whether one statement may run outside a transaction, committing
    /// itself (as atomic as any statement): true but behind a transaction
    /// pooler, where sqlx's two exchanges for a statement (prepare, then
    /// run) could reach two server connections unless a transaction holds
    /// them to one.
    pub fn statements_commit_alone(&self) -> bool {
        NAMED_STATEMENTS.load(Ordering::Relaxed)
    }

    /// Checks that the database answers, on a connection of the caller's
    /// own beside the pool (`held`, opened when empty or broken), so that a
    /// pool busy to its last connection is not taken for a database that is
    /// down. The simple protocol: one exchange, which any pooler passes whole.
    pub async fn ping_own(&self, held: &mut Option<OwnConnection>) -> Result<(), StoreError> {
        if let Some(conn) = held {
            if conn.conn.execute("SELECT 1").await.is_ok() {
                return Ok(());
            }
            *held = None;
        }
        let conn = held.insert(self.open_own().await?);
        conn.conn.execute("SELECT 1").await?;
        Ok(())
    }

    /// Opens the event log's connection. While the probe finds the database
    /// down this fails at once, and an attempt under way ends when the
    /// probe notices, or after `DB_POOL_TIMEOUT`.
    async fn connect_events(&self) -> Result<OwnConnection, StoreError> {
        let mut down = self.down.subscribe();
        if *down.borrow_and_update() {
            return Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        }
        tokio::select! {
            opened = self.open_own() => opened,
            _ = down.wait_for(|down| *down) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Opens a connection beside the pool, set up as the pool's are, within
    /// `DB_POOL_TIMEOUT`.
    async fn open_own(&self) -> Result<OwnConnection, StoreError> {
        let setup = &self.own;
        let open = async {
            let mut conn = AnyConnection::connect_with(&setup.options).await?;
            prepare(
                &mut conn,
                self.backend,
                setup.pooled,
                setup.statement_timeout_ms,
            )
            .await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match tokio::time::timeout(setup.timeout, open).await {
            Ok(conn) => Ok(OwnConnection {
                conn: conn?,
                opened: std::time::Instant::now(),
            }),
            Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
        }
    }
}

/// Sets up a new connection: SQLite's journal and locking, or PostgreSQL's
/// safety nets.
async fn prepare(
    conn: &mut AnyConnection,
    backend: Backend,
    pooled: bool,
    statement_timeout_ms: u128,
) -> Result<(), sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            conn.execute(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
            )
            .await?;
        }
        // Behind a transaction pooler a session setting would stay on
        // whichever server connection ran it; set these on the role instead
        // (see the README).
        Backend::Postgres if pooled => {}
        Backend::Postgres => {
            // Safety nets: no statement runs away and no session idles
            // inside a transaction holding locks.
            query(
                "SELECT set_config('statement_timeout', $1, false), \
                 set_config('idle_in_transaction_session_timeout', $1, false)",
            )
            .bind(statement_timeout_ms.to_string())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// What opens the event log's connection (see [`OwnConnection`]).
#[derive(Debug)]
pub(super) struct OwnConnectionSetup {
    options: AnyConnectOptions,
    pooled: bool,
    statement_timeout_ms: u128,
    /// How long opening it may take (`DB_POOL_TIMEOUT`).
    timeout: Duration,
    /// How long it is used before it is opened again (`DB_POOL_RECYCLE`).
    recycle: Duration,
}

/// A connection of its own, beside the pool: the health probe's, and the
/// event log's on PostgreSQL. The event log's is opened beside the pool
/// rather than taken from it: the writer that every stream waits on never
/// queues behind run starts and tool calls for a connection, and holds one
/// across its short waits without taking it from them. A database therefore
/// sees the pool's connections plus this one. (On SQLite the log commits on
/// the one connection of the process's writes, beside the pool too.)
#[derive(Debug)]
pub struct OwnConnection {
    conn: AnyConnection,
    opened: std::time::Instant,
}

impl OwnConnection {
    /// Closes the connection cleanly (a terminate message to PostgreSQL).
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

const UNDECLARED_POOLER: &str = "the database URL leads through a connection pooler in \
    transaction mode (e.g. PgBouncer with pool_mode = transaction): start with \
    --db-pooler transaction (DB_POOLER=transaction) and give --database-direct-url, \
    a URL that reaches PostgreSQL itself";

/// The error, or the start-up refusal it shows: named prepared statements
/// that clash (`sqlx_s_1 already exists`) or vanish between two statements
/// of one connection are what a transaction pooler does to a client that
/// does not know it is there.
fn undeclared_pooler(error: sqlx::Error, pooled: bool) -> StoreError {
    let clash = matches!(
        &error,
        sqlx::Error::Database(db)
            if matches!(db.code().as_deref(), Some("42P05" | "26000" | "08P01"))
    );
    if clash && !pooled {
        StoreError::Setup(UNDECLARED_POOLER.to_owned())
    } else {
        error.into()
    }
}

/// Refuses a PostgreSQL reached through a pooler in transaction mode when
/// the settings do not say so: its named prepared statements would fail
/// ("prepared statement sqlx_s_1 already exists") under load. Two
/// connections open at once are two sessions, each with a server process of
/// its own, and one connection keeps its server process, unless a pooler
/// shares them out.
async fn refuse_transaction_pooler(options: AnyConnectOptions) -> Result<(), StoreError> {
    let mut first = AnyConnection::connect_with(&options).await?;
    let mut second = AnyConnection::connect_with(&options).await?;
    let before = backend_pid(&mut first).await?;
    let other = backend_pid(&mut second).await?;
    let after = backend_pid(&mut first).await?;
    first.close().await?;
    second.close().await?;
    if before != after || other == before {
        return Err(StoreError::Setup(UNDECLARED_POOLER.to_owned()));
    }
    Ok(())
}

/// The PostgreSQL server process serving the connection.
async fn backend_pid(conn: &mut AnyConnection) -> Result<i32, StoreError> {
    // Unnamed: a named statement on a fresh connection is what clashes.
    let row = sqlx::query("SELECT pg_backend_pid() AS pid")
        .persistent(false)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| undeclared_pooler(e, false))?;
    Ok(sqlx::Row::try_get(&row, "pid")?)
}

/// The file a `sqlite:` URL names (none for `:memory:` or another backend).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    if Backend::from_url(url) != Some(Backend::Sqlite) {
        return None;
    }
    let (path, _) = split_sqlite_url(url);
    (path != ":memory:" && !path.is_empty()).then(|| path.into())
}

/// A `sqlite:` URL's path and query.
fn split_sqlite_url(url: &str) -> (&str, &str) {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    rest.split_once('?').unwrap_or((rest, ""))
}

/// Accepts `sqlite:path`, `sqlite://path` and `sqlite:///abs/path`, creates the
/// file's folder, and asks for the file to be created.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let (path, query) = split_sqlite_url(url);
    if let Some(file) = sqlite_path(url)
        && let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// A database URL without its password, for logs and messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://data/a.db"), "sqlite://data/a.db");
    }

    #[test]
    fn sqlite_urls_ask_for_creation() {
        assert_eq!(
            sqlite_url("sqlite::memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite://a.db?mode=ro").unwrap(),
            "sqlite://a.db?mode=ro"
        );
    }
}
