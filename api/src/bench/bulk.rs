//! 6. Worklist and owner lookup with N dossiers stored.

#[allow(unused_imports)]
use super::*;

pub(super) fn worklist_row(n: u64) -> Row {
    Row::new(
        "worklist",
        &format!("officer's worklist @ {} dossiers", fmt_int(n as f64)),
        "ms (p99)",
        "p99 < 20 ms at 1,000,000 dossiers",
    )
}

pub(super) fn owner_row(n: u64) -> Row {
    Row::new(
        "owner_lookup",
        &format!("dossiers of an owner @ {} dossiers", fmt_int(n as f64)),
        "ms (p99)",
        "p99 < 20 ms at 1,000,000 dossiers",
    )
}

/// The agencies the bulk rows are spread over: the provincial Department of Justice takes a
/// quarter, the rest share the remainder.
pub(super) fn bulk_agencies() -> Vec<String> {
    let mut a = vec![AGENCY.to_owned(), "000.00.17.H59".to_owned()];
    for i in 0..18 {
        a.push(format!("000.{:02}.{:02}.H59", 20 + i, 30 + i));
    }
    a
}

/// Inserts `n` dossiers (and an open task for the newest `open` share of them) straight into
/// the tables, with SQL generating the rows, 100,000 a transaction.
pub(super) async fn bulk_insert(pool: &sqlx::SqlitePool, n: u64, owners: u64) -> Result<()> {
    let agencies = bulk_agencies();
    let agency_case = {
        let mut s = String::from("CASE WHEN h % 4 = 0 THEN 0 ELSE 1 + (h / 4) % 19 END");
        s = format!(
            "(CASE {s} {} END)",
            agencies
                .iter()
                .enumerate()
                .map(|(i, a)| format!("WHEN {i} THEN '{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        s
    };
    // Three years of filings, oldest first; the newest 5% are open.
    let start = Utc
        .with_ymd_and_hms(2023, 3, 1, 1, 0, 0)
        .single()
        .unwrap_or_default()
        .timestamp_micros();
    let span: i64 = 3 * 365 * 86_400 * 1_000_000;
    let step = span / n as i64;
    let open_from = n - n / 20;
    let sql = format!(
        "WITH RECURSIVE s(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?2),
         r AS (SELECT i, (i * 2654435761) % 4294967296 AS h,
                      ((i * 2246822519 + 3266489917) % 4294967296) % ?3 AS o,
                      ?4 + i * ?5 AS filed, i >= ?6 AS open FROM s),
         v AS (SELECT i, h, o, filed, open, {agency_case} AS agency FROM r)
         INSERT INTO dossiers (code, procedure_code, procedure_version, agency_code, owner_id,
             owner_name, channel, status, seq, last_hash, filed_at, updated_at, received_at,
             due_at, closed, paused, overdue, apology_sent)
         SELECT agency || '-' || substr(strftime('%Y%m%d', filed / 1000000, 'unixepoch', '+7 hours'), 3)
                    || '-' || printf('%04d', i % 100000),
                CASE h % 10 WHEN 0 THEN '1.001193' WHEN 1 THEN '2.000720' WHEN 2 THEN '1.012265'
                    ELSE '2.000488' END,
                1, agency,
                printf('0%02d%09d', o % 96 + 1, o),
                (CASE o % 6 WHEN 0 THEN 'Nguyễn' WHEN 1 THEN 'Trần' WHEN 2 THEN 'Lê'
                    WHEN 3 THEN 'Phạm' WHEN 4 THEN 'Hoàng' ELSE 'Vũ' END)
                || (CASE (o / 6) % 5 WHEN 0 THEN ' Văn An' WHEN 1 THEN ' Thị Bình'
                    WHEN 2 THEN ' Minh Châu' WHEN 3 THEN ' Đức Dũng' ELSE ' Thu Hà' END),
                CASE WHEN h % 10 < 7 THEN 'online' ELSE 'in_person' END,
                CASE WHEN open THEN (CASE h % 3 WHEN 0 THEN 2 WHEN 1 THEN 4 ELSE 9 END)
                     ELSE (CASE WHEN h % 50 = 0 THEN 3 ELSE 10 END) END,
                CASE WHEN open THEN 6 + h % 12 ELSE 30 + h % 12 END,
                lower(hex(randomblob(32))),
                filed, filed + 600000000 + h % 1000000, filed + 3600000000,
                filed + 14 * 86400000000, NOT open, 0, CASE WHEN h % 40 = 0 THEN 1 ELSE 0 END, 0
         FROM v"
    );
    let task_sql =
        "INSERT INTO tasks (dossier_code, task_id, step, name, role, agency_code, claimed_by,
             opened_at, due_at)
         SELECT code, 't' || (2 + (x % 6)),
                CASE x % 6 WHEN 0 THEN 'tiep_nhan' WHEN 1 THEN 'tham_dinh' WHEN 2 THEN 'du_thao_phieu'
                    WHEN 3 THEN 'duyet_phong' WHEN 4 THEN 'ky_phieu_so_1' ELSE 'phat_hanh' END,
                CASE x % 6 WHEN 0 THEN 'Kiểm tra, tiếp nhận và số hóa hồ sơ'
                    WHEN 1 THEN 'Tra cứu cơ sở dữ liệu lý lịch tư pháp, thẩm định hồ sơ'
                    WHEN 2 THEN 'Cập nhật thông tin, dự thảo Phiếu lý lịch tư pháp'
                    WHEN 3 THEN 'Lãnh đạo phòng kiểm tra dự thảo'
                    WHEN 4 THEN 'Lãnh đạo Sở ký số Phiếu lý lịch tư pháp số 1'
                    ELSE 'Ký số của cơ quan, vào sổ, phát hành' END,
                CASE x % 6 WHEN 0 THEN 'mot_cua' WHEN 1 THEN 'chuyen_vien' WHEN 2 THEN 'chuyen_vien'
                    WHEN 3 THEN 'lanh_dao_phong' WHEN 4 THEN 'lanh_dao' ELSE 'van_thu' END,
                agency_code,
                CASE WHEN x % 2 = 0 THEN NULL ELSE 'officer-' || (x % 40) END,
                updated_at, updated_at + (1 + x % 5) * 86400000000
         FROM (SELECT code, agency_code, updated_at, (rowid * 2654435761) % 4294967296 AS x
               FROM dossiers WHERE closed = 0 AND rowid > ?1 AND rowid <= ?2)";
    let chunk = 100_000u64;
    let mut lo = 0u64;
    while lo < n {
        let hi = (lo + chunk).min(n);
        let mut tx = pool.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(lo as i64)
            .bind(hi as i64)
            .bind(owners as i64)
            .bind(start)
            .bind(step)
            .bind(open_from as i64)
            .execute(&mut *tx)
            .await
            .context("bulk insert of dossiers")?;
        tx.commit().await?;
        lo = hi;
    }
    let mut tx = pool.begin().await?;
    sqlx::query(task_sql)
        .bind(0i64)
        .bind(i64::MAX)
        .execute(&mut *tx)
        .await
        .context("bulk insert of tasks")?;
    tx.commit().await?;
    Ok(())
}

/// A small deterministic generator (SplitMix64) for picking what to query.
pub(super) struct Pick(u64);

impl Pick {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

pub(super) async fn bench_lookups(work: &Path, sizes: &Sizes) -> Result<(Row, Row)> {
    let db = work.join("lookup.db");
    let store = engine::store::Store::open(&format!("sqlite://{}", db.display())).await?;
    let raw = sqlite_pool(&db).await?;
    let pool = &raw;
    let n = sizes.lookup;
    let owners = (n * 2 / 5).max(1);
    let t = Instant::now();
    bulk_insert(pool, n, owners).await?;
    let insert_secs = t.elapsed().as_secs_f64();
    let (dossiers, tasks): (i64, i64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM dossiers), (SELECT COUNT(*) FROM tasks)")
            .fetch_one(pool)
            .await?;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    let file_mb = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    eprintln!(
        "  {} dossiers and {} open tasks inserted in {insert_secs:.1} s ({file_mb:.0} MB)",
        fmt_int(dossiers as f64),
        fmt_int(tasks as f64)
    );
    let agencies = bulk_agencies();
    let roles = [
        "mot_cua",
        "chuyen_vien",
        "lanh_dao_phong",
        "lanh_dao",
        "van_thu",
    ];
    let mut pick = Pick(7);
    // Warm the connections and the cache a little, as a running server would be.
    for _ in 0..20 {
        store
            .worklist(AGENCY, &["chuyen_vien".to_owned()], None, 50, 0)
            .await?;
    }
    let mut lat = Vec::with_capacity(sizes.queries);
    let mut rows_seen = 0usize;
    for _ in 0..sizes.queries {
        let h = pick.next();
        let agency = if h.is_multiple_of(4) {
            &agencies[0]
        } else {
            &agencies[1 + ((h / 4) % 19) as usize]
        };
        let role = roles[((h >> 20) % roles.len() as u64) as usize].to_owned();
        let t = Instant::now();
        let r = store.worklist(agency, &[role], None, 50, 0).await?;
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        rows_seen += r.len();
    }
    lat.sort_unstable();
    // The worst officer: the biggest agency's specialists (two task steps), every time.
    let mut worst = Vec::new();
    for _ in 0..(sizes.queries / 10).max(20) {
        let t = Instant::now();
        store
            .worklist(AGENCY, &["chuyen_vien".to_owned()], None, 50, 0)
            .await?;
        worst.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    worst.sort_unstable();
    let biggest: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM tasks WHERE agency_code = ? AND role = 'chuyen_vien'",
    )
    .bind(AGENCY)
    .fetch_one(pool)
    .await?;
    let how = format!(
        "{} dossiers bulk-inserted with SQL (INSERT … SELECT over a recursive CTE, 100,000 a \
         transaction) into the engine's own tables, in {insert_secs:.1} s: 3 years of filings \
         over 20 agencies (one has 25%), {} owners, 4 procedures, the newest 5% open with one \
         open task each ({} tasks), no events (queries read only dossiers and tasks); file {file_mb:.0} MB",
        fmt_int(dossiers as f64),
        fmt_int(owners as f64),
        fmt_int(tasks as f64)
    );
    let mut w = worklist_row(n);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    w.value = Some(p99);
    w.figure = format!("p50 {p50:.2} ms, p99 {p99:.2} ms");
    w.detail = format!(
        "Store::worklist (50 rows), {} queries over random agency and role; biggest worklist \
         ({} tasks) p50 {:.2} ms, p99 {:.2} ms",
        sizes.queries,
        fmt_int(biggest as f64),
        percentile(&worst, 0.5),
        percentile(&worst, 0.99)
    );
    w.met = (n >= 1_000_000).then_some(p99 < 20.0 && percentile(&worst, 0.99) < 20.0);
    w.data = json!({
        "dossiers": dossiers, "open_tasks": tasks, "queries": sizes.queries,
        "p50_ms": p50, "p99_ms": p99, "rows_returned_avg": rows_seen as f64 / sizes.queries as f64,
        "biggest_worklist": {"tasks": biggest, "p50_ms": percentile(&worst, 0.5), "p99_ms": percentile(&worst, 0.99)},
        "insert_seconds": insert_secs, "file_mb": file_mb,
    });
    w.notes.push(how.clone());

    let mut lat = Vec::with_capacity(sizes.queries);
    let mut found = 0usize;
    for _ in 0..20 {
        store.dossiers_of_owner(&citizen_owner(1), 20, 0).await?;
    }
    for _ in 0..sizes.queries {
        let o = pick.next() % owners;
        let id = citizen_owner(o);
        let t = Instant::now();
        let r = store.dossiers_of_owner(&id, 20, 0).await?;
        lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        found += r.len();
    }
    lat.sort_unstable();
    let mut o = owner_row(n);
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    o.value = Some(p99);
    o.figure = format!("p50 {p50:.2} ms, p99 {p99:.2} ms");
    o.detail = format!(
        "Store::dossiers_of_owner (20 rows), {} random owners, {:.1} dossiers each on average",
        sizes.queries,
        found as f64 / sizes.queries as f64
    );
    o.met = (n >= 1_000_000).then_some(p99 < 20.0);
    o.data = json!({
        "dossiers": dossiers, "owners": owners, "queries": sizes.queries,
        "p50_ms": p50, "p99_ms": p99, "rows_returned_avg": found as f64 / sizes.queries as f64,
    });
    o.notes.push(how);
    pool.close().await;
    drop(store);
    Ok((w, o))
}

/// The owner id the bulk rows give owner number `o`.
pub(super) fn citizen_owner(o: u64) -> String {
    format!("0{:02}{:09}", o % 96 + 1, o)
}
