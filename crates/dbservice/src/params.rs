//! The PostgreSQL parameters a customer may set (`atrest db set`): an
//! allow-list.
//!
//! PostgreSQL runs with the decrypted data and atrest's per-instance files
//! in reach, so a parameter that names a file, a program, a library, a
//! listener or a replication peer would let a customer reach beyond their
//! database: write logs elsewhere (`log_directory`), run a shell command
//! (`archive_cleanup_command`), load code (`dynamic_library_path`,
//! `session_preload_libraries`), listen on the network, or stream the WAL
//! away. A deny-list misses the next such parameter, so only the
//! parameters in [`PARAMS`] are accepted: tuning, what is logged,
//! timeouts, session defaults and three contrib modules, about what AWS
//! RDS lets a customer set in a parameter group. Values are checked for
//! their form only; PostgreSQL checks ranges when the instance restarts
//! (and a value it refuses leaves the instance on its previous
//! parameters).

use std::fmt;

/// A value's unit, as PostgreSQL spells it (case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// A plain number.
    None,
    /// A size: the number alone is in the parameter's own unit.
    Memory,
    /// A duration: the number alone is in the parameter's own unit.
    Time,
}

impl Unit {
    fn names(self) -> &'static [&'static str] {
        match self {
            Self::None => &[],
            Self::Memory => &["B", "kB", "MB", "GB", "TB"],
            Self::Time => &["us", "ms", "s", "min", "h", "d"],
        }
    }
}

/// The form of a parameter's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `on`/`off` and PostgreSQL's other spellings of a boolean.
    Bool,
    /// A whole number, optionally followed by a unit. An optional `-`:
    /// PostgreSQL refuses a negative value where it means nothing (-1 is
    /// "off" for some).
    Integer(Unit),
    /// A decimal number, optionally followed by a unit.
    Real(Unit),
    /// One of these values (lowercase; PostgreSQL compares them ignoring
    /// case).
    Enum(&'static [&'static str]),
    /// Printable ASCII: names, formats and lists PostgreSQL parses itself.
    Text,
    /// A comma-separated list of [`LIBRARIES`].
    Libraries,
}

/// The libraries `shared_preload_libraries` may name: contrib modules that
/// read no file and run no program a customer chooses. A library is code
/// running in the server, so this is a list of names, never a path.
const LIBRARIES: [&str; 3] = ["pg_stat_statements", "auto_explain", "pg_prewarm"];

/// PostgreSQL also takes unique prefixes (`t`, `of`); these suffice.
const BOOLS: [&str; 8] = ["on", "off", "true", "false", "yes", "no", "1", "0"];

/// The longest value accepted, whatever the kind.
const MAX_VALUE: usize = 1024;

impl Kind {
    fn accepts(self, v: &str) -> bool {
        match self {
            Self::Bool => BOOLS.iter().any(|b| b.eq_ignore_ascii_case(v)),
            Self::Integer(unit) => number_with_unit(v, false, unit),
            Self::Real(unit) => number_with_unit(v, true, unit),
            Self::Enum(values) => values.iter().any(|e| e.eq_ignore_ascii_case(v)),
            Self::Text => v.bytes().all(|b| (0x20..0x7f).contains(&b)),
            Self::Libraries => v
                .split(',')
                .all(|lib| LIBRARIES.contains(&lib.trim_matches(' '))),
        }
    }

    /// What a value must be, for error messages ("must be ...").
    fn expected(self) -> String {
        let unit = |u: Unit| match u {
            Unit::None => String::new(),
            Unit::Memory | Unit::Time => format!(
                ", optionally followed by a {} unit ({})",
                if u == Unit::Memory { "memory" } else { "time" },
                u.names().join(", ")
            ),
        };
        match self {
            Self::Bool => "on or off (or true/false, yes/no, 1/0)".into(),
            Self::Integer(u) => format!("a whole number{}", unit(u)),
            Self::Real(u) => format!("a number{}", unit(u)),
            Self::Enum(values) => format!("one of {}", values.join(", ")),
            Self::Text => "printable ASCII text".into(),
            Self::Libraries => format!("a comma-separated list of {}", LIBRARIES.join(", ")),
        }
    }
}

/// A decimal number (with a fraction and an exponent if `real`), then
/// optionally spaces and one of `unit`'s names. Stricter than PostgreSQL
/// (no `+`, hexadecimal or fractions of integers), never looser.
fn number_with_unit(v: &str, real: bool, unit: Unit) -> bool {
    fn digits(b: &[u8], i: &mut usize) -> usize {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    }
    let b = v.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let mut n = digits(b, &mut i);
    if real && b.get(i) == Some(&b'.') {
        i += 1;
        n += digits(b, &mut i);
    }
    if n == 0 {
        return false;
    }
    if real && matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(b, &mut i) == 0 {
            return false;
        }
    }
    // `i` is past ASCII only, so a char boundary.
    let rest = v[i..].trim_matches(' ');
    rest.is_empty() || unit.names().contains(&rest)
}

