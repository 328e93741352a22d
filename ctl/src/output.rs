//! Rendering of API answers: aligned tables and key/value blocks for people, or the server's
//! JSON, pretty-printed, for scripts (`-o json`).
//!
//! # Design
//! Every function returns a `String` and takes the current time as an argument, so the output
//! is tested byte for byte. Strings that come from the server (host names are chosen by
//! whoever runs a node) have control characters replaced by `?` before they reach a terminal,
//! so a hostile host name cannot inject escape sequences; the JSON output escapes them anyway.

use std::fmt::Write;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::{Gpu, Node, TokenCreated};

/// The output format chosen with `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    Table,
    /// The server's JSON, pretty-printed.
    Json,
}

/// Spaces between table columns.
const GAP: &str = "   ";

/// The server's JSON body, pretty-printed with its key order kept, with a final newline.
pub(crate) fn json(body: &[u8]) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(body.len() * 2);
    let mut from = serde_json::Deserializer::from_slice(body);
    serde_transcode::transcode(&mut from, &mut serde_json::Serializer::pretty(&mut out))?;
    from.end()?;
    out.push(b'\n');
    // serde_json writes UTF-8 only.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The `node list` table: ID, HOSTNAME, STATUS, GPUS, AGENT, LAST SEEN.
pub(crate) fn node_table(nodes: &[Node], now: OffsetDateTime) -> String {
    if nodes.is_empty() {
        return "no nodes enrolled\n".to_owned();
    }
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            vec![
                clean(&node.id),
                clean(&node.hostname),
                clean(&node.status),
                node.inventory
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |inv| gpu_summary(&inv.gpus)),
                clean(&node.agent_version),
                last_seen(node.last_seen_at.as_deref(), now),
            ]
        })
        .collect();
    table(
        &["ID", "HOSTNAME", "STATUS", "GPUS", "AGENT", "LAST SEEN"],
        &rows,
    )
}

/// The `node get` view: the node's fields, then one row per GPU.
pub(crate) fn node_detail(node: &Node, now: OffsetDateTime) -> String {
    let mut fields = vec![
        ("ID", clean(&node.id)),
        ("HOSTNAME", clean(&node.hostname)),
        ("STATUS", clean(&node.status)),
        ("AGENT", clean(&node.agent_version)),
        ("ENROLLED AT", clean(&node.enrolled_at)),
        (
            "LAST SEEN",
            match &node.last_seen_at {
                Some(at) => format!("{} ({})", clean(at), last_seen(Some(at), now)),
                None => "never".to_owned(),
            },
        ),
        (
            "CLOCK SKEW",
            node.clock_skew_ms
                .map_or_else(|| "unknown".to_owned(), |ms| format!("{ms} ms")),
        ),
        ("CERT NOT AFTER", clean(&node.cert_not_after)),
    ];
    let Some(inventory) = &node.inventory else {
        fields.push(("INVENTORY", "not reported yet".to_owned()));
        return key_values(&fields);
    };
    fields.extend([
        ("CPU CORES", inventory.cpu_cores.to_string()),
        ("MEMORY", format!("{} MiB", inventory.memory_mib)),
        ("GPUS", gpu_summary(&inventory.gpus)),
    ]);
    let mut out = key_values(&fields);
    if !inventory.gpus.is_empty() {
        let rows: Vec<Vec<String>> = inventory.gpus.iter().map(gpu_row).collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "INDEX",
                "MODEL",
                "MEMORY",
                "UUID",
                "PCI BUS ID",
                "NUMA",
                "MIG",
            ],
            &rows,
        ));
    }
    out
}

/// The answer to `token create`.
pub(crate) fn token_created(token: &TokenCreated) -> String {
    let mut fields = vec![
        ("ID", clean(&token.id)),
        ("TOKEN", clean(&token.token)),
        ("EXPIRES AT", clean(&token.expires_at)),
    ];
    // The server sends an empty description when none was given.
    if let Some(description) = token.description.as_deref().filter(|d| !d.is_empty()) {
        fields.push(("DESCRIPTION", clean(description)));
    }
    key_values(&fields)
}

/// `8xH100-80GB`; several models in order of first appearance, comma-separated
/// (`4xA100-80GB,4xH100-80GB`); `0` without GPUs.
pub(crate) fn gpu_summary(gpus: &[Gpu]) -> String {
    if gpus.is_empty() {
        return "0".to_owned();
    }
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for gpu in gpus {
        match counts.iter_mut().find(|(model, _)| *model == gpu.model) {
            Some((_, n)) => *n += 1,
            None => counts.push((&gpu.model, 1)),
        }
    }
    counts
        .iter()
        .map(|(model, n)| format!("{n}x{}", clean(model)))
        .collect::<Vec<_>>()
        .join(",")
}

