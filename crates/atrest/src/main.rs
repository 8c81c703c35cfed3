//! `atrest`: the command-line entry point. Parses arguments and hands off to
//! the library crates; holds no logic of its own.

#![allow(
    clippy::print_stderr,
    reason = "a command-line tool reports its errors on stderr"
)]

mod admin;
mod cli;
mod db;
mod db_agent;
mod disks;
mod heap;
mod output;
mod projects;
mod provider;
mod root_args;
mod serve;
mod store;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(heap::on_park)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("atrest: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Serve(args) => serve::run(*args).await,
            cli::Command::Admin(args) => admin::run(args).await,
            cli::Command::Audit(args) => admin::audit(*args).await,
            cli::Command::Metering(args) => admin::metering(args).await,
            cli::Command::Node(args) => admin::node(args).await,
            cli::Command::Disk(args) => disks::disk(args).await,
            cli::Command::Snapshot(args) => disks::snapshot(args).await,
            cli::Command::Recover(args) => disks::recover(*args).await,
            cli::Command::Store(args) => store::run(args).await,
            cli::Command::Nbd(args) => disks::nbd(&args),
            cli::Command::Db(args) => db::db(args).await,
            cli::Command::DbAgent(args) => db_agent::run(&args),
            cli::Command::Provider(args) => provider::run(args).await,
            cli::Command::Project(args) => projects::project(args).await,
            cli::Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut cli::Cli::command(),
                    "atrest",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("atrest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