/// Where a parameter is listed in `docs/db-parameters.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    /// Memory and resource limits.
    Memory,
    /// Connection slots, background and parallel workers, locks.
    Connections,
    /// Query planning.
    Planner,
    /// Checkpoints, WAL writing and the background writer.
    Wal,
    /// Autovacuum and vacuum.
    Vacuum,
    /// What goes to the instance's log.
    Logging,
    /// Timeouts and keepalives.
    Timeouts,
    /// Session defaults and statistics collection.
    Client,
    /// Preloaded contrib modules and their settings.
    Extensions,
}

#[cfg_attr(
    not(test),
    expect(dead_code, reason = "docs/db-parameters.md is generated by a test")
)]
impl Category {
    /// Every category, in the order of the documentation.
    pub(crate) const ALL: [Self; 9] = [
        Self::Memory,
        Self::Connections,
        Self::Planner,
        Self::Wal,
        Self::Vacuum,
        Self::Logging,
        Self::Timeouts,
        Self::Client,
        Self::Extensions,
    ];

    /// The heading in the documentation.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Self::Memory => "Memory",
            Self::Connections => "Connections and workers",
            Self::Planner => "Planner",
            Self::Wal => "Checkpoints and WAL tuning",
            Self::Vacuum => "Autovacuum and vacuum",
            Self::Logging => "Logging",
            Self::Timeouts => "Timeouts",
            Self::Client => "Client defaults and statistics",
            Self::Extensions => "Extensions",
        }
    }
}

/// One allowed parameter.
#[derive(Debug, Clone, Copy)]
struct Param {
    /// PostgreSQL's name, lowercase.
    name: &'static str,
    kind: Kind,
    category: Category,
}

const fn p(name: &'static str, kind: Kind, category: Category) -> Param {
    Param {
        name,
        kind,
        category,
    }
}

use Category::{Client, Connections, Extensions, Logging, Memory, Planner, Timeouts, Vacuum, Wal};
use Kind::{Bool, Enum, Libraries, Text};
const INT: Kind = Kind::Integer(Unit::None);
const MEM: Kind = Kind::Integer(Unit::Memory);
const TIME: Kind = Kind::Integer(Unit::Time);
const REAL: Kind = Kind::Real(Unit::None);

const MESSAGE_LEVELS: &[&str] = &[
    "debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "error", "log",
    "fatal", "panic",
];

