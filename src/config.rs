//! Settings from three places, in order of precedence: command-line flags,
//! `TIFFIN_...` environment variables, and a TOML file.
//!
//! Every long flag is a setting. Its environment variable is `TIFFIN_` followed by
//! the flag's name in capitals with `_` for `-` (`--queue-bus` is
//! `TIFFIN_QUEUE_BUS`), and its key in the file is the flag's name (`queue-bus` or
//! `queue_bus`). `--config` or `TIFFIN_CONFIG` names the file. Its keys apply to
//! every command that has the flag, so one file serves `up`, `serve` and `demo`:
//!
//! ```toml
//! bus = "amqp://guest:guest@127.0.0.1:5672/tiffin"
//! database = "postgres://tiffin:tiffin@127.0.0.1:5432/tiffin"
//! db-max-connections = 20
//! ```
//!
//! File values become the flags' defaults, so flags and environment variables
//! override them and clap validates them like any other value. A key that no
//! command accepts, or a value its flag rejects, stops the program with an error that
//! names the file, the key and what is accepted.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Arg, ArgAction, Command, CommandFactory as _, FromArgMatches as _};

use crate::cli::Cli;

/// Flags that are not settings.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "config"];

/// Parses the command line, reading the config file it names.
///
/// # Errors
///
/// Returns a clap error (which prints usage and exits with status 2 through
/// [`clap::Error::exit`]) for bad flags, and an error naming the file and key for a
/// bad config file.
pub fn parse(args: Vec<OsString>) -> anyhow::Result<Result<Cli, clap::Error>> {
    let file = match config_path(&args) {
        Some(path) => Some(read(&path)?),
        None => None,
    };
    let command = command(file.as_ref())?;
    Ok(command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches)))
}

/// A read config file.
#[derive(Debug)]
pub struct File {
    path: PathBuf,
    values: BTreeMap<String, Vec<String>>,
}

/// Reads the TOML file at `path`: a table of settings whose values are strings,
/// numbers, booleans or arrays of them.
///
/// # Errors
///
/// Fails when the file cannot be read or is not such a table.
pub fn read(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        let scalars = match value {
            toml::Value::Array(items) => items.into_iter().map(scalar).collect(),
            other => scalar(other).map(|one| vec![one]),
        };
        let Some(scalars) = scalars else {
            bail!(
                "setting `{key}` in config file {} must be a string, number, boolean or an array of them",
                path.display()
            );
        };
        values.insert(key.replace('_', "-"), scalars);
    }
    Ok(File {
        path: path.to_owned(),
        values,
    })
}

fn scalar(value: toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// Finds `--config PATH`, `--config=PATH` or `TIFFIN_CONFIG` before clap parses.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            break;
        }
        if text == "--config" {
            return args.next().map(PathBuf::from);
        }
        if let Some(path) = text.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("TIFFIN_CONFIG").map(PathBuf::from)
}

/// Returns the `tiffin` command with an environment variable on every setting and
/// the file's values as defaults.
///
/// # Errors
///
/// Fails when the file has a key that no command accepts or a value its flag
/// rejects.
pub fn command(file: Option<&File>) -> anyhow::Result<Command> {
    let mut used = Vec::new();
    let mut rejected = Vec::new();
    let command = apply(Cli::command(), file, &mut used, &mut rejected);
    if let Some(file) = file {
        if let Some(message) = rejected.into_iter().next() {
            bail!("config file {}: {message}", file.path.display());
        }
        let unknown: Vec<&String> = file
            .values
            .keys()
            .filter(|key| !used.contains(key))
            .collect();
        if let Some(key) = unknown.first() {
            let mut known = Vec::new();
            settings(&Cli::command(), &mut known);
            known.sort();
            known.dedup();
            bail!(
                "unknown setting `{key}` in config file {}; settings are the long flags of `tiffin help <command>` without dashes: {}",
                file.path.display(),
                known.join(", ")
            );
        }
    }
    Ok(command)
}

fn apply(
    command: Command,
    file: Option<&File>,
    used: &mut Vec<String>,
    rejected: &mut Vec<String>,
) -> Command {
    command
        .mut_args(|arg| setting(arg, file, used, rejected))
        .mut_subcommands(|sub| apply(sub, file, used, rejected))
}