/// How long ago an RFC 3339 timestamp was: `never`, `45s ago`, `12m ago`, `3h ago`, `2d ago`.
/// A timestamp that does not parse is shown as sent.
pub(crate) fn last_seen(at: Option<&str>, now: OffsetDateTime) -> String {
    let Some(at) = at else {
        return "never".to_owned();
    };
    let Ok(then) = OffsetDateTime::parse(at, &Rfc3339) else {
        return clean(at);
    };
    // A node clock ahead of ours can put `then` slightly after `now`.
    let secs = (now - then).whole_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

fn gpu_row(gpu: &Gpu) -> Vec<String> {
    let mig = if gpu.mig.current == gpu.mig.pending {
        clean(&gpu.mig.current)
    } else {
        format!(
            "{} (pending {})",
            clean(&gpu.mig.current),
            clean(&gpu.mig.pending)
        )
    };
    vec![
        gpu.index.to_string(),
        clean(&gpu.model),
        format!("{} MiB", gpu.memory_mib),
        clean(&gpu.uuid),
        clean(&gpu.pci_bus_id),
        gpu.numa_node
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        mig,
    ]
}

/// Replaces control characters (escape sequences, line breaks) with `?`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Left-aligned columns separated by [`GAP`], without trailing spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str(GAP);
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `KEY:` labels padded to one column, then the values.
fn key_values(fields: &[(&str, String)]) -> String {
    let label_width = fields.iter().map(|(k, _)| width(k) + 1).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in fields {
        let label = format!("{key}:");
        let _ = writeln!(out, "{label:<label_width$}  {value}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Inventory, Mig};

    /// 2025-01-02T03:04:05Z.
    const NOW: OffsetDateTime = match OffsetDateTime::from_unix_timestamp(1_735_787_045) {
        Ok(t) => t,
        Err(_) => panic!("valid timestamp"),
    };

    fn gpu(index: u32, model: &str, mig: (&str, &str)) -> Gpu {
        Gpu {
            index,
            uuid: format!("GPU-{index:08x}-0000-0000-0000-000000000000"),
            model: model.into(),
            nvml_name: format!("NVIDIA {model}"),
            memory_mib: 81_559,
            pci_bus_id: format!("0000:{:02x}:00.0", 0x3b + index),
            minor: index,
            numa_node: if index < 4 { Some(0) } else { None },
            mig: Mig {
                current: mig.0.into(),
                pending: mig.1.into(),
            },
        }
    }

    fn node(id: u64, hostname: &str, gpus: Vec<Gpu>, last_seen_at: Option<&str>) -> Node {
        Node {
            id: format!("node-{id:016x}"),
            hostname: hostname.into(),
            status: if last_seen_at.is_some() {
                "ready"
            } else {
                "not_ready"
            }
            .into(),
            agent_version: "0.1.0".into(),
            enrolled_at: "2025-01-01T00:00:00Z".into(),
            last_seen_at: last_seen_at.map(Into::into),
            clock_skew_ms: last_seen_at.map(|_| -12),
            cert_not_after: "2025-04-01T00:00:00Z".into(),
            inventory: Some(Inventory {
                hostname: hostname.into(),
                cpu_cores: 64,
                memory_mib: 1_048_576,
                gpus,
            }),
        }
    }

    fn h100s(n: u32) -> Vec<Gpu> {
        (0..n)
            .map(|i| gpu(i, "H100-80GB", ("Disabled", "Disabled")))
            .collect()
    }

    #[test]
    fn node_table_golden() {
        let mut mixed = h100s(2);
        mixed.push(gpu(2, "A100-40GB", ("Enabled", "Enabled")));
        mixed.push(gpu(3, "H100-80GB", ("Disabled", "Disabled")));
        let mut no_inventory = node(3, "fresh", vec![], None);
        no_inventory.inventory = None;
        let nodes = [
            node(
                0x3f9a_1c2b_4d5e_6f70,
                "gpu-01.example.net",
                h100s(8),
                Some("2025-01-02T03:04:00Z"),
            ),
            node(1, "gpu-02", mixed, Some("2025-01-02T01:00:00+00:00")),
            node(2, "cpu-only", vec![], Some("2024-12-25T03:04:05Z")),
            no_inventory,
        ];
        assert_eq!(
            node_table(&nodes, NOW),
            "\
ID                      HOSTNAME             STATUS      GPUS                      AGENT   LAST SEEN
node-3f9a1c2b4d5e6f70   gpu-01.example.net   ready       8xH100-80GB               0.1.0   5s ago
node-0000000000000001   gpu-02               ready       3xH100-80GB,1xA100-40GB   0.1.0   2h ago
node-0000000000000002   cpu-only             ready       0                         0.1.0   8d ago
node-0000000000000003   fresh                not_ready   -                         0.1.0   never
"
        );
    }

    #[test]
    fn empty_node_list() {
        assert_eq!(node_table(&[], NOW), "no nodes enrolled\n");
    }

    #[test]
    fn node_detail_golden() {
        let mut gpus = h100s(1);
        gpus.push(gpu(4, "H100-80GB", ("Disabled", "Enabled")));
        let n = node(
            0x3f9a_1c2b_4d5e_6f70,
            "gpu-01",
            gpus,
            Some("2025-01-02T03:03:05Z"),
        );
        assert_eq!(
            node_detail(&n, NOW),
            "\
ID:              node-3f9a1c2b4d5e6f70
HOSTNAME:        gpu-01
STATUS:          ready
AGENT:           0.1.0
ENROLLED AT:     2025-01-01T00:00:00Z
LAST SEEN:       2025-01-02T03:03:05Z (1m ago)
CLOCK SKEW:      -12 ms
CERT NOT AFTER:  2025-04-01T00:00:00Z
CPU CORES:       64
MEMORY:          1048576 MiB
GPUS:            2xH100-80GB

INDEX   MODEL       MEMORY      UUID                                       PCI BUS ID     NUMA   MIG
0       H100-80GB   81559 MiB   GPU-00000000-0000-0000-0000-000000000000   0000:3b:00.0   0      Disabled
4       H100-80GB   81559 MiB   GPU-00000004-0000-0000-0000-000000000000   0000:3f:00.0   -      Disabled (pending Enabled)
"
        );
    }

    #[test]
    fn node_detail_without_inventory() {
        let mut n = node(1, "fresh", vec![], None);
        n.inventory = None;
        assert_eq!(
            node_detail(&n, NOW),
            "\
ID:              node-0000000000000001
HOSTNAME:        fresh
STATUS:          not_ready
AGENT:           0.1.0
ENROLLED AT:     2025-01-01T00:00:00Z
LAST SEEN:       never
CLOCK SKEW:      unknown
CERT NOT AFTER:  2025-04-01T00:00:00Z
INVENTORY:       not reported yet
"
        );
    }

    #[test]
    fn token_golden() {
        let mut t = TokenCreated {
            id: "tok-0000000000000007".into(),
            token: "gpuaas1.abab.tok-0000000000000007.0101".into(),
            expires_at: "2025-01-02T04:04:05Z".into(),
            description: Some("rack 12".into()),
        };
        assert_eq!(
            token_created(&t),
            "\
ID:           tok-0000000000000007
TOKEN:        gpuaas1.abab.tok-0000000000000007.0101
EXPIRES AT:   2025-01-02T04:04:05Z
DESCRIPTION:  rack 12
"
        );
        t.description = None;
        assert!(!token_created(&t).contains("DESCRIPTION"));
        t.description = Some(String::new());
        assert!(!token_created(&t).contains("DESCRIPTION"));
    }

    #[test]
    fn gpu_summaries() {
        assert_eq!(gpu_summary(&[]), "0");
        assert_eq!(gpu_summary(&h100s(8)), "8xH100-80GB");
        let mut mixed = vec![gpu(0, "A100-80GB", ("Disabled", "Disabled"))];
        mixed.extend(h100s(2));
        mixed.push(gpu(3, "A100-80GB", ("Disabled", "Disabled")));
        assert_eq!(gpu_summary(&mixed), "2xA100-80GB,2xH100-80GB");
    }

    #[test]
    fn last_seen_ages() {
        let at = |s| last_seen(Some(s), NOW);
        assert_eq!(last_seen(None, NOW), "never");
        assert_eq!(at("2025-01-02T03:04:05Z"), "0s ago");
        assert_eq!(at("2025-01-02T03:04:10Z"), "0s ago", "clock ahead");
        assert_eq!(at("2025-01-02T03:03:06Z"), "59s ago");
        assert_eq!(at("2025-01-02T02:04:06Z"), "59m ago");
        assert_eq!(at("2025-01-02T04:04:05+01:00"), "0s ago", "offsets");
        assert_eq!(at("2025-01-01T03:04:06.5Z"), "23h ago", "fractions");
        assert_eq!(at("2024-01-02T03:04:05Z"), "366d ago");
        assert_eq!(at("yesterday"), "yesterday");
    }

    #[test]
    fn control_characters_are_neutralised() {
        let n = node(1, "evil\x1b]0;pwned\x07\nhost", vec![], None);
        let out = node_table(std::slice::from_ref(&n), NOW);
        assert!(!out.contains('\x1b') && !out.contains('\x07'), "{out:?}");
        assert_eq!(out.lines().count(), 2, "{out:?}");
        assert!(node_detail(&n, NOW).contains("evil?]0;pwned??host"));
    }

    #[test]
    fn json_is_pretty_and_keeps_key_order() {
        let body = br#"{"nodes":[],"extra":{"z":1,"a":"\u001b"}}"#;
        assert_eq!(
            json(body).unwrap(),
            "{\n  \"nodes\": [],\n  \"extra\": {\n    \"z\": 1,\n    \"a\": \"\\u001b\"\n  }\n}\n"
        );
        assert!(json(b"{} trailing").is_err());
    }
}