/// The allow-list. Only PostgreSQL 15's names; a parameter renamed later
/// is added under its new name when atrest supports that version.
const PARAMS: &[Param] = &[
    // Memory.
    p("shared_buffers", MEM, Memory),
    p("work_mem", MEM, Memory),
    p("maintenance_work_mem", MEM, Memory),
    p("autovacuum_work_mem", MEM, Memory),
    p("temp_buffers", MEM, Memory),
    p("effective_cache_size", MEM, Memory),
    p("huge_pages", Enum(&["off", "on", "try"]), Memory),
    p("logical_decoding_work_mem", MEM, Memory),
    p("hash_mem_multiplier", REAL, Memory),
    p("wal_buffers", MEM, Memory),
    p("temp_file_limit", MEM, Memory),
    // PostgreSQL refuses a value above the stack's ulimit.
    p("max_stack_depth", MEM, Memory),
    // Connections and workers.
    p("max_connections", INT, Connections),
    p("max_prepared_transactions", INT, Connections),
    p("max_worker_processes", INT, Connections),
    p("max_parallel_workers", INT, Connections),
    p("max_parallel_workers_per_gather", INT, Connections),
    p("max_parallel_maintenance_workers", INT, Connections),
    p("parallel_leader_participation", Bool, Connections),
    p("max_locks_per_transaction", INT, Connections),
    p("max_pred_locks_per_transaction", INT, Connections),
    p("max_pred_locks_per_relation", INT, Connections),
    p("max_pred_locks_per_page", INT, Connections),
    // Planner.
    p("seq_page_cost", REAL, Planner),
    p("random_page_cost", REAL, Planner),
    p("cpu_tuple_cost", REAL, Planner),
    p("cpu_index_tuple_cost", REAL, Planner),
    p("cpu_operator_cost", REAL, Planner),
    p("parallel_setup_cost", REAL, Planner),
    p("parallel_tuple_cost", REAL, Planner),
    p("min_parallel_table_scan_size", MEM, Planner),
    p("min_parallel_index_scan_size", MEM, Planner),
    p("effective_io_concurrency", INT, Planner),
    p("maintenance_io_concurrency", INT, Planner),
    p("default_statistics_target", INT, Planner),
    p(
        "constraint_exclusion",
        Enum(&["partition", "on", "off"]),
        Planner,
    ),
    p("cursor_tuple_fraction", REAL, Planner),
    p("from_collapse_limit", INT, Planner),
    p("join_collapse_limit", INT, Planner),
    p("recursive_worktable_factor", REAL, Planner),
    p("geqo", Bool, Planner),
    p("geqo_threshold", INT, Planner),
    p("geqo_effort", INT, Planner),
    p("geqo_pool_size", INT, Planner),
    p("geqo_generations", INT, Planner),
    p("geqo_selection_bias", REAL, Planner),
    p("geqo_seed", REAL, Planner),
    p("jit", Bool, Planner),
    p("jit_above_cost", REAL, Planner),
    p("jit_inline_above_cost", REAL, Planner),
    p("jit_optimize_above_cost", REAL, Planner),
    p(
        "plan_cache_mode",
        Enum(&["auto", "force_generic_plan", "force_custom_plan"]),
        Planner,
    ),
    p("enable_async_append", Bool, Planner),
    p("enable_bitmapscan", Bool, Planner),
    p("enable_gathermerge", Bool, Planner),
    p("enable_hashagg", Bool, Planner),
    p("enable_hashjoin", Bool, Planner),
    p("enable_incremental_sort", Bool, Planner),
    p("enable_indexonlyscan", Bool, Planner),
    p("enable_indexscan", Bool, Planner),
    p("enable_material", Bool, Planner),
    p("enable_memoize", Bool, Planner),
    p("enable_mergejoin", Bool, Planner),
    p("enable_nestloop", Bool, Planner),
    p("enable_parallel_append", Bool, Planner),
    p("enable_parallel_hash", Bool, Planner),
    p("enable_partition_pruning", Bool, Planner),
    p("enable_partitionwise_aggregate", Bool, Planner),
    p("enable_partitionwise_join", Bool, Planner),
    p("enable_seqscan", Bool, Planner),
    p("enable_sort", Bool, Planner),
    p("enable_tidscan", Bool, Planner),
    // Checkpoints and WAL tuning. Durability switches (fsync,
    // full_page_writes, wal_sync_method) stay atrest's: crash recovery on
    // the encrypted disk depends on them.
    p("checkpoint_timeout", TIME, Wal),
    p("checkpoint_completion_target", REAL, Wal),
    p("checkpoint_warning", TIME, Wal),
    p("checkpoint_flush_after", MEM, Wal),
    p("max_wal_size", MEM, Wal),
    p("min_wal_size", MEM, Wal),
    p(
        "wal_compression",
        Enum(&["off", "on", "pglz", "lz4", "zstd"]),
        Wal,
    ),
    p("wal_writer_delay", TIME, Wal),
    p("wal_writer_flush_after", MEM, Wal),
    // Microseconds, for which PostgreSQL has no unit.
    p("commit_delay", INT, Wal),
    p("commit_siblings", INT, Wal),
    // The remote_* levels wait for synchronous standbys, which only
    // atrest configures; without any they act as `on`.
    p(
        "synchronous_commit",
        Enum(&["local", "remote_write", "remote_apply", "on", "off"]),
        Wal,
    ),
    p("bgwriter_delay", TIME, Wal),
    p("bgwriter_lru_maxpages", INT, Wal),
    p("bgwriter_lru_multiplier", REAL, Wal),
    p("bgwriter_flush_after", MEM, Wal),
    p("backend_flush_after", MEM, Wal),
    // Autovacuum and vacuum (vacuum_defer_cleanup_age is a replication
    // setting, left out).
    p("autovacuum", Bool, Vacuum),
    p("autovacuum_max_workers", INT, Vacuum),
    p("autovacuum_naptime", TIME, Vacuum),
    p("autovacuum_vacuum_threshold", INT, Vacuum),
    p("autovacuum_vacuum_scale_factor", REAL, Vacuum),
    p("autovacuum_vacuum_insert_threshold", INT, Vacuum),
    p("autovacuum_vacuum_insert_scale_factor", REAL, Vacuum),
    p("autovacuum_analyze_threshold", INT, Vacuum),
    p("autovacuum_analyze_scale_factor", REAL, Vacuum),
    p("autovacuum_freeze_max_age", INT, Vacuum),
    p("autovacuum_multixact_freeze_max_age", INT, Vacuum),
    p(
        "autovacuum_vacuum_cost_delay",
        Kind::Real(Unit::Time),
        Vacuum,
    ),
    p("autovacuum_vacuum_cost_limit", INT, Vacuum),
    p("vacuum_cost_delay", Kind::Real(Unit::Time), Vacuum),
    p("vacuum_cost_limit", INT, Vacuum),
    p("vacuum_cost_page_hit", INT, Vacuum),
    p("vacuum_cost_page_miss", INT, Vacuum),
    p("vacuum_cost_page_dirty", INT, Vacuum),
    p("vacuum_freeze_min_age", INT, Vacuum),
    p("vacuum_freeze_table_age", INT, Vacuum),
    p("vacuum_multixact_freeze_min_age", INT, Vacuum),
    p("vacuum_multixact_freeze_table_age", INT, Vacuum),
    p("vacuum_failsafe_age", INT, Vacuum),
    p("vacuum_multixact_failsafe_age", INT, Vacuum),
    p("log_autovacuum_min_duration", TIME, Vacuum),
    // Logging: what goes to the instance's log, never where (the log is
    // atrest's file on the encrypted disk). log_hostname is left out: it
    // makes the server resolve every client's address.
    p("log_min_messages", Enum(MESSAGE_LEVELS), Logging),
    p("log_min_error_statement", Enum(MESSAGE_LEVELS), Logging),
    p("log_min_duration_statement", TIME, Logging),
    p("log_min_duration_sample", TIME, Logging),
    p("log_statement_sample_rate", REAL, Logging),
    p("log_transaction_sample_rate", REAL, Logging),
    p(
        "log_statement",
        Enum(&["none", "ddl", "mod", "all"]),
        Logging,
    ),
    p("log_duration", Bool, Logging),
    p("log_connections", Bool, Logging),
    p("log_disconnections", Bool, Logging),
    p("log_lock_waits", Bool, Logging),
    p("log_temp_files", MEM, Logging),
    p("log_checkpoints", Bool, Logging),
    p(
        "log_error_verbosity",
        Enum(&["terse", "default", "verbose"]),
        Logging,
    ),
    p("log_line_prefix", Text, Logging),
    p("log_parameter_max_length", MEM, Logging),
    p("log_parameter_max_length_on_error", MEM, Logging),
    p("log_recovery_conflict_waits", Bool, Logging),
    p("log_timezone", Text, Logging),
    p(
        "client_min_messages",
        Enum(&[
            "debug5", "debug4", "debug3", "debug2", "debug1", "log", "notice", "warning", "error",
        ]),
        Logging,
    ),
    // Timeouts. The keepalives tune connections on the listener atrest
    // chose; they open none.
    p("statement_timeout", TIME, Timeouts),
    p("lock_timeout", TIME, Timeouts),
    p("idle_in_transaction_session_timeout", TIME, Timeouts),
    p("idle_session_timeout", TIME, Timeouts),
    p("deadlock_timeout", TIME, Timeouts),
    p("tcp_keepalives_idle", TIME, Timeouts),
    p("tcp_keepalives_interval", TIME, Timeouts),
    p("tcp_keepalives_count", INT, Timeouts),
    p("tcp_user_timeout", TIME, Timeouts),
    p("client_connection_check_interval", TIME, Timeouts),
    p("authentication_timeout", TIME, Timeouts),
    // Client defaults and statistics. PostgreSQL reads time zone data
    // and locales by these names only from its own directories (it skips
    // "." and ".." in zone names; the C library refuses a locale name
    // with a '/').
    p("timezone", Text, Client),
    p("datestyle", Text, Client),
    p(
        "intervalstyle",
        Enum(&["postgres", "postgres_verbose", "sql_standard", "iso_8601"]),
        Client,
    ),
    p("lc_monetary", Text, Client),
    p("lc_numeric", Text, Client),
    p("lc_time", Text, Client),
    p("client_encoding", Text, Client),
    p("default_text_search_config", Text, Client),
    p(
        "default_transaction_isolation",
        Enum(&[
            "serializable",
            "repeatable read",
            "read committed",
            "read uncommitted",
        ]),
        Client,
    ),
    p("default_transaction_read_only", Bool, Client),
    p("default_transaction_deferrable", Bool, Client),
    p("extra_float_digits", INT, Client),
    p("bytea_output", Enum(&["hex", "escape"]), Client),
    p("xmlbinary", Enum(&["base64", "hex"]), Client),
    p("xmloption", Enum(&["content", "document"]), Client),
    p("search_path", Text, Client),
    p("check_function_bodies", Bool, Client),
    p("default_toast_compression", Enum(&["pglz", "lz4"]), Client),
    p("gin_pending_list_limit", MEM, Client),
    p("gin_fuzzy_search_limit", INT, Client),
    p("row_security", Bool, Client),
    p("array_nulls", Bool, Client),
    p(
        "backslash_quote",
        Enum(&["safe_encoding", "on", "off"]),
        Client,
    ),
    p("escape_string_warning", Bool, Client),
    p("standard_conforming_strings", Bool, Client),
    p("quote_all_identifiers", Bool, Client),
    p("synchronize_seqscans", Bool, Client),
    p("transform_null_equals", Bool, Client),
    // Only scram-sha-256: atrest's pg_hba.conf asks every TCP client for
    // SCRAM, so a password stored as md5 could never log in.
    p("password_encryption", Enum(&["scram-sha-256"]), Client),
    p("track_activities", Bool, Client),
    p("track_counts", Bool, Client),
    p("track_io_timing", Bool, Client),
    p("track_wal_io_timing", Bool, Client),
    p("track_functions", Enum(&["none", "pl", "all"]), Client),
    p("track_activity_query_size", MEM, Client),
    // `regress` is for PostgreSQL's own regression tests.
    p("compute_query_id", Enum(&["auto", "on", "off"]), Client),
    p(
        "stats_fetch_consistency",
        Enum(&["none", "cache", "snapshot"]),
        Client,
    ),
    // Extensions: only the libraries of [`LIBRARIES`], and their settings.
    p("shared_preload_libraries", Libraries, Extensions),
    p("pg_stat_statements.max", INT, Extensions),
    p(
        "pg_stat_statements.track",
        Enum(&["none", "top", "all"]),
        Extensions,
    ),
    p("pg_stat_statements.track_utility", Bool, Extensions),
    p("pg_stat_statements.track_planning", Bool, Extensions),
    p("pg_stat_statements.save", Bool, Extensions),
    p("auto_explain.log_min_duration", TIME, Extensions),
    p("auto_explain.log_analyze", Bool, Extensions),
    p("auto_explain.log_buffers", Bool, Extensions),
    p("auto_explain.log_wal", Bool, Extensions),
    p("auto_explain.log_timing", Bool, Extensions),
    p("auto_explain.log_triggers", Bool, Extensions),
    p("auto_explain.log_verbose", Bool, Extensions),
    p("auto_explain.log_settings", Bool, Extensions),
    p("auto_explain.log_nested_statements", Bool, Extensions),
    p(
        "auto_explain.log_format",
        Enum(&["text", "xml", "json", "yaml"]),
        Extensions,
    ),
    p(
        "auto_explain.log_level",
        Enum(&[
            "debug5", "debug4", "debug3", "debug2", "debug1", "info", "notice", "warning", "log",
        ]),
        Extensions,
    ),
    p("auto_explain.sample_rate", REAL, Extensions),
    // The block list it saves is a fixed file in the data directory.
    p("pg_prewarm.autoprewarm", Bool, Extensions),
    p("pg_prewarm.autoprewarm_interval", TIME, Extensions),
];

