//! The founding story over HTTP: two deployments (province A, province B, each with its own
//! database, agencies and keys) and one portal simulator. A certificate issued and signed in A
//! travels with its signatures through the portal's Kho DL; B verifies them against its trusted
//! keys when the citizen reuses it, records the outcome, and applies its policy to papers that
//! do not verify.

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tthc_api::auth::UserKind;
use tthc_api::portal_sim::{self, SimConfig};

use crate::api_support::*;
use crate::engine_support::{AGENCY, CITIZEN_ID, POLICE};
use crate::results::{return_result, signed_lltp};

const CLIENT_ID: &str = "tthc";
const CLIENT_SECRET: &str = "founding-secret";
/// Province B's health department (Hà Nội, deploy/examples/ha-noi.yaml).
const B_HEALTH: &str = "000.00.08.H26";

struct World {
    a: Api,
    b: Api,
    sim_url: String,
    /// Province A's keys file (seeds) and its public keys, as A hands them to others.
    a_public: Value,
    dir: TempDir,
}

/// What province B trusts and does with unverified papers.
struct BSetup {
    trusts_a: bool,
    policy: &'static str,
}

async fn world(setup: BSetup) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = portal_sim::start(SimConfig::local(
        format!("sqlite://{}", dir.path().join("portal.db").display()),
        CLIENT_ID,
        CLIENT_SECRET,
    ))
    .await
    .unwrap();
    let sim_url = format!("http://{addr}");

    // A signs with its own officer's and agency's keys.
    let seed = || hex::encode(rand::random::<[u8; 32]>());
    let a_keys = json!({"officers": {"leader": seed()}, "agencies": {AGENCY: seed()}});
    let a_keys_file = dir.path().join("a-keys.json");
    std::fs::write(&a_keys_file, a_keys.to_string()).unwrap();
    let a_public = engine::signing::KeyRing::from_json_str(&a_keys.to_string())
        .unwrap()
        .public_keys_json();
    // B holds A's public keys as trusted, or nothing of A's.
    let mut b_keys = json!({"officers": {"leader-b": seed()}, "agencies": {B_HEALTH: seed()}});
    if setup.trusts_a {
        // A's agency's public key only: its seal vouches for A's officers' signatures.
        b_keys["trusted"] = json!({"agencies": a_public["agencies"]});
    }
    let b_keys_file = dir.path().join("b-keys.json");
    std::fs::write(&b_keys_file, b_keys.to_string()).unwrap();

    let portal = |c: &mut tthc_api::config::ServeConfig| {
        c.portal_url = Some(sim_url.clone());
        c.portal_simulator = false;
        c.portal_client_id = CLIENT_ID.into();
        c.portal_client_secret = Some(CLIENT_SECRET.into());
    };
    let a = start_api_with(20, |c| {
        portal(c);
        // Each province runs with its shipped example deployment's agencies.
        c.agencies = example_agencies("hung-yen");
        assert!(c.agencies.contains(AGENCY) && c.agencies.contains(POLICE));
        c.keys_file = Some(a_keys_file.clone());
    })
    .await;
    let b = start_api_with(20, |c| {
        portal(c);
        c.agencies = example_agencies("ha-noi");
        assert!(c.agencies.contains(B_HEALTH));
        c.keys_file = Some(b_keys_file.clone());
        c.reuse.unverified = match setup.policy {
            "confirm" => engine::reuse::UnverifiedPolicy::Confirm,
            _ => engine::reuse::UnverifiedPolicy::Refuse,
        };
    })
    .await;
    World {
        a,
        b,
        sim_url,
        a_public,
        dir,
    }
}

fn a_desk() -> String {
    token_for(UserKind::Officer, "desk", &["mot_cua"], Some(AGENCY), None)
}

fn b_desk() -> String {
    token_for(
        UserKind::Officer,
        "desk-b",
        &["mot_cua"],
        Some(B_HEALTH),
        None,
    )
}

