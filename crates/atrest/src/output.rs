//! How the CLI finds its server (profiles) and prints answers (tables or
//! JSON).
//!
//! A profile is a section of the atrest config file (`ATREST_CONFIG_FILE`,
//! else `$XDG_CONFIG_HOME/atrest/config`, else `~/.config/atrest/config`):
//!
//! ```ini
//! [default]
//! endpoint = https://atrest.internal:7070
//! region = eu-west-1
//! ca_file = /etc/atrest/ca.pem
//! credentials_file = /home/me/.aws/credentials
//! ```
//!
//! A flag or environment variable wins over the profile, which wins over
//! the built-in defaults. Credentials stay in the AWS credentials file (or
//! the environment), never in the config file.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{ClientArgs, Output};

/// Where to reach the server, as flags, environment and profile resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The server's URL.
    pub endpoint: String,
    /// The region requests are signed for.
    pub region: String,
    /// CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// The AWS shared-credentials file.
    pub credentials_file: Option<PathBuf>,
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ATREST_CONFIG_FILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("atrest/config"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/atrest/config"))
}

/// The `profile` section of an INI text: key → value.
fn profile_section(text: &str, profile: &str) -> anyhow::Result<Option<Vec<(String, String)>>> {
    let mut current: Option<String> = None;
    let mut found: Option<Vec<(String, String)>> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            current = Some(name.to_owned());
            if name == profile {
                found.get_or_insert_with(Vec::new);
            }
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("line {}: expected `key = value` or `[profile]`", n + 1);
        };
        if current.as_deref() == Some(profile)
            && let Some(f) = found.as_mut()
        {
            f.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    Ok(found)
}

/// Resolves the server settings for `args`.
pub fn settings(args: &ClientArgs) -> anyhow::Result<Settings> {
    let mut s = Settings {
        endpoint: "http://127.0.0.1:7070".into(),
        region: atrest_server::config::DEFAULT_REGION.into(),
        ca_file: None,
        credentials_file: None,
    };
    if let Some(path) = config_path()
        && let Ok(text) = std::fs::read_to_string(&path)
    {
        let section =
            profile_section(&text, &args.profile).with_context(|| format!("{}", path.display()))?;
        for (k, v) in section.unwrap_or_default() {
            match k.as_str() {
                "endpoint" => s.endpoint = v,
                "region" => s.region = v,
                "ca_file" => s.ca_file = Some(PathBuf::from(v)),
                "credentials_file" => s.credentials_file = Some(PathBuf::from(v)),
                other => bail!(
                    "{}: unknown setting `{other}` in profile {} (known: endpoint, region, ca_file, credentials_file)",
                    path.display(),
                    args.profile
                ),
            }
        }
    }
    if let Some(e) = &args.endpoint {
        s.endpoint.clone_from(e);
    }
    if let Some(r) = &args.region {
        s.region.clone_from(r);
    }
    if args.ca_file.is_some() {
        s.ca_file.clone_from(&args.ca_file);
    }
    if args.credentials_file.is_some() {
        s.credentials_file.clone_from(&args.credentials_file);
    }
    Ok(s)
}

static FORMAT: OnceLock<Output> = OnceLock::new();

/// Chooses how answers are printed (once, from the command's flags).
pub fn set_format(f: Output) {
    let _ = FORMAT.set(f);
}

/// The chosen format.
#[must_use]
pub fn format() -> Output {
    FORMAT.get().copied().unwrap_or(Output::Json)
}

