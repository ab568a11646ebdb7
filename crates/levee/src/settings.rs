//! Where `levee serve` (and `levee demo`) take their settings from, lowest precedence first:
//! the defaults, a TOML file (`--config FILE`), the environment (`LEVEE_<FLAG>`, for example
//! `LEVEE_RING_CHUNKS`), then the flags.
//!
//! The file's keys are the long flags (`ring-chunks = 512`, or `ring_chunks`); a list flag
//! takes an array (`allow = ["127.0.0.1/32"]`). An unknown key, a value of the wrong kind or one
//! its flag refuses stops the start with the key, the file and the line. A list given by a
//! flag or the environment replaces the file's list.

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};
use std::ffi::OsString;

/// Subcommands whose flags a file and the environment may set.
const CONFIGURABLE: [&str; 2] = ["serve", "demo"];

/// The environment variable of the long flag `long`.
pub fn env_name(long: &str) -> String {
    format!("LEVEE_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// The command line interface, every flag of the configurable subcommands also read from its
/// environment variable.
pub fn command<C: CommandFactory>() -> Command {
    let mut cmd = C::command();
    for name in CONFIGURABLE {
        if cmd.find_subcommand(name).is_none() {
            continue;
        }
        cmd = cmd.mut_subcommand(name, |sub| {
            sub.mut_args(|a| match a.get_long().map(env_name) {
                Some(env) if a.get_env().is_none() && a.get_id() != "help" => a.env(env),
                _ => a,
            })
        });
    }
    cmd
}

/// Parses `args` with the file named by `--config` (or `LEVEE_CONFIG`) folded in. A command
/// line error (or `--help`) exits as clap does; a settings file error is returned.
pub fn parse<C: CommandFactory + FromArgMatches>(args: Vec<OsString>) -> Result<C, String> {
    let cmd = command::<C>();
    let matches = cmd
        .clone()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| e.exit());
    let Some((sub, sub_matches)) = matches.subcommand() else {
        return C::from_arg_matches(&matches).map_err(|e| e.to_string());
    };
    let Some(path) = CONFIGURABLE
        .contains(&sub)
        .then(|| sub_matches.get_one::<std::path::PathBuf>("config"))
        .flatten()
    else {
        return C::from_arg_matches(&matches).map_err(|e| e.to_string());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the settings file {}: {e}", path.display()))?;
    let sub_cmd = cmd
        .find_subcommand(sub)
        .expect("the subcommand was just parsed");
    let from_file =
        file_args(&text, sub_cmd, sub_matches).map_err(|e| format!("{}: {e}", path.display()))?;
    // The file's flags go right after the subcommand, so that the command line's own come later.
    let at = args
        .iter()
        .position(|a| a.to_str() == Some(sub))
        .map_or(args.len(), |i| i + 1);
    let mut all = args[..at].to_vec();
    all.extend(from_file.into_iter().map(OsString::from));
    all.extend_from_slice(&args[at..]);
    let matches = cmd.try_get_matches_from(all).unwrap_or_else(|e| e.exit());
    C::from_arg_matches(&matches).map_err(|e| e.to_string())
}

/// The line (1-based) where `key` is set in `text`.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

/// The flags a settings file gives, checked one by one against `sub`'s own parser, leaving out
/// those the command line or the environment already set.
pub fn file_args(text: &str, sub: &Command, given: &ArgMatches) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let line = line_of(text, key);
        let at = |msg: String| format!("line {line}: {msg}");
        let long = key.replace('_', "-");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config" && long != "help")
            .ok_or_else(|| {
                at(format!(
                    "unknown key `{key}` (the keys are the long flags of `levee {}`; see --help)",
                    sub.get_name()
                ))
            })?;
        let already = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(at(format!(
                "`{key}` takes a string or a number, not {}",
                other.type_str()
            ))),
        };
        let values = match value {
            toml::Value::Array(_) if !matches!(arg.get_action(), clap::ArgAction::Append) => {
                return Err(at(format!("`{key}` takes one value, not a list")));
            }
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v)?],
        };
        for v in &values {
            let flag = format!("--{long}={v}");
            sub.clone()
                .no_binary_name(true)
                .try_get_matches_from([flag.as_str()])
                .map_err(|e| {
                    let why = e.render().to_string();
                    let first = why.lines().next().unwrap_or("invalid value").trim();
                    at(format!(
                        "`{key}` = {v}: {}",
                        first.trim_start_matches("error: ")
                    ))
                })?;
            if !already {
                out.push(flag);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Sub {
        Serve(Args),
    }

    #[derive(clap::Args, Debug)]
    #[command(args_override_self = true)]
    struct Args {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 256)]
        ring_chunks: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        stall_timeout: std::time::Duration,
        #[arg(long = "allow")]
        allow: Vec<String>,
    }

    fn given(args: &[&str]) -> (Command, ArgMatches) {
        let cmd = command::<Cli>();
        let m = cmd.clone().try_get_matches_from(args).unwrap();
        let sub = m.subcommand_matches("serve").unwrap().clone();
        (cmd.find_subcommand("serve").unwrap().clone(), sub)
    }

    #[test]
    fn a_file_gives_flags_that_the_command_line_overrides() {
        let (sub, m) = given(&["levee", "serve", "--ring-chunks", "9"]);
        let text =
            "ring-chunks = 512\nstall_timeout = \"3s\"\nallow = [\"127.9.0.0/16\", \"::1/128\"]\n";
        let args = file_args(text, &sub, &m).unwrap();
        assert_eq!(
            args,
            [
                "--allow=127.9.0.0/16",
                "--allow=::1/128",
                "--stall-timeout=3s"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_line() {
        let (sub, m) = given(&["levee", "serve"]);
        let e = file_args("ring-chunks = 4\n\nring_chunkz = 5\n", &sub, &m).unwrap_err();
        assert!(e.starts_with("line 3: unknown key `ring_chunkz`"), "{e}");
        let e = file_args("# a comment\nstall-timeout = \"soon\"\n", &sub, &m).unwrap_err();
        assert!(e.starts_with("line 2: `stall-timeout` = soon:"), "{e}");
        let e = file_args("ring-chunks = -3\n", &sub, &m).unwrap_err();
        assert!(e.starts_with("line 1: `ring-chunks` = -3:"), "{e}");
        let e = file_args("ring-chunks = [1, 2]\n", &sub, &m).unwrap_err();
        assert!(
            e.starts_with("line 1: `ring-chunks` takes one value, not a list"),
            "{e}"
        );
        let e = file_args("ring-chunks = { a = 1 }\n", &sub, &m).unwrap_err();
        assert!(e.contains("takes a string or a number"), "{e}");
        let e = file_args("ring-chunks = = 4\n", &sub, &m).unwrap_err();
        assert!(
            e.contains("line 1"),
            "a TOML syntax error names its line: {e}"
        );
    }

    #[test]
    fn a_later_flag_overrides_an_earlier_one_and_lists_still_append() {
        let cli = Cli::try_parse_from([
            "levee",
            "serve",
            "--ring-chunks=5",
            "--allow=a",
            "--ring-chunks",
            "7",
            "--allow",
            "b",
        ])
        .unwrap();
        let Sub::Serve(a) = cli.command;
        assert_eq!(a.ring_chunks, 7);
        assert_eq!(a.allow, ["a", "b"]);
    }

    #[test]
    fn the_environment_sits_between_the_file_and_the_flags() {
        assert_eq!(env_name("ring-chunks"), "LEVEE_RING_CHUNKS");
        let cmd = command::<Cli>();
        let sub = cmd.find_subcommand("serve").unwrap();
        let ring = sub
            .get_arguments()
            .find(|a| a.get_long() == Some("ring-chunks"))
            .unwrap();
        assert_eq!(ring.get_env().unwrap(), "LEVEE_RING_CHUNKS");
    }
}
