//! `atrest db-agent`: the WAL agent PostgreSQL runs as its
//! `archive_command` and `restore_command`. It talks to the server over
//! its Unix socket; the server encrypts and decrypts (see
//! `atrest_dbservice::agent`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct DbAgentArgs {
    #[command(subcommand)]
    pub command: DbAgentCommand,
}

/// Where the server is and who is asking.
#[derive(Debug, Args)]
pub struct AgentTarget {
    /// The server's agent socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// The instance's id.
    #[arg(long)]
    pub instance: String,
    /// The file holding the instance's agent token.
    #[arg(long)]
    pub token_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DbAgentCommand {
    /// Archive a WAL file (archive_command '... %p %f').
    WalPush {
        #[command(flatten)]
        target: AgentTarget,
        /// The file (%p, relative to the data directory).
        path: PathBuf,
        /// Its name (%f).
        name: String,
    },
    /// Fetch an archived WAL file (restore_command '... %f %p'); fails if
    /// it is not archived.
    WalFetch {
        #[command(flatten)]
        target: AgentTarget,
        /// Its name (%f).
        name: String,
        /// Where to write it (%p).
        path: PathBuf,
    },
}

pub fn run(args: &DbAgentArgs) -> anyhow::Result<()> {
    use atrest_dbservice::agent;
    match &args.command {
        DbAgentCommand::WalPush { target, path, name } => agent::wal_push(
            &target.socket,
            &target.instance,
            &target.token_file,
            path,
            name,
        )?,
        DbAgentCommand::WalFetch { target, name, path } => agent::wal_fetch(
            &target.socket,
            &target.instance,
            &target.token_file,
            name,
            path,
        )?,
    }
    Ok(())
}
