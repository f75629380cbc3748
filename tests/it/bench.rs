//! `tthc bench --quick` runs every measurement and writes every row. It proves the harness
//! works; it asserts nothing about speed.

use serde_json::Value;

use crate::support::{stderr, stdout, tthc};

const ROWS: [&str; 9] = [
    "core",
    "durable",
    "durable_concurrent",
    "postgres",
    "http",
    "audit_verify",
    "worklist",
    "owner_lookup",
    "storage",
];

#[test]
fn tthc_bench_quick_writes_every_row_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let peers = dir.path().join("peers.txt");
    std::fs::write(
        &peers,
        "peer=spiffworkflow instances=2000 seconds=1.6 per_sec=1232.0 peak_rss_kb=24400\n\
         peer=bpmn-engine instances=2000 seconds=13.7 per_sec=146.0 peak_rss_kb=156000\n",
    )
    .unwrap();
    let out = tthc(&[
        "bench",
        "--quick",
        "--json",
        json.to_str().unwrap(),
        "--peers",
        peers.to_str().unwrap(),
        "--workdir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let table = stdout(&out);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ROWS, "every row, in order");
    for row in rows {
        let id = row["id"].as_str().unwrap();
        if id == "postgres" && row["status"] == "not_measured" {
            // Measured only when a server is given (--postgres or TTHC_BENCH_POSTGRES).
            assert!(
                row["figure"].as_str().unwrap().starts_with("not measured"),
                "{row}"
            );
        } else {
            assert_eq!(row["status"], "measured", "{row}");
            let v = row["value"].as_f64().unwrap_or(-1.0);
            assert!(v.is_finite() && v >= 0.0, "{id} has a figure: {row}");
            assert!(
                !row["target"].as_str().unwrap().is_empty(),
                "{id} names its target"
            );
        }
        assert!(
            table.contains(row["name"].as_str().unwrap()),
            "the table prints {id}:\n{table}"
        );
    }
    assert!(rows[4]["data"]["server_peak_rss_kb"].as_u64().is_some());
    assert_eq!(rows[4]["data"]["clients"], 32);
    let peers = report["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2);
    for p in peers {
        for k in ["core", "durable", "durable_concurrent"] {
            assert!(p["ratios"][k].as_f64().is_some(), "ratio {k} against {p}");
        }
    }
    assert!(table.contains("spiffworkflow") && table.contains("bpmn-engine"));
}

/// `--http-pace` holds the offered load: at 5 dossiers a second for 2 s, the 32 clients start
/// at most 10 dossiers between them, and a paced run gives no verdict on the target (which is
/// set for the closed loop). A rate of zero or below is refused.
#[test]
fn tthc_bench_http_pace_holds_the_offered_load() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = tthc(&[
        "bench",
        "--quick",
        "--only",
        "http",
        "--http-pace",
        "5",
        "--json",
        json.to_str().unwrap(),
        "--workdir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let http = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "http")
        .unwrap();
    assert_eq!(http["status"], "measured", "{http}");
    assert_eq!(http["data"]["pace_dossiers_per_sec"], 5.0, "{http}");
    let dossiers = http["data"]["dossiers"].as_u64().unwrap();
    assert!((1..=10).contains(&dossiers), "{dossiers} dossiers: {http}");
    assert!(http["met"].is_null(), "{http}");
    assert!(
        http["detail"]
            .as_str()
            .unwrap()
            .starts_with("paced at 5 dossiers/s"),
        "{http}"
    );
    // A rate of zero is refused, not run as the closed loop.
    let out = tthc(&["bench", "--quick", "--only", "http", "--http-pace", "0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a rate above zero"),
        "{}",
        stderr(&out)
    );
}