/// A's certificate No. 1, signed, issued and returned; waits until the portal holds it.
/// Returns A's dossier code and the portal's paper id.
async fn certificate_from_a(w: &World) -> (String, String) {
    let code = signed_lltp(&w.a).await;
    return_result(&w.a, &code, &a_desk()).await;
    let portal = w.b.state.io.portal.as_ref().unwrap();
    for _ in 0..250 {
        let listed = portal
            .list_papers(CITIZEN_ID, Some("KQ.LLTP.01"))
            .await
            .unwrap();
        if let Some(p) = listed.iter().find(|p| p.metadata.dossier_code == code) {
            return (code, p.metadata.paper_id.clone());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the portal never received {code}'s certificate");
}

fn licence_form() -> Value {
    json!({"ho_ten": "Nguyễn Văn An", "ngay_sinh": "1990-05-17", "gioi_tinh": "nam", "so_cccd": CITIZEN_ID,
        "noi_cu_tru": "Thái Nguyên", "chuc_danh": "bac_si", "pham_vi_hanh_nghe": "Nội khoa",
        "van_bang_chuyen_mon": "Bác sĩ đa khoa", "co_so_thuc_hanh": "Bệnh viện tỉnh",
        "thoi_gian_thuc_hanh_thang": 12})
}

/// The citizen files the licence in B; returns its code.
async fn licence_in_b(w: &World) -> String {
    let r = w
        .b
        .post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "1.012265", "agency_code": B_HEALTH, "data": {"don_de_nghi": licence_form()}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["code"].as_str().unwrap().to_owned()
}

fn b_officer(sub: &str, role: &str) -> String {
    token_for(UserKind::Officer, sub, &[role], Some(B_HEALTH), None)
}

/// B processes the licence (uploads for the other components, appraisal, approval, the
/// leader's signature, issue) and returns it; waits until the dossier is closed.
async fn issue_licence_in_b(w: &World, lic: &str) -> Value {
    let b = &w.b;
    let path = |p: &str| format!("/api/v1/dossiers/{lic}/{p}");
    for component in [
        "van_bang",
        "giay_kham_suc_khoe",
        "anh",
        "xac_nhan_thuc_hanh",
    ] {
        let up = b
            .send(
                b.request(reqwest::Method::POST, "/api/v1/uploads")
                    .bearer_auth(citizen_token())
                    .header("content-type", "text/plain")
                    .body(format!("{component} của Nguyễn Văn An")),
            )
            .await;
        assert_eq!(up.status, StatusCode::CREATED, "{}", up.text);
        let r = b
            .post(
                &path("documents"),
                &citizen_token(),
                json!({"component": component, "name": component, "sha256": up.body["sha256"]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{component}: {}", r.text);
    }
    let r = b.post(&path("receive"), &b_desk(), json!(null)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let path = &path;
    let step = |step: &'static str, token: String, body: Value| async move {
        let d = b.wait_for(lic, step, |d| has_task(d, step)).await;
        let task = task_of(&d, step);
        b.post(&path(&format!("tasks/{task}/claim")), &token, json!(null))
            .await;
        if step == "ky_giay_phep" {
            let r = b
                .post(
                    &path("sign"),
                    &token,
                    json!({"result_code": "KQ.GPHN.KCB", "number": "000123/TN-GPHN"}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
        let r = b
            .post(&path(&format!("tasks/{task}/complete")), &token, body)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{step}: {}", r.text);
    };
    step(
        "tham_dinh_ho_so",
        b_officer("specialist-b", "chuyen_vien"),
        json!({"data": {"hop_le": true, "can_hoi_dong": false}}),
    )
    .await;
    step(
        "du_thao_giay_phep",
        b_officer("specialist-b", "chuyen_vien"),
        json!({}),
    )
    .await;
    step(
        "duyet_phong",
        b_officer("head-b", "lanh_dao_phong"),
        json!({"outcome": "approve"}),
    )
    .await;
    step("ky_giay_phep", b_officer("leader-b", "lanh_dao"), json!({})).await;
    step("phat_hanh", b_officer("clerk-b", "van_thu"), json!({})).await;
    b.wait_for(lic, "the return task", |d| has_task(d, "tra_ket_qua"))
        .await;
    return_result(b, lic, &b_desk()).await
}

/// The owner downloads the dossier's first result and checks it against its hash and its
/// verification; returns the result as the view lists it.
async fn download_result(api: &Api, code: &str) -> Value {
    let view = api
        .get(&format!("/api/v1/dossiers/{code}"), &citizen_token())
        .await;
    let result = view.body["results"][0].clone();
    let id = result["document_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no result: {}", view.text));
    let doc = api
        .get(
            &format!("/api/v1/dossiers/{code}/documents/{id}/content"),
            &citizen_token(),
        )
        .await;
    assert_eq!(doc.status, StatusCode::OK, "{}", doc.text);
    assert_eq!(
        engine::portal::sha256_hex(doc.text.as_bytes()),
        result["sha256"].as_str().unwrap()
    );
    let v = api
        .get(
            &format!(
                "/api/v1/dossiers/{code}/results/{}/verification",
                result["result_code"].as_str().unwrap()
            ),
            &citizen_token(),
        )
        .await;
    assert_eq!(v.body["valid"], true, "{}", v.text);
    result
}

/// The reused document's signature check, from the dossier view.
fn signature_check(view: &Value) -> Value {
    view["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["component"] == "phieu_lltp")
        .unwrap_or_else(|| panic!("no reused certificate: {view}"))["provenance"]["signature_check"]
        .clone()
}

async fn reuse(w: &World, lic: &str, token: &str, paper: &str, extra: Value) -> Reply {
    let mut body = json!({"paper_id": paper, "source": "portal"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    w.b.post(
        &format!("/api/v1/dossiers/{lic}/components/phieu_lltp/reuse"),
        token,
        body,
    )
    .await
}

/// `tthc verify-result --from-portal` with a keys file; (exit code, printed JSON). Runs off
/// the test's runtime, which serves the simulator meanwhile.
async fn verify_from_portal(w: &World, paper: &str, keys: &Value) -> (Option<i32>, Value) {
    let file = w
        .dir
        .path()
        .join(format!("verify-keys-{}.json", rand::random::<u32>()));
    std::fs::write(&file, keys.to_string()).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tthc"));
    command
        .args([
            "verify-result",
            "--from-portal",
            &w.sim_url,
            "--paper",
            paper,
            "--keys",
        ])
        .arg(&file)
        .current_dir(w.dir.path())
        .env("TTHC_PORTAL_CLIENT_SECRET", CLIENT_SECRET)
        .env_remove("TTHC_ROOT");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let text = crate::support::stdout(&out);
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{text}{}", crate::support::stderr(&out)));
    (out.status.code(), value)
}

#[tokio::test]
async fn a_certificate_signed_in_province_a_is_reused_and_verified_in_province_b() {
    let w = world(BSetup {
        trusts_a: true,
        policy: "refuse",
    })
    .await;
    let (cert, paper) = certificate_from_a(&w).await;

    // The citizen downloads the certificate in A, with its signatures.
    let result = download_result(&w.a, &cert).await;
    assert_eq!(result["organization"], AGENCY);

    // The portal's paper carries A's signatures.
    let portal = w.b.state.io.portal.as_ref().unwrap();
    let info = portal.paper(&paper).await.unwrap();
    assert_eq!(info.metadata.signatures.len(), 2);
    assert_eq!(info.metadata.signatures[1].signer_id, AGENCY);
    assert_eq!(info.metadata.signatures[0].document_sha256, info.sha256);
    assert!(info.metadata.signed_metadata.is_some());

    // In B the citizen files a licence, is offered the certificate from the portal, consents.
    let lic = licence_in_b(&w).await;
    let offered =
        w.b.get(
            &format!("/api/v1/dossiers/{lic}/components/phieu_lltp/candidates"),
            &citizen_token(),
        )
        .await;
    assert!(
        offered
            .body
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["paper_id"] == paper.as_str()
                && c["source"] == "portal"
                && c["signature_check"] == "verified"),
        "{}",
        offered.text
    );
    let r = reuse(&w, &lic, &citizen_token(), &paper, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let check = signature_check(&r.body);
    assert_eq!(check["outcome"], "verified", "{check}");
    assert_eq!(
        check["signers"],
        json!(["officer:leader", format!("agency:{AGENCY}")])
    );
    assert_eq!(
        check["vouched_by_seal"],
        json!([info.metadata.signatures[0].key_id])
    );
    // The outcome is in the reuse event itself.
    let events =
        w.b.get(&format!("/api/v1/dossiers/{lic}/events"), &auditor_token())
            .await;
    let reused = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "paper_reused")
        .unwrap_or_else(|| panic!("{}", events.text))
        .clone();
    assert_eq!(
        reused["payload"]["document"]["provenance"]["signature_check"]["outcome"],
        "verified"
    );

    // B issues the licence; the citizen downloads it in B, sealed by B's agency.
    issue_licence_in_b(&w, &lic).await;
    let licence = download_result(&w.b, &lic).await;
    assert_eq!(licence["result_code"], "KQ.GPHN.KCB");
    assert_eq!(licence["organization"], B_HEALTH);

    // The portal holds both dossiers, each its own deployment's record.
    assert_ne!(cert, lic);
    let held_a = portal.synced_dossier(&cert).await.unwrap();
    let held_b = portal.synced_dossier(&lic).await.unwrap();
    assert_eq!(held_a.dossier.agency_code, AGENCY);
    assert_eq!(held_a.dossier.procedure_code, "2.000488");
    assert_eq!(held_a.status, 10);
    assert_eq!(held_b.dossier.agency_code, B_HEALTH);
    assert_eq!(held_b.dossier.procedure_code, "1.012265");
    assert_eq!(held_b.dossier.dossier_code, lic);
    assert_eq!(held_b.status, 10);
    let on_portal: Vec<(String, String)> = portal
        .list_papers(CITIZEN_ID, None)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.metadata.dossier_code, p.metadata.issuing_agency_code))
        .collect();
    assert!(
        on_portal.contains(&(cert.clone(), AGENCY.to_owned())),
        "{on_portal:?}"
    );

    // B refuses a filing addressed to A's agency.
    let r =
        w.b.post(
            "/api/v1/dossiers",
            &citizen_token(),
            json!({"procedure_code": "2.000488", "agency_code": AGENCY,
                   "data": {"to_khai": crate::engine_support::lltp_form(1)}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "unknown_agency");

    // The CLI verifies the portal's paper with A's public keys, and not without them.
    let (code, v) = verify_from_portal(
        &w,
        &paper,
        &json!({"trusted": {"agencies": w.a_public["agencies"]}}),
    )
    .await;
    assert_eq!((code, &v["outcome"]), (Some(0), &json!("verified")), "{v}");
    assert_eq!(v["valid"], true);
    assert!(
        v["signatures"][0]["signed_at"]
            .as_str()
            .unwrap()
            .ends_with("+07:00")
    );
    let (code, v) = verify_from_portal(&w, &paper, &json!({})).await;
    assert_eq!(
        (code, &v["outcome"]),
        (Some(1), &json!("untrusted_key")),
        "{v}"
    );
    assert_eq!(v["key_id"], info.metadata.signatures[0].key_id.as_str());
}

#[tokio::test]
async fn province_b_refuses_a_paper_signed_with_a_key_it_does_not_trust_unless_an_officer_confirms()
{
    let w = world(BSetup {
        trusts_a: false,
        policy: "confirm",
    })
    .await;
    let (_, paper) = certificate_from_a(&w).await;
    let lic = licence_in_b(&w).await;
    let r = reuse(&w, &lic, &citizen_token(), &paper, json!({})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["code"], "paper_unverified");
    assert!(
        r.body["detail"].as_str().unwrap().contains("untrusted_key"),
        "{}",
        r.text
    );
    let view =
        w.b.get(&format!("/api/v1/dossiers/{lic}"), &citizen_token())
            .await;
    assert!(
        !view.text.contains("phieu_lltp\""),
        "nothing attached: {}",
        view.text
    );
    // The desk checked it with the issuing agency and says so: taken, and shown as untrusted.
    let r = reuse(
        &w,
        &lic,
        &b_desk(),
        &paper,
        json!({"owner_confirmed": true, "unverified_confirmed": true}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let check = signature_check(&r.body);
    assert_eq!(check["outcome"], "untrusted_key", "{check}");
    assert_eq!(check["confirmed_by"], "desk-b");
    let info =
        w.b.state
            .io
            .portal
            .as_ref()
            .unwrap()
            .paper(&paper)
            .await
            .unwrap();
    assert_eq!(check["key_id"], info.metadata.signatures[0].key_id.as_str());
}

/// Pushes a paper to the portal as some other system would.
async fn push(
    w: &World,
    id: &str,
    content: &[u8],
    template: &engine::portal::wire::PaperInfo,
    signed: bool,
) {
    let mut metadata = template.metadata.clone();
    metadata.paper_id = id.into();
    if !signed {
        metadata.signatures.clear();
        metadata.signed_metadata = None;
    }
    let paper = engine::portal::wire::PushPaper {
        metadata,
        content: base64::engine::general_purpose::STANDARD.encode(content),
        sha256: engine::portal::sha256_hex(content),
    };
    w.b.state
        .io
        .portal
        .as_ref()
        .unwrap()
        .push_paper(&format!("push-{id}"), &paper)
        .await
        .unwrap();
}

#[tokio::test]
async fn province_b_refuses_altered_and_unsigned_papers_and_stores_nothing() {
    let w = world(BSetup {
        trusts_a: true,
        policy: "refuse",
    })
    .await;
    let (_, paper) = certificate_from_a(&w).await;
    let portal = w.b.state.io.portal.as_ref().unwrap();
    let genuine = portal.paper(&paper).await.unwrap();
    // A's signatures over other content; and a paper with no signature at all.
    push(
        &w,
        "forged-1",
        b"Phieu LLTP: khong co an tich (sua)",
        &genuine,
        true,
    )
    .await;
    push(&w, "unsigned-1", b"Phieu LLTP khong ky", &genuine, false).await;
    let lic = licence_in_b(&w).await;

    // The owner sees before choosing which papers verify.
    let offered =
        w.b.get(
            &format!("/api/v1/dossiers/{lic}/components/phieu_lltp/candidates"),
            &citizen_token(),
        )
        .await;
    let outcomes: std::collections::BTreeMap<&str, &str> = offered
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["paper_id"].as_str().unwrap(),
                c["signature_check"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(outcomes["forged-1"], "altered", "{}", offered.text);
    assert_eq!(outcomes["unsigned-1"], "unsigned");
    assert_eq!(outcomes[paper.as_str()], "verified");
    for (id, code, outcome) in [
        ("forged-1", "paper_altered", "altered"),
        ("unsigned-1", "paper_unverified", "unsigned"),
    ] {
        for token in [citizen_token(), b_desk()] {
            let r = reuse(
                &w,
                &lic,
                &token,
                id,
                json!({"owner_confirmed": true, "unverified_confirmed": true}),
            )
            .await;
            assert_eq!(
                r.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{id}: {}",
                r.text
            );
            assert_eq!(r.body["code"], code, "{id}: {}", r.text);
            assert!(
                r.body["detail"].as_str().unwrap().contains(outcome),
                "{id}: {}",
                r.text
            );
        }
        let (exit, v) = verify_from_portal(&w, id, &json!({"trusted": w.a_public})).await;
        assert_eq!((exit, &v["outcome"]), (Some(1), &json!(outcome)), "{v}");
    }
    // Nothing was attached or kept.
    let view =
        w.b.get(&format!("/api/v1/dossiers/{lic}"), &citizen_token())
            .await;
    assert!(
        view.body["documents"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["component"] != "phieu_lltp"),
        "{}",
        view.text
    );
    let kept = w.b.get("/api/v1/me/papers", &citizen_token()).await;
    assert_eq!(kept.body, json!([]), "{}", kept.text);
    // The genuine paper still verifies and is taken.
    let r = reuse(&w, &lic, &citizen_token(), &paper, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(signature_check(&r.body)["outcome"], "verified");
}

/// The agencies of `deploy/examples/{name}.yaml`.
fn example_agencies(name: &str) -> engine::agency::Agencies {
    let path = crate::support::repo_root().join(format!("deploy/examples/{name}.yaml"));
    tthc_api::config::ServeConfig::from_file(&path)
        .unwrap()
        .agencies
}
