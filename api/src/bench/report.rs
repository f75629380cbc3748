//! Peers, targets and the table.

#[allow(unused_imports)]
use super::*;

/// Parses `peer=NAME instances=N seconds=S per_sec=R peak_rss_kb=K` lines.
pub fn parse_peers(text: &str) -> Vec<Peer> {
    text.lines()
        .filter_map(|line| {
            let kv: BTreeMap<&str, &str> = line
                .split_whitespace()
                .filter_map(|w| w.split_once('='))
                .collect();
            Some(Peer {
                peer: kv.get("peer")?.to_string(),
                instances: kv
                    .get("instances")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                per_sec: kv.get("per_sec")?.parse().ok()?,
                peak_rss_kb: kv.get("peak_rss_kb").and_then(|v| v.parse().ok()),
                ratios: BTreeMap::new(),
            })
        })
        .collect()
}

/// The rows measured against the peers, each with its target as a multiple of
/// SpiffWorkflow's rate (`None`: its ratio is printed, not judged).
pub(super) fn against_peers(id: &str) -> Option<Option<f64>> {
    match id {
        "core" => Some(Some(50.0)),
        "durable" => Some(Some(2.0)),
        "durable_concurrent" => Some(None),
        _ => None,
    }
}

pub(super) fn judge_against_peers(rows: &mut [Row], mut peers: Vec<Peer>) -> Vec<Peer> {
    for p in &mut peers {
        for r in rows.iter().filter(|r| against_peers(r.id).is_some()) {
            if let Some(v) = r.value
                && p.per_sec > 0.0
            {
                p.ratios.insert(r.id.to_owned(), v / p.per_sec);
            }
        }
    }
    let spiff = peers
        .iter()
        .find(|p| p.peer.to_ascii_lowercase().contains("spiff"))
        .map(|p| p.per_sec);
    for r in rows.iter_mut() {
        let Some(need) = against_peers(r.id) else {
            continue;
        };
        match (r.value, spiff) {
            (Some(v), Some(s)) if s > 0.0 => {
                r.met = need.map(|need| v / s >= need);
                r.detail = format!("{} x SpiffWorkflow; {}", ratio(v / s), r.detail);
            }
            (Some(_), _) => r
                .notes
                .push("no peer figures given (bench/compare.sh runs them)".into()),
            _ => {}
        }
    }
    peers
}

/// A ratio with the digits that matter: 31, 3.5, 0.44, 0.044.
pub(super) fn ratio(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

pub(super) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(super) fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: Option<u64> = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok());
    json!({
        "cpus": cpus(),
        "cpu_model": model,
        "memory_gib": mem_kb.map(|k| (k as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0),
        "os": std::env::consts::OS,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// 12345.6 → "12,346".
pub(super) fn fmt_int(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn print_table(r: &Report) {
    let build = r.machine["build"].as_str().unwrap_or("?");
    println!(
        "tthc bench ({}, {build} build), {} on {} CPUs ({}), {}",
        r.mode,
        r.date,
        r.machine["cpus"],
        r.machine["cpu_model"].as_str().unwrap_or("unknown CPU"),
        r.procedure
    );
    println!();
    let w0 = r
        .rows
        .iter()
        .map(|x| x.name.chars().count())
        .max()
        .unwrap_or(10);
    let w1 = r
        .rows
        .iter()
        .filter(|x| x.status == "measured")
        .map(|x| x.figure.chars().count())
        .max()
        .unwrap_or(10);
    println!(
        "{:<w0$}  {:<w1$}  {:<8}  detail",
        "measurement", "result", "target"
    );
    println!("{}", "-".repeat(w0 + w1 + 30));
    for row in &r.rows {
        let verdict = match (row.status, row.met) {
            ("measured", Some(true)) => "met",
            ("measured", Some(false)) => "MISSED",
            ("measured", None) => "n/a",
            _ => "",
        };
        println!(
            "{:<w0$}  {:<w1$}  {:<8}  {}",
            row.name, row.figure, verdict, row.detail
        );
    }
    if !r.peers.is_empty() {
        println!();
        for p in &r.peers {
            let ratios = p
                .ratios
                .iter()
                .map(|(k, v)| format!("{k} {}x", ratio(*v)))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "peer {:<14} {:>10} instances/s (N={}, peak RSS {}): tthc {}",
                p.peer,
                format!("{:.1}", p.per_sec),
                p.instances,
                p.peak_rss_kb
                    .map_or("?".into(), |k| format!("{:.1} MB", k as f64 / 1024.0)),
                if ratios.is_empty() {
                    "(no tthc rate measured)".into()
                } else {
                    ratios
                }
            );
        }
    }
    println!();
    println!("targets:");
    for row in r.rows.iter().filter(|x| x.status == "measured") {
        println!("  {:<w0$}  {}", row.name, row.target);
    }
    println!();
    println!("notes:");
    let mut seen = std::collections::BTreeSet::new();
    for n in r
        .notes
        .iter()
        .chain(r.rows.iter().flat_map(|x| x.notes.iter()))
    {
        if seen.insert(n.clone()) {
            println!("  - {n}");
        }
    }
}
