//! The command line, defined once: help and parsing come from here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Encryption at rest with keys you control: an AWS KMS-compatible key
/// service (and, in later releases, encrypted disks and databases).
#[derive(Debug, Parser)]
#[command(name = "atrest", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: the AWS KMS API (and the admin REST API) on one listener.
    Serve(Box<ServeArgs>),
    /// Administer accounts and access keys on a running server.
    Admin(AdminArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ATREST_LISTEN", default_value = atrest_server::config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The data dir [default: $XDG_DATA_HOME/atrest, else ~/.local/share/atrest].
    #[arg(long, env = "ATREST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Region to serve; repeat for several. The first start's regions are not
    /// fixed: regions can be added later.
    #[arg(long = "region", env = "ATREST_REGIONS", value_delimiter = ',', default_value = atrest_server::config::DEFAULT_REGION)]
    pub regions: Vec<String>,
    /// Root key file (32 bytes, mode 0600), created on first start
    /// [default: <data-dir>.root.key, beside the data dir].
    #[arg(
        long,
        env = "ATREST_ROOT_KEY_FILE",
        conflicts_with = "root_passphrase_file"
    )]
    pub root_key_file: Option<PathBuf>,
    /// Seal the data dir with a passphrase read from this file (argon2id)
    /// instead of a key file. ATREST_ROOT_PASSPHRASE may hold it instead.
    #[arg(long, env = "ATREST_ROOT_PASSPHRASE_FILE")]
    pub root_passphrase_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow plain HTTP on a non-loopback address (only behind a TLS proxy).
    #[arg(long)]
    pub allow_plaintext_remote: bool,
    /// Seconds between runs of the rotation and deletion schedule.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub lifecycle_interval: u64,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Testing only: shift the clock of rotation and deletion schedules by
    /// this many days (request signing still uses the real clock).
    #[arg(long, hide = true, default_value_t = 0, allow_negative_numbers = true)]
    pub lifecycle_clock_offset_days: i64,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's URL.
    #[arg(
        long,
        global = true,
        env = "ATREST_ENDPOINT",
        default_value = "http://127.0.0.1:7070"
    )]
    pub endpoint: String,
    /// Region to sign requests for.
    #[arg(long, global = true, env = "AWS_REGION", default_value = atrest_server::config::DEFAULT_REGION)]
    pub region: String,
    /// Profile in the credentials file.
    #[arg(long, global = true, env = "AWS_PROFILE", default_value = "default")]
    pub profile: String,
    /// AWS shared-credentials file [default: ~/.aws/credentials]. The
    /// variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY take precedence.
    #[arg(long, global = true, env = "AWS_SHARED_CREDENTIALS_FILE")]
    pub credentials_file: Option<PathBuf>,
    /// PEM file of the CA certificates to trust for an https endpoint.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Access keys.
    #[command(subcommand, name = "access-key")]
    AccessKey(AccessKeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account.
    Create {
        /// The 12-digit account id [default: random].
        #[arg(long)]
        id: Option<String>,
        /// Make it an admin account.
        #[arg(long)]
        admin: bool,
    },
    /// List accounts.
    List,
}

#[derive(Debug, Subcommand)]
pub enum AccessKeyCommand {
    /// Create an access key for an account; prints its secret once.
    Create {
        /// The account.
        #[arg(long)]
        account: String,
    },
    /// Import an existing access key pair (for users moving from another
    /// KMS). The secret is read from a file, or from standard input, never
    /// from the command line.
    Import {
        /// The account.
        #[arg(long)]
        account: String,
        /// The access key id.
        #[arg(long)]
        access_key_id: String,
        /// File holding the secret access key [default: read standard input].
        #[arg(long)]
        secret_access_key_file: Option<PathBuf>,
    },
    /// List an account's access keys.
    List {
        /// The account.
        #[arg(long)]
        account: String,
    },
}