/// Why a parameter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// Not the form of a PostgreSQL parameter name.
    #[error(
        "'{name}' is not a PostgreSQL parameter name (letters, digits, '_' and '.', at most 63 characters)"
    )]
    BadName {
        /// The name as given: its first 64 characters, escaped.
        name: String,
    },
    /// A parameter atrest does not let customers set.
    #[error(
        "parameter '{name}' cannot be set: it is not on atrest's allow-list, which admits only parameters that cannot reach files, programs, network listeners or replication (the list is in docs/db-parameters.md)"
    )]
    NotAllowed {
        /// The name, lowercase.
        name: String,
    },
    /// A value not of the parameter's form.
    #[error("the value of parameter '{name}' must be {expected}")]
    BadValue {
        /// The name, as PostgreSQL spells it.
        name: &'static str,
        /// What the value must be.
        expected: String,
    },
}

/// A parameter name's form, as PostgreSQL's parser takes it unquoted
/// (with dots for an extension's settings), and no longer than
/// PostgreSQL's identifiers.
fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

fn find(name: &str) -> Option<&'static Param> {
    // PostgreSQL's names ignore case (`DateStyle`, `TimeZone`).
    PARAMS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The allow-list's spelling of `name` (lowercase), if it is on the list.
pub(crate) fn normalize(name: &str) -> Option<&'static str> {
    find(name).map(|p| p.name)
}

