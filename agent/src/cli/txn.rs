//! `edgeconf txn`: a transaction written as etcdctl reads one, from
//! standard input (or typed, with `-i`): comparisons, a blank line, the
//! requests if they hold, a blank line, the requests if not.
//!
//! ```text
//! mod("/app/config") > "0"
//! value("/app/mode") = "blue"
//!
//! put /app/mode green
//! get /app/config
//!
//! put /app/mode blue
//! ```

use std::io::BufRead as _;

use anyhow::{bail, Context as _};
use clap::Args;
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde_json::json;

use super::output::{lossy, print_json, Format};
use super::Client;

#[derive(Debug, Args)]
pub struct TxnArgs {
    /// Prompt for each part (as etcdctl txn -i).
    #[arg(short, long)]
    pub interactive: bool,
}

/// A comparison: `TARGET("KEY") OP "VALUE"`.
#[derive(Debug, PartialEq, Eq)]
pub struct CompareLine {
    target: String,
    key: String,
    op: CompareOp,
    value: String,
}

/// A request: `get KEY [END] [--prefix]`, `put KEY VALUE`, `del KEY [END]
/// [--prefix]`.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestLine {
    Get {
        key: String,
        end: Option<String>,
        prefix: bool,
    },
    Put {
        key: String,
        value: String,
    },
    Del {
        key: String,
        end: Option<String>,
        prefix: bool,
    },
}

/// Splits a line into words; double quotes group words and may hold
/// `\"` and `\\`.
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quote is not closed".into()),
                    Some('"') => break,
                    Some('\\') => word.push(chars.next().ok_or("a line ends in \\")?),
                    Some(other) => word.push(other),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

pub fn parse_compare(line: &str) -> Result<CompareLine, String> {
    let expected = || {
        format!("{line:?}: expected TARGET(\"KEY\") OP \"VALUE\", e.g. mod(\"/k\") > \"0\" (TARGET: value, mod, create, version, lease; OP: =, !=, <, >)")
    };
    let (target, rest) = line.trim().split_once('(').ok_or_else(expected)?;
    let (key, rest) = rest.split_once(')').ok_or_else(expected)?;
    let key = words(key)?.pop().ok_or_else(expected)?;
    let mut rest = words(rest)?;
    let (Some(value), Some(op), true) = (rest.pop(), rest.pop(), rest.is_empty()) else {
        return Err(expected());
    };
    let op = match op.as_str() {
        "=" | "==" => CompareOp::Equal,
        "!=" => CompareOp::NotEqual,
        "<" => CompareOp::Less,
        ">" => CompareOp::Greater,
        _ => return Err(expected()),
    };
    let target = target.trim().to_lowercase();
    if !["value", "val", "mod", "create", "version", "ver", "lease"].contains(&target.as_str()) {
        return Err(expected());
    }
    Ok(CompareLine {
        target,
        key,
        op,
        value,
    })
}

pub fn parse_request(line: &str) -> Result<RequestLine, String> {
    let mut words = words(line)?;
    let prefix = words.iter().any(|w| w == "--prefix");
    words.retain(|w| w != "--prefix");
    let expected = || {
        format!("{line:?}: expected get KEY [END] [--prefix], put KEY VALUE or del KEY [END] [--prefix]")
    };
    match words
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["get", key] => Ok(RequestLine::Get {
            key: key.to_string(),
            end: None,
            prefix,
        }),
        ["get", key, end] => Ok(RequestLine::Get {
            key: key.to_string(),
            end: Some(end.to_string()),
            prefix,
        }),
        ["put", key, value] if !prefix => Ok(RequestLine::Put {
            key: key.to_string(),
            value: value.to_string(),
        }),
        ["del", key] => Ok(RequestLine::Del {
            key: key.to_string(),
            end: None,
            prefix,
        }),
        ["del", key, end] => Ok(RequestLine::Del {
            key: key.to_string(),
            end: Some(end.to_string()),
            prefix,
        }),
        _ => Err(expected()),
    }
}

fn compare(line: &CompareLine) -> anyhow::Result<Compare> {
    let number = || {
        line.value.parse::<i64>().with_context(|| {
            format!(
                "{}(\"{}\"): {:?} is not a number",
                line.target, line.key, line.value
            )
        })
    };
    Ok(match line.target.as_str() {
        "value" | "val" => Compare::value(line.key.clone(), line.op, line.value.clone()),
        "mod" => Compare::mod_revision(line.key.clone(), line.op, number()?),
        "create" => Compare::create_revision(line.key.clone(), line.op, number()?),
        "version" | "ver" => Compare::version(line.key.clone(), line.op, number()?),
        _ => Compare::lease(line.key.clone(), line.op, number()?),
    })
}

