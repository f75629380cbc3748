//! Property: whatever valid or invalid commands arrive, in any order, replaying a dossier's
//! events reproduces its read models, and its hash chain verifies.

use chrono::Duration;
use engine::dossier::{Actor, Command, Dossier};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::engine_support::*;

fn officer_for(task: &engine::dossier::Task, n: u8) -> Actor {
    officer_at(
        &format!("o{}-{}", task.role, n % 2),
        &task.agency,
        &[&task.role],
    )
}

fn data_for(step: &str, pick: u8) -> Option<Value> {
    match step {
        "tham_dinh" => Some(if pick.is_multiple_of(3) {
            json!({"co_an_tich": pick.is_multiple_of(2), "can_xac_minh": true, "ly_do_xac_minh": ["cu_tru_nhieu_noi"]})
        } else {
            json!({"co_an_tich": false, "can_xac_minh": false})
        }),
        "xac_minh_cong_an" => Some(
            json!({"co_thong_tin_an_tich": false, "so_van_ban_tra_loi": "1/CAT", "ngay_tra_loi": "2026-03-04"}),
        ),
        _ => None,
    }
}

fn outcome_for(step: &str, pick: u8) -> Option<String> {
    match step {
        "tiep_nhan" => Some(
            if pick.is_multiple_of(7) {
                "refuse"
            } else {
                "accept"
            }
            .into(),
        ),
        "duyet_phong" => Some(
            if pick.is_multiple_of(4) {
                "send_back"
            } else {
                "approve"
            }
            .into(),
        ),
        _ => None,
    }
}

async fn step(h: &Harness, code: &str, op: u8, arg: u8) {
    let d: Dossier = h.engine.dossier(code).await.unwrap();
    let tasks: Vec<_> = d.tasks.values().map(|t| (**t).clone()).collect();
    let task = (!tasks.is_empty()).then(|| tasks[usize::from(arg) % tasks.len()].clone());
    let result = match (op % 10, task) {
        (0, Some(t)) => {
            h.engine
                .execute(
                    code,
                    None,
                    &officer_for(&t, arg),
                    &Command::ClaimTask {
                        task: t.id.to_string(),
                    },
                )
                .await
        }
        (1, Some(t)) => {
            h.engine
                .execute(
                    code,
                    None,
                    &officer_for(&t, arg),
                    &Command::ReleaseTask {
                        task: t.id.to_string(),
                    },
                )
                .await
        }
        (2 | 3, Some(t)) => {
            let actor = officer_for(&t, arg);
            if t.step.starts_with("ky_phieu") {
                let _ = h
                    .engine
                    .execute(
                        code,
                        None,
                        &actor,
                        &Command::ClaimTask {
                            task: t.id.to_string(),
                        },
                    )
                    .await;
                let code_ = if t.step.ends_with('1') {
                    "KQ.LLTP.01"
                } else {
                    "KQ.LLTP.02"
                };
                let _ = h
                    .engine
                    .execute(
                        code,
                        None,
                        &actor,
                        &Command::SignResult {
                            result_code: code_.into(),
                            number: None,
                            document: None,
                        },
                    )
                    .await;
            }
            let reason = (&*t.step == "tiep_nhan").then(|| "Hồ sơ không hợp lệ".to_owned());
            h.engine
                .execute(
                    code,
                    None,
                    &actor,
                    &Command::CompleteTask {
                        task: t.id.to_string(),
                        outcome: outcome_for(&t.step, arg),
                        data: data_for(&t.step, arg),
                        reason,
                    },
                )
                .await
        }
        (4, Some(t)) => {
            h.engine
                .execute(
                    code,
                    None,
                    &officer_for(&t, arg),
                    &Command::RequestSupplement {
                        reason: "Thiếu giấy tờ".into(),
                        missing: vec!["giay_to_tuy_than".into()],
                    },
                )
                .await
        }
        (5, _) => {
            h.engine
                .execute(
                    code,
                    None,
                    &citizen(),
                    &Command::Supplement {
                        data: [("to_khai".to_owned(), lltp_form(1))].into(),
                        documents: vec![],
                    },
                )
                .await
        }
        (6, _) => {
            h.engine.drain_jobs().await.unwrap();
            return;
        }
        (7, _) => {
            h.clock.advance(Duration::hours(i64::from(arg % 72)));
            h.engine.scan_overdue().await.unwrap();
            return;
        }
        (8, _) if arg.is_multiple_of(5) => {
            h.engine
                .execute(
                    code,
                    None,
                    &citizen(),
                    &Command::Withdraw {
                        reason: "Rút hồ sơ".into(),
                    },
                )
                .await
        }
        (9, _) => {
            h.engine
                .execute(code, None, &desk(), &Command::ReturnResult)
                .await
        }
        _ => return,
    };
    if let Err(e) = result {
        // Refusals are typed decisions; nothing else may go wrong.
        assert!(matches!(e, engine::EngineError::Command(_)), "{e:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn replay_reproduces_read_models_and_the_chain_verifies(ops in proptest::collection::vec((any::<u8>(), any::<u8>()), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let h = harness().await;
            let d = h.file_lltp(1).await;
            let extra = h.file_lltp(2).await;
            for (op, arg) in &ops {
                let code = if arg % 4 == 3 { &extra.code } else { &d.code };
                step(&h, code, *op, *arg).await;
            }
            h.engine.drain_jobs().await.unwrap();
            for code in [&d.code, &extra.code] {
                h.assert_replays_and_verifies(code).await;
            }
            let all = h.engine.verify(None).await.unwrap();
            assert!(all.is_intact() && all.dossiers == 2, "{all:?}");
        });
    }
}