fn bad_name(name: &str) -> ParamError {
    // Escaped and cut short: the name goes back to the client and the log.
    ParamError::BadName {
        name: name.chars().take(64).flat_map(char::escape_debug).collect(),
    }
}

fn not_allowed(name: &str) -> ParamError {
    ParamError::NotAllowed {
        name: name.to_ascii_lowercase(),
    }
}

/// Checks that `name` may be set to `value`; returns the name as
/// PostgreSQL spells it.
pub(crate) fn check(name: &str, value: &str) -> Result<&'static str, ParamError> {
    if !valid_name(name) {
        return Err(bad_name(name));
    }
    let p = find(name).ok_or_else(|| not_allowed(name))?;
    if value.len() > MAX_VALUE || value.chars().any(char::is_control) {
        return Err(ParamError::BadValue {
            name: p.name,
            expected: format!("at most {MAX_VALUE} characters, none of them control characters"),
        });
    }
    if !p.kind.accepts(value) {
        return Err(ParamError::BadValue {
            name: p.name,
            expected: p.kind.expected(),
        });
    }
    Ok(p.name)
}

/// Checks that `name` may be reset to PostgreSQL's default; returns the
/// name as PostgreSQL spells it.
pub(crate) fn check_reset(name: &str) -> Result<&'static str, ParamError> {
    if !valid_name(name) {
        return Err(bad_name(name));
    }
    normalize(name).ok_or_else(|| not_allowed(name))
}