fn request(line: &RequestLine) -> TxnOp {
    match line {
        RequestLine::Get { key, end, prefix } => {
            let mut options = GetOptions::new();
            if *prefix {
                options = options.with_prefix();
            } else if let Some(end) = end {
                options = options.with_range(end.clone());
            }
            TxnOp::get(key.clone(), Some(options))
        }
        RequestLine::Put { key, value } => TxnOp::put(key.clone(), value.clone(), None),
        RequestLine::Del { key, end, prefix } => {
            let mut options = DeleteOptions::new();
            if *prefix {
                options = options.with_prefix();
            } else if let Some(end) = end {
                options = options.with_range(end.clone());
            }
            TxnOp::delete(key.clone(), Some(options))
        }
    }
}

/// Reads lines until a blank one (or the end), prompting first if asked.
fn section(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    prompt: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    if let Some(prompt) = prompt {
        println!("{prompt}");
    }
    let mut section = Vec::new();
    for line in lines {
        let line = line.context("cannot read standard input")?;
        if line.trim().is_empty() {
            break;
        }
        section.push(line);
    }
    Ok(section)
}

pub async fn txn(client: &Client, format: Format, args: TxnArgs) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let prompt = |text: &'static str| args.interactive.then_some(text);
    let compares = section(&mut lines, prompt("compares:"))?;
    let success = section(&mut lines, prompt("\nsuccess requests (get, put, del):"))?;
    let failure = section(&mut lines, prompt("\nfailure requests (get, put, del):"))?;
    let parse = |lines: &[String]| -> anyhow::Result<Vec<TxnOp>> {
        lines
            .iter()
            .map(|line| {
                parse_request(line)
                    .map(|r| request(&r))
                    .map_err(anyhow::Error::msg)
            })
            .collect()
    };
    let compares: Vec<Compare> = compares
        .iter()
        .map(|line| {
            parse_compare(line)
                .map_err(anyhow::Error::msg)
                .and_then(|c| compare(&c))
        })
        .collect::<anyhow::Result<_>>()?;
    if compares.is_empty() && success.is_empty() && failure.is_empty() {
        bail!("an empty transaction: give comparisons, a blank line, success requests, a blank line, failure requests");
    }
    let txn = Txn::new()
        .when(compares)
        .and_then(parse(&success)?)
        .or_else(parse(&failure)?);
    let mut etcd = client.etcd().await?;
    let response = client.request(etcd.txn(txn)).await?;
    match format {
        Format::Json => print_json(&json!({
            "succeeded": response.succeeded(),
            "responses": response.op_responses().iter().map(|op| match op {
                TxnOpResponse::Get(get) => json!({"kvs": get.kvs().iter().map(super::output::kv_json).collect::<Vec<_>>()}),
                TxnOpResponse::Put(_) => json!({"put": "OK"}),
                TxnOpResponse::Delete(del) => json!({"deleted": del.deleted()}),
                TxnOpResponse::Txn(_) => json!({"txn": true}),
            }).collect::<Vec<_>>(),
        })),
        _ => {
            println!(
                "{}",
                if response.succeeded() {
                    "SUCCESS"
                } else {
                    "FAILURE"
                }
            );
            for op in response.op_responses() {
                println!();
                match op {
                    TxnOpResponse::Get(get) => {
                        for kv in get.kvs() {
                            println!("{}\n{}", lossy(kv.key()), lossy(kv.value()));
                        }
                    }
                    TxnOpResponse::Put(_) => println!("OK"),
                    TxnOpResponse::Delete(del) => println!("{}", del.deleted()),
                    TxnOpResponse::Txn(_) => println!("(a nested transaction)"),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_etcdctl_reads_them() {
        let c = parse_compare(r#"mod("/app/config") > "0""#).unwrap();
        assert_eq!(
            (c.target.as_str(), c.key.as_str(), c.op, c.value.as_str()),
            ("mod", "/app/config", CompareOp::Greater, "0")
        );
        let c = parse_compare(r#"value("k") = "two words""#).unwrap();
        assert_eq!(c.value, "two words");
        assert!(parse_compare(r#"size("k") = "1""#)
            .unwrap_err()
            .contains("TARGET"));
        assert!(parse_compare(r#"value("k") ~ "1""#).is_err());
        assert!(parse_compare(r#"value("k") = "open"#).is_err());
        assert_eq!(
            parse_request("put /k \"a b\"").unwrap(),
            RequestLine::Put {
                key: "/k".into(),
                value: "a b".into()
            }
        );
        assert_eq!(
            parse_request("del /app/ --prefix").unwrap(),
            RequestLine::Del {
                key: "/app/".into(),
                end: None,
                prefix: true
            }
        );
        assert!(parse_request("put /k").unwrap_err().contains("expected"));
        assert!(parse_request("watch /k").is_err());
    }
}