fn setting(
    mut arg: Arg,
    file: Option<&File>,
    used: &mut Vec<String>,
    rejected: &mut Vec<String>,
) -> Arg {
    let Some(long) = arg.get_long().map(str::to_owned) else {
        return arg;
    };
    if NOT_SETTINGS.contains(&long.as_str()) {
        return arg;
    }
    if arg.get_env().is_none() {
        let name = format!("TIFFIN_{}", long.to_uppercase().replace('-', "_"));
        arg = arg.env(leak(name));
    }
    let Some(values) = file.and_then(|file| file.values.get(&long)) else {
        return arg;
    };
    used.push(long.clone());
    for value in values {
        // The flag alone, with the value as its default, parses it the way the real
        // command will, so the error can name the file and key.
        let check = Command::new("tiffin").arg(
            arg.clone()
                .env(None::<&'static str>)
                .required(false)
                .global(false)
                .default_value(leak(value.clone())),
        );
        if let Err(error) = check.try_get_matches_from(["tiffin"]) {
            let reason = error.to_string();
            let reason = reason
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            rejected.push(format!("setting `{long}`: {reason}"));
            return arg;
        }
    }
    if arg.is_hide_env_values_set() {
        // A setting whose environment value `--help` hides (a URL with a password)
        // must not show up there as a default either.
        arg = arg.hide_default_value(true);
    }
    match arg.get_action() {
        ArgAction::Append => arg.default_values(values.iter().map(|v| leak(v.clone()))),
        _ => arg.default_value(leak(values[values.len() - 1].clone())),
    }
}

fn settings(command: &Command, out: &mut Vec<String>) {
    for arg in command.get_arguments() {
        if let Some(long) = arg.get_long()
            && !NOT_SETTINGS.contains(&long)
        {
            out.push(long.to_owned());
        }
    }
    for sub in command.get_subcommands() {
        settings(sub, out);
    }
}

/// Clap keeps names and defaults for the life of the program, which is what a
/// leaked string lives for; this runs once at start.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command as Cmd;

    fn file(text: &str) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiffin.toml");
        std::fs::write(&path, text).unwrap();
        let file = read(&path).unwrap();
        (dir, file)
    }

    fn parse_with(file: &File, args: &[&str]) -> Cli {
        let matches = command(Some(file))
            .unwrap()
            .try_get_matches_from(args)
            .unwrap();
        Cli::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn file_sets_what_flags_leave_out() {
        let (_dir, file) = file("bus = \"amqp://127.0.0.1:5672/x\"\norders = 40\n");

        let cli = parse_with(&file, &["tiffin", "demo"]);

        let Cmd::Demo(args) = cli.command else {
            panic!("parsed as demo")
        };
        assert_eq!(args.orders, 40);
        assert_eq!(args.bus.bus, "amqp://127.0.0.1:5672/x");
    }

    #[test]
    fn admission_flags_set_order_service() {
        let (_dir, file) = file("waiting-after-ms = 500\n");

        let serve = parse_with(
            &file,
            &["tiffin", "serve", "orders", "--max-waiting-orders", "0"],
        );
        let up = parse_with(&file, &["tiffin", "up"]);

        let Cmd::Serve(serve) = serve.command else {
            panic!("parsed as serve")
        };
        let Cmd::Up(up) = up.command else {
            panic!("parsed as up")
        };
        let serve = serve.admission.settings();
        let up = up.admission.settings();
        assert_eq!(serve.max_waiting, None);
        assert_eq!(serve.waiting_after, std::time::Duration::from_millis(500));
        assert_eq!(up.max_waiting, Some(200));
    }

    #[test]
    fn flags_win_over_the_file() {
        let (_dir, file) = file("orders = 40\n");

        let cli = parse_with(&file, &["tiffin", "demo", "--orders", "7"]);

        let Cmd::Demo(args) = cli.command else {
            panic!("parsed as demo")
        };
        assert_eq!(args.orders, 7);
    }

    #[test]
    fn unknown_key_is_named_with_the_known_ones() {
        let (_dir, file) = file("oders = 40\n");

        let error = command(Some(&file)).unwrap_err().to_string();

        assert!(error.contains("unknown setting `oders`"), "{error}");
        assert!(error.contains("orders"), "{error}");
    }

    #[test]
    fn bad_value_names_setting_and_file() {
        let (_dir, file) = file("orders = \"many\"\n");

        let error = command(Some(&file)).unwrap_err().to_string();

        assert!(error.contains("setting `orders`"), "{error}");
        assert!(error.contains("tiffin.toml"), "{error}");
    }

    #[test]
    fn underscores_match_dashes() {
        let (_dir, file) = file("reject_rate = 0.25\n");

        let cli = parse_with(&file, &["tiffin", "demo"]);

        let Cmd::Demo(args) = cli.command else {
            panic!("parsed as demo")
        };
        assert!((args.simulation.reject_rate - 0.25).abs() < f64::EPSILON);
    }

    #[test]
    fn every_setting_has_an_environment_variable() {
        let command = command(None).unwrap();
        let demo = command.find_subcommand("demo").unwrap();

        let orders = demo
            .get_arguments()
            .find(|arg| arg.get_long() == Some("orders"))
            .unwrap();

        assert_eq!(
            orders.get_env(),
            Some(std::ffi::OsStr::new("TIFFIN_ORDERS"))
        );
    }
}