/// The allow-list, in the documentation's order within each category.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "docs/db-parameters.md is generated by a test")
)]
pub(crate) fn allowed() -> impl Iterator<Item = (&'static str, Kind, Category)> {
    PARAMS.iter().map(|p| (p.name, p.kind, p.category))
}

impl fmt::Display for Kind {
    /// The short form for the documentation's tables.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |f: &mut fmt::Formatter<'_>, items: &[&str]| {
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "`{v}`")?;
            }
            Ok(())
        };
        match self {
            Self::Bool => f.write_str("boolean"),
            Self::Integer(Unit::None) => f.write_str("integer"),
            Self::Integer(Unit::Memory) => f.write_str("integer, memory unit"),
            Self::Integer(Unit::Time) => f.write_str("integer, time unit"),
            Self::Real(Unit::None) => f.write_str("number"),
            Self::Real(Unit::Memory) => f.write_str("number, memory unit"),
            Self::Real(Unit::Time) => f.write_str("number, time unit"),
            Self::Enum(values) => list(f, values),
            Self::Text => f.write_str("text"),
            Self::Libraries => {
                f.write_str("comma-separated list of ")?;
                list(f, &LIBRARIES)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameters that reach files, programs, listeners or replication, or
    /// that atrest's own operation depends on.
    const REFUSED: &[&str] = &[
        "port",
        "listen_addresses",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "include",
        "include_dir",
        "include_if_exists",
        "ssl",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_ca_file",
        "ssl_crl_file",
        "ssl_crl_dir",
        "ssl_dh_params_file",
        "ssl_passphrase_command",
        "ssl_ciphers",
        "ssl_min_protocol_version",
        "archive_mode",
        "archive_command",
        "archive_library",
        "archive_timeout",
        "restore_command",
        "archive_cleanup_command",
        "recovery_end_command",
        "recovery_target",
        "recovery_target_time",
        "recovery_target_action",
        "recovery_min_apply_delay",
        "recovery_prefetch",
        "recovery_init_sync_method",
        "primary_conninfo",
        "primary_slot_name",
        "promote_trigger_file",
        "wal_level",
        "max_wal_senders",
        "max_replication_slots",
        "hot_standby",
        "hot_standby_feedback",
        "synchronous_standby_names",
        "track_commit_timestamp",
        "vacuum_defer_cleanup_age",
        "fsync",
        "full_page_writes",
        "wal_sync_method",
        "logging_collector",
        "log_directory",
        "log_filename",
        "log_destination",
        "log_file_mode",
        "log_hostname",
        "dynamic_library_path",
        "session_preload_libraries",
        "local_preload_libraries",
        "krb_server_keyfile",
        "data_sync_retry",
        "zero_damaged_pages",
        "ignore_system_indexes",
        "allow_system_table_mods",
        "jit_provider",
        "shared_memory_type",
        "dynamic_shared_memory_type",
        "event_source",
        "superuser_reserved_connections",
        "wal_keep_size",
        "cluster_name",
        "bonjour",
        "extension_destdir",
        "default_tablespace",
        "temp_tablespaces",
        "timezone_abbreviations",
        "auto_explain.anything",
        "plpgsql.extra_warnings",
        "no_such_parameter",
    ];

    fn refused(name: &str) -> ParamError {
        ParamError::NotAllowed { name: name.into() }
    }

    #[test]
    fn refused_parameters_are_named_as_not_allowed() {
        for name in REFUSED {
            assert_eq!(check(name, "1"), Err(refused(name)), "{name}");
            assert_eq!(check_reset(name), Err(refused(name)), "{name}");
            assert_eq!(normalize(name), None, "{name}");
        }
        // Case does not get a name past the list.
        assert_eq!(check("Port", "1"), Err(refused("port")));
        let msg = check("archive_cleanup_command", "true")
            .unwrap_err()
            .to_string();
        for part in [
            "'archive_cleanup_command'",
            "allow-list",
            "files, programs, network listeners or replication",
            "docs/db-parameters.md",
        ] {
            assert!(msg.contains(part), "{msg}");
        }
    }

    #[test]
    fn the_table_is_lowercase_unique_and_valid() {
        let mut seen = std::collections::BTreeSet::new();
        for (name, kind, _) in allowed() {
            assert!(
                valid_name(name) && name == name.to_ascii_lowercase(),
                "{name}"
            );
            assert!(seen.insert(name), "{name} is listed twice");
            if let Enum(values) = kind {
                for v in values {
                    assert_eq!(*v, v.to_ascii_lowercase(), "{name}");
                    assert!(kind.accepts(v), "{name}");
                }
            }
        }
    }

    #[test]
    fn names_ignore_case_and_come_back_lowercase() {
        assert_eq!(normalize("DateStyle"), Some("datestyle"));
        assert_eq!(normalize("TimeZone"), Some("timezone"));
        assert_eq!(check("WORK_MEM", "64MB"), Ok("work_mem"));
        assert_eq!(check_reset("Work_Mem"), Ok("work_mem"));
        assert_eq!(
            check("PG_Stat_Statements.Max", "1000"),
            Ok("pg_stat_statements.max")
        );
        for bad in [
            "",
            "a b",
            "1work_mem",
            "work-mem",
            "_x",
            "work_mem\n",
            "é",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(check(bad, "1"), Err(ParamError::BadName { .. })),
                "{bad:?}"
            );
            assert!(
                matches!(check_reset(bad), Err(ParamError::BadName { .. })),
                "{bad:?}"
            );
        }
        // The name in the message is escaped and cut short.
        let e = check(&format!("a\n{}", "b".repeat(100)), "1").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("'a\\nbbb") && !msg.contains(&"b".repeat(64)),
            "{msg}"
        );
    }

    fn good(name: &str, values: &[&str]) {
        for v in values {
            assert_eq!(check(name, v), Ok(name), "{name} = {v:?}");
        }
    }

    fn bad(name: &str, values: &[&str]) {
        for v in values {
            assert!(
                matches!(check(name, v), Err(ParamError::BadValue { name: n, .. }) if n == name),
                "{name} = {v:?} was accepted"
            );
        }
    }

    #[test]
    fn values_are_checked_by_kind() {
        good(
            "jit",
            &["on", "off", "TRUE", "false", "yes", "No", "1", "0"],
        );
        bad("jit", &["", "maybe", "2", " on", "on "]);

        good("max_connections", &["100", "0", "-1", "50 "]);
        bad(
            "max_connections",
            &["", "-", "1.5", "0x10", "1e3", "100MB", "ten", "--1", "1 2"],
        );
        good(
            "work_mem",
            &["64MB", "65536", "64 MB", "1B", "8kB", "1GB", "1TB"],
        );
        bad("work_mem", &["64mb", "64KB", "64 M", "MB", "64MB;", "64ms"]);
        good(
            "statement_timeout",
            &["0", "-1", "30s", "500ms", "100us", "5min", "1h", "2d"],
        );
        bad("statement_timeout", &["30 sec", "1m", "30S", "1.5s"]);

        good(
            "random_page_cost",
            &["1.1", "4", ".5", "1.", "1e3", "2.5E-1", "-1"],
        );
        bad(
            "random_page_cost",
            &["", ".", "1e", "1.1.1", "inf", "nan", "1ms"],
        );
        good("vacuum_cost_delay", &["2", "2ms", "0.5 ms", "1s"]);
        bad("vacuum_cost_delay", &["2MB", "2 m"]);

        good("huge_pages", &["try", "ON", "off"]);
        bad("huge_pages", &["", "maybe", "tr"]);
        good(
            "default_transaction_isolation",
            &["read committed", "SERIALIZABLE"],
        );
        bad(
            "default_transaction_isolation",
            &["read  committed", "read_committed"],
        );

        good(
            "log_line_prefix",
            &["%m [%p] %q%u@%d ", "", "'quoted' \\ and # too"],
        );
        good("search_path", &["\"$user\", public"]);
        good("timezone", &["Europe/Paris", "UTC"]);
        bad("log_line_prefix", &["caf\u{e9}", "a\u{7f}b"]);

        // Every kind: no control characters and at most 1024 characters.
        for name in ["log_line_prefix", "work_mem", "jit", "search_path"] {
            bad(name, &["a\nb", "\t", "\0", "x\r"]);
        }
        good("log_line_prefix", &[&"x".repeat(1024)]);
        bad("log_line_prefix", &[&"x".repeat(1025)]);
    }

    #[test]
    fn libraries_are_named_from_the_list() {
        good(
            "shared_preload_libraries",
            &[
                "pg_stat_statements",
                "pg_stat_statements,auto_explain",
                "pg_stat_statements, auto_explain, pg_prewarm",
            ],
        );
        bad(
            "shared_preload_libraries",
            &[
                "pg_stat_statements,/tmp/evil",
                "/usr/lib/postgresql/15/lib/auto_explain",
                "$libdir/auto_explain",
                "auto_explain.so",
                "pg_stat_statements,",
                ",auto_explain",
                "pg_stat_statements,,auto_explain",
                "",
                " ",
                "plpgsql",
                "\"auto_explain\"",
                "Auto_Explain",
            ],
        );
    }

    #[test]
    fn errors_name_the_parameter_and_the_expected_form() {
        let e = check("work_mem", "lots").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the value of parameter 'work_mem' must be a whole number, optionally followed by a memory unit (B, kB, MB, GB, TB)"
        );
        let e = check("HUGE_PAGES", "maybe").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the value of parameter 'huge_pages' must be one of off, on, try"
        );
        let e = check("work_mem", "1\n2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the value of parameter 'work_mem' must be at most 1024 characters, none of them control characters"
        );
    }

    /// The line after which `docs/db-parameters.md` is generated.
    const GENERATED: &str = "<!-- Generated from crates/dbservice/src/params.rs: \
        ATREST_BLESS=1 cargo test -p atrest-dbservice params. Do not edit below. -->\n";

    fn render() -> String {
        use std::fmt::Write as _;
        let mut s = String::from(GENERATED);
        for c in Category::ALL {
            let _ = write!(
                s,
                "\n## {}\n\n| Parameter | Value |\n|---|---|\n",
                c.title()
            );
            for (name, kind, _) in allowed().filter(|&(_, _, cat)| cat == c) {
                let _ = writeln!(s, "| `{name}` | {kind} |");
            }
        }
        s
    }

    #[test]
    fn the_documentation_lists_the_allow_list() {
        for c in Category::ALL {
            assert!(allowed().any(|(_, _, cat)| cat == c), "{c:?} is empty");
        }
        let rows = render().lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(
            rows,
            PARAMS.len(),
            "a category is missing from Category::ALL"
        );

        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/db-parameters.md");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // The introduction above the marker is written by hand.
        let intro = text.split_once(GENERATED).map_or(text.as_str(), |(i, _)| i);
        let want = format!("{intro}{}", render());
        if std::env::var_os("ATREST_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, want).expect("writing docs/db-parameters.md");
        } else {
            assert!(
                text == want,
                "docs/db-parameters.md is not the allow-list; regenerate it with \
                 ATREST_BLESS=1 cargo test -p atrest-dbservice params"
            );
        }
    }

    /// Groups of `postgres --describe-config` whose parameters all reach
    /// files, programs, listeners or replication.
    fn refused_group(group: &str, name: &str) -> bool {
        match group {
            "File Locations"
            | "Write-Ahead Log / Archiving"
            | "Write-Ahead Log / Archive Recovery"
            | "Write-Ahead Log / Recovery Target"
            | "Connections and Authentication / SSL" => true,
            // Limits and keepalives on the listener atrest chose.
            "Connections and Authentication / Connection Settings" => {
                !(name.starts_with("tcp_")
                    || name == "max_connections"
                    || name == "client_connection_check_interval")
            }
            _ => group.starts_with("Replication"),
        }
    }

    #[test]
    fn the_allow_list_agrees_with_postgresql() {
        let bin = match crate::pg::PgBin::find(None) {
            Ok(b) => b,
            Err(e) => {
                println!("skipped: {e}");
                return;
            }
        };
        let out = std::process::Command::new(bin.program("postgres"))
            .arg("--describe-config")
            .output()
            .expect("running postgres --describe-config");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        // Tab-separated: name, context, group, type, then its value, bounds
        // and descriptions. Enum values are not listed (only the default).
        let described: std::collections::BTreeMap<String, (&str, &str)> = text
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f.len() >= 4).then(|| (f[0].to_ascii_lowercase(), (f[2], f[3])))
            })
            .collect();
        assert!(
            described.len() > 200,
            "unexpected --describe-config output: {text}"
        );
        for (name, kind, _) in allowed().filter(|(name, _, _)| !name.contains('.')) {
            let Some(&(group, ty)) = described.get(name) else {
                panic!("{name} is not among PostgreSQL's parameters");
            };
            let want = match kind {
                Bool => "BOOLEAN",
                Kind::Integer(_) => "INTEGER",
                Kind::Real(_) => "REAL",
                Enum(_) => "ENUM",
                Text | Libraries => "STRING",
            };
            assert_eq!(ty, want, "{name}");
            assert!(!refused_group(group, name), "{name} is in {group}");
        }
    }
}