/// Prints an answer in the chosen format.
pub fn emit(v: &Value) -> anyhow::Result<()> {
    match FORMAT.get().copied().unwrap_or(Output::Json) {
        Output::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Output::Table => print!("{}", table(v)),
    }
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(cell).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// Whether a member of this name holds a count of bytes (`size`,
/// `block_size`, `uploaded_bytes`, ...), shown in binary units in tables.
fn is_size(name: &str) -> bool {
    name == "size" || name == "bytes" || name.ends_with("_size") || name.ends_with("_bytes")
}

/// `n` bytes in the largest binary unit it reaches: exact when it is a
/// whole number of that unit (`1 GiB`), else to one decimal (`1.5 GiB`).
/// Tables show this; JSON keeps the exact bytes.
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scale: u64 = 1024;
    while unit + 1 < UNITS.len() && n / scale >= 1024 {
        unit += 1;
        scale *= 1024;
    }
    if n.is_multiple_of(scale) {
        format!("{} {}", n / scale, UNITS[unit])
    } else {
        // Tenths, rounded down, so that a size is never shown larger than it is.
        let tenths = u128::from(n) * 10 / u128::from(scale);
        format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// A member's cell: sizes in binary units, the rest as [`cell`].
fn member_cell(name: &str, v: &Value) -> String {
    match v.as_u64() {
        Some(n) if is_size(name) => human_bytes(n),
        _ => cell(v),
    }
}

fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == r.len() {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A list of objects as a table: one row each, a column per member.
fn list_table(items: &[Value]) -> String {
    let mut names: Vec<String> = Vec::new();
    for it in items {
        if let Some(o) = it.as_object() {
            for k in o.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
    }
    if names.is_empty() {
        return items.iter().map(|v| format!("{}\n", cell(v))).collect();
    }
    let mut rows = vec![names.iter().map(|n| n.to_uppercase()).collect::<Vec<_>>()];
    for it in items {
        rows.push(
            names
                .iter()
                .map(|n| member_cell(n, &it[n.as_str()]))
                .collect(),
        );
    }
    columns(&rows)
}

/// An answer for people: a list (the one array member of the answer, or
/// the answer itself) as columns, anything else as `field  value` lines.
#[must_use]
pub fn table(v: &Value) -> String {
    match v {
        Value::Array(items) => list_table(items),
        Value::Object(o) => {
            let lists: Vec<&String> = o
                .iter()
                .filter(|(_, v)| v.as_array().is_some_and(|a| a.iter().all(Value::is_object)))
                .map(|(k, _)| k)
                .collect();
            if let [only] = lists.as_slice() {
                let mut out = match o[only.as_str()].as_array() {
                    Some(items) if items.is_empty() => format!("(no {only})\n"),
                    Some(items) => list_table(items),
                    None => String::new(),
                };
                let rest: Vec<Vec<String>> = o
                    .iter()
                    .filter(|(k, _)| k != only)
                    .map(|(k, v)| vec![k.clone(), member_cell(k, v)])
                    .collect();
                out.push_str(&columns(&rest));
                return out;
            }
            columns(
                &o.iter()
                    .map(|(k, v)| vec![k.clone(), member_cell(k, v)])
                    .collect::<Vec<_>>(),
            )
        }
        other => format!("{}\n", cell(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_become_columns_and_resources_field_lines() {
        let t = table(&json!({"disks": [
            {"id": "disk-1", "size": 1048576, "encrypted": true},
            {"id": "disk-22", "size": 4096, "encrypted": false, "key_arn": "arn:k"}
        ], "next_token": "x"}));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ENCRYPTED", "ID", "SIZE", "KEY_ARN"]
        );
        assert!(
            lines[1].starts_with("true")
                && lines[1].contains("disk-1")
                && lines[1].contains("  1 MiB  ")
                && lines[1].ends_with('-'),
            "{t}"
        );
        assert!(
            lines[2].contains("disk-22") && lines[2].ends_with("arn:k"),
            "{t}"
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["next_token", "x"]
        );

        let t = table(
            &json!({"id": "prj-1", "keys": {"us-east-1": {"key_arn": "k"}}, "paused": false, "tags": ["a", "b"]}),
        );
        assert!(t.contains("id      prj-1\n"), "{t}");
        assert!(
            t.contains(r#"keys    {"us-east-1":{"key_arn":"k"}}"#),
            "{t}"
        );
        assert!(t.contains("tags    a,b\n"), "{t}");
        assert_eq!(table(&json!({"disks": []})), "(no disks)\n");
    }

    #[test]
    fn sizes_show_in_binary_units_in_tables_and_exactly_in_json() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(1 << 30), "1 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        // Never shown larger than it is.
        assert_eq!(human_bytes((2 << 30) - 1), "1.9 GiB");
        assert_eq!(human_bytes(u64::MAX), "15.9 EiB");
        let t = table(
            &json!({"id": "disk-1", "size": 1_073_741_824_u64, "block_size": 4096,
                              "uploaded_bytes": 1536, "count": 2048, "size_note": "x"}),
        );
        assert!(t.contains("size            1 GiB\n"), "{t}");
        assert!(t.contains("block_size      4 KiB\n"), "{t}");
        assert!(t.contains("uploaded_bytes  1.5 KiB\n"), "{t}");
        assert!(t.contains("count           2048\n"), "{t}");
        assert!(t.contains("size_note       x\n"), "{t}");
    }

    #[test]
    fn profiles_are_ini_sections() {
        let text = "# comment\n[default]\nendpoint = http://a:1\n\n[profile prod]\nendpoint = https://b\nregion = eu-west-1\n";
        assert_eq!(
            profile_section(text, "prod").unwrap().unwrap(),
            vec![
                ("endpoint".to_owned(), "https://b".to_owned()),
                ("region".to_owned(), "eu-west-1".to_owned())
            ]
        );
        assert_eq!(profile_section(text, "default").unwrap().unwrap().len(), 1);
        assert!(profile_section(text, "none").unwrap().is_none());
        assert!(profile_section("[x]\nnot a pair\n", "x").is_err());
    }
}
