//! The `tiffin` command: runs the services, replays real orders against them, and
//! operates on a stopped system.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use tiffin_runtime::telemetry::{self, LogFormat};

use tiffin::cli::{
    AnalyticsCommand, Command, DeadLetterCommand, LogFormatArg, RoleArg, UsersCommand,
};
use tiffin::{demo, load, ops};
use tiffin_runtime::token::Role;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match tiffin::config::parse(std::env::args_os().collect()) {
        Ok(Ok(cli)) => cli,
        Ok(Err(error)) => error.exit(),
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let format = match cli.log_format {
        LogFormatArg::Pretty => LogFormat::Pretty,
        LogFormatArg::Json => LogFormat::Json,
    };
    // `up` is a server and logs its lifecycle; the other commands print their own
    // progress and log only problems.
    let default_filter = match cli.command {
        Command::Up(_) | Command::Serve(_) => "info,sqlx=warn",
        // The benchmark checks whether a RabbitMQ queue exists. The broker reports
        // a missing queue by closing the channel, which lapin logs as an error.
        Command::Bench(_) => "warn,sqlx=error,lapin::channel=off",
        _ => "warn,sqlx=error",
    };
    telemetry::init(format, default_filter, std::io::stderr);

    match run(cli.command).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` means it finished but found problems.
async fn run(command: Command) -> anyhow::Result<bool> {
    match command {
        Command::Up(args) => demo::up(args).await.map(|()| true),
        Command::Demo(args) => demo::demo(args).await,
        Command::Serve(args) => tiffin::serve::serve(args).await.map(|()| true),
        Command::Bench(args) => tiffin::bench::run(&args).await,
        Command::Load(args) => {
            let summary = load::run(load::LoadSettings {
                target: args.target.clone(),
                limit: args.limit,
                skip: args.replay.skip,
                speed: args.replay.speed,
                concurrency: args.replay.concurrency,
                customers: args.replay.customers,
                order_timeout: Duration::from_secs(args.replay.order_timeout_secs),
                cancel_rate: args.replay.cancel_rate,
                run_id: format!("load-{}", uuid::Uuid::now_v7()),
                progress: std::io::stderr().is_terminal(),
            })
            .await?;
            println!("{summary}");
            if let Some(path) = &args.report {
                demo::write_json(path, &summary)?;
            }
            Ok(summary.lost == 0 && summary.failed_total() == 0)
        }
        Command::Audit(args) => {
            let report = tiffin::audit::audit(
                &args.data.data_dir,
                i64::try_from(args.time_limit_secs)?.saturating_mul(1000),
            )
            .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{report}");
            }
            Ok(report.is_clean())
        }
        Command::Users(UsersCommand::Add {
            email,
            password,
            role,
            data,
        }) => {
            let role = match role {
                RoleArg::Customer => Role::Customer,
                RoleArg::Staff => Role::Staff,
                RoleArg::Admin => Role::Admin,
            };
            let url = tiffin_runtime::db::Database::sqlite_url(&data.data_dir, "auth");
            let id = tiffin_auth::create_user(&url, &email, &password, role).await?;
            println!("Created {role:?} account {email} with id {id}.");
            Ok(true)
        }
        Command::Analytics(AnalyticsCommand::Rebuild(data)) => {
            ops::rebuild_analytics(&data.data_dir).await.map(|()| true)
        }
        Command::DeadLetters(DeadLetterCommand::List(data)) => {
            ops::list_dead_letters(&data.data_dir).await.map(|()| true)
        }
        Command::DeadLetters(DeadLetterCommand::Replay { queue, data }) => {
            ops::replay_dead_letters(&data.data_dir, &queue)
                .await
                .map(|()| true)
        }
    }
}
