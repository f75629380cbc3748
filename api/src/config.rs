//! Configuration of `tthc serve`: defaults that run on a fresh machine, an optional YAML file
//! (`--config`, or `tthc.yaml` in the working directory), then environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use engine::agency::{Agencies, Agency};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// `sqlite://PATH`.
    pub database_url: String,
    /// Holds `procedures/` (definitions, catalog, templates, calendar) and `schemas/`.
    pub root: PathBuf,
    /// Deploy the definitions under ROOT/procedures when starting.
    pub deploy_on_start: bool,
    /// HS256 secret for bearer tokens; when neither this nor `jwt_public_key_file` is set, a
    /// development secret is kept in `.tthc/jwt-secret` (created on first start).
    pub jwt_secret: Option<String>,
    /// PEM file of the RS256 public key that verifies tokens issued elsewhere.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Cron schedule of the overdue scan (seconds first), in Asia/Ho_Chi_Minh.
    pub overdue_scan: String,
    /// Longest sleep of an idle job worker, in milliseconds.
    pub job_poll_ms: u64,
    /// How long a claimed job is reserved for its node, in seconds; a node that dies loses its
    /// jobs to the others after this.
    pub job_lease_seconds: u64,
    /// How many dossiers' current states this node keeps in memory (each is brought up to date
    /// with one query before use, so other nodes' changes are never missed).
    pub state_cache: usize,
    /// Seal a settled dossier's events (closed, no open task, no job left) into one compressed
    /// archive once it has been unchanged this many seconds; `null` never seals. Sealed streams
    /// read, replay and verify as before, in a fraction of the space.
    pub seal_after_seconds: Option<u64>,
    /// Largest JSON body accepted.
    pub body_limit_bytes: usize,
    /// Largest uploaded document.
    pub upload_limit_bytes: usize,
    /// Where uploaded documents are kept (content-addressed).
    pub blobs_dir: PathBuf,
    /// `text` or `json`.
    pub log_format: String,
    /// This deployment's agencies: the catalog's list form `[{code, name, kind, valid_from,
    /// valid_until}]` (kinds resolve what definitions name, e.g. `cong_an_tinh`), or a map
    /// `{code: name}` of agencies without kinds. When set, it replaces
    /// `procedures/catalog/agencies.yaml`, so a province's deployment files dossiers and
    /// admits officers of its own agencies only.
    #[serde(deserialize_with = "agency_list_or_map")]
    pub agencies: Agencies,
    /// Extra holiday files merged into the shipped calendar.
    pub holiday_files: Vec<PathBuf>,
    /// The national portal's base URL (docs/portal-api.md). Without one, the built-in portal
    /// simulator runs in-process (development), unless `portal_simulator` is false.
    pub portal_url: Option<String>,
    /// The client id and secret for the portal's `POST /auth/token`. Without a secret, the
    /// development one [`DEV_PORTAL_CLIENT_SECRET`], which `tthc portal-sim` expects by default.
    pub portal_client_id: String,
    pub portal_client_secret: Option<String>,
    pub portal_simulator: bool,
    /// The simulator's own database, when it runs.
    pub portal_simulator_database: String,
    /// Signing keys (JSON or YAML: officers' and agencies' Ed25519 seeds, trusted public keys).
    /// Without a file, development keys are derived from a fixed passphrase.
    pub keys_file: Option<PathBuf>,
    /// Open the database only to read it (the operator's tools; never from the file).
    #[serde(skip)]
    pub read_only: bool,
    /// Reuse of papers from the portal's Kho DL (docs/operations.md, "Signatures that travel").
    pub reuse: ReuseConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReuseConfig {
    /// `refuse` (default) or `confirm`: what happens to a paper from elsewhere signed with a
    /// key this deployment does not trust, or not signed. Altered papers are always refused.
    pub unverified: engine::reuse::UnverifiedPolicy,
}

/// The portal client secret of development: the server's when none is configured, and
/// `tthc portal-sim`'s default, so that the two work together out of the box.
pub use tthc_portal_sim::DEV_PORTAL_CLIENT_SECRET;

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://tthc.db".into(),
            root: PathBuf::from("."),
            deploy_on_start: true,
            jwt_secret: None,
            jwt_public_key_file: None,
            overdue_scan: "0 0 7 * * Mon-Fri".into(),
            job_poll_ms: 1000,
            job_lease_seconds: 60,
            state_cache: 256,
            seal_after_seconds: Some(0),
            body_limit_bytes: 1024 * 1024,
            upload_limit_bytes: 20 * 1024 * 1024,
            blobs_dir: PathBuf::from("data/blobs"),
            log_format: "text".into(),
            agencies: Agencies::default(),
            holiday_files: Vec::new(),
            portal_url: None,
            portal_client_id: "tthc".into(),
            portal_client_secret: None,
            portal_simulator: true,
            portal_simulator_database: "sqlite://portal-sim.db".into(),
            keys_file: None,
            read_only: false,
            reuse: ReuseConfig::default(),
        }
    }
}

impl ServeConfig {
    /// Defaults, then the file (explicit, or `tthc.yaml` when present), then `TTHC_*` variables.
    pub fn load(file: Option<&Path>) -> Result<ServeConfig> {
        let default_file = Path::new("tthc.yaml");
        let file = match file {
            Some(f) => Some(f.to_path_buf()),
            None if default_file.exists() => Some(default_file.to_path_buf()),
            None => None,
        };
        let mut config = match &file {
            Some(f) => ServeConfig::from_file(f)?,
            None => ServeConfig::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// Defaults, then the file alone (no environment): what a configuration file says, such
    /// as the example deployments in `deploy/examples/`.
    pub fn from_file(file: &Path) -> Result<ServeConfig> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = get("TTHC_LISTEN") {
            self.listen = v.parse().with_context(|| format!("TTHC_LISTEN={v}"))?;
        }
        if let Some(v) = get("TTHC_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = get("TTHC_ROOT") {
            self.root = v.into();
        }
        if let Some(v) = get("TTHC_JWT_SECRET") {
            self.jwt_secret = Some(v);
        }
        if let Some(v) = get("TTHC_JWT_PUBLIC_KEY_FILE") {
            self.jwt_public_key_file = Some(v.into());
        }
        if let Some(v) = get("TTHC_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("TTHC_BLOBS_DIR") {
            self.blobs_dir = v.into();
        }
        if let Some(v) = get("TTHC_PORTAL_URL") {
            self.portal_url = Some(v);
        }
        if let Some(v) = get("TTHC_PORTAL_CLIENT_ID") {
            self.portal_client_id = v;
        }
        if let Some(v) = get("TTHC_PORTAL_CLIENT_SECRET") {
            self.portal_client_secret = Some(v);
        }
        if let Some(v) = get("TTHC_KEYS_FILE") {
            self.keys_file = Some(v.into());
        }
        if let Some(v) = get("TTHC_REUSE_UNVERIFIED") {
            self.reuse.unverified = match v.as_str() {
                "refuse" => engine::reuse::UnverifiedPolicy::Refuse,
                "confirm" => engine::reuse::UnverifiedPolicy::Confirm,
                _ => bail!("TTHC_REUSE_UNVERIFIED={v}: expected refuse or confirm"),
            };
        }
        if let Some(v) = get("TTHC_OVERDUE_SCAN") {
            self.overdue_scan = v;
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!(
                "log_format must be `text` or `json`, not `{}`",
                self.log_format
            );
        }
        Ok(())
    }

    /// The portal client secret: configured, or the development one.
    pub fn portal_secret(&self) -> String {
        self.portal_client_secret
            .clone()
            .unwrap_or_else(|| DEV_PORTAL_CLIENT_SECRET.to_owned())
    }

    /// The HS256 secret: configured, or the development secret file (created when missing).
    pub fn secret(&self) -> Result<Vec<u8>> {
        if let Some(s) = &self.jwt_secret {
            if s.len() < 32 {
                bail!("jwt_secret must be at least 32 characters");
            }
            return Ok(s.as_bytes().to_vec());
        }
        dev_secret()
    }
}

/// Agencies as the catalog's list of `{code, name, kind…}`, or as a map of names by code.
fn agency_list_or_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Agencies, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        Map(BTreeMap<String, String>),
        List(Vec<Agency>),
    }
    Ok(match Form::deserialize(d)? {
        Form::Map(m) => Agencies::from_names(&m),
        Form::List(l) => Agencies::new(l),
    })
}

/// The agency list of a catalog file (`procedures/catalog/agencies.yaml`): `{agencies: […]}`;
/// none when there is no such file.
pub fn agency_catalog(path: &Path) -> Result<Agencies> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Catalog {
        #[serde(deserialize_with = "agency_list_or_map")]
        agencies: Agencies,
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Agencies::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let catalog: Catalog =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(catalog.agencies)
}

/// The development secret in `.tthc/jwt-secret`, shared by `tthc serve` and `tthc token`.
pub fn dev_secret() -> Result<Vec<u8>> {
    let path = Path::new(".tthc").join("jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() >= 32 {
            return Ok(s.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(".tthc")?;
    let bytes: [u8; 32] = rand::random();
    let secret = hex::encode(bytes);
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agencies_take_the_map_and_the_catalog_list_form() {
        let map: ServeConfig =
            serde_saphyr::from_str("agencies: { \"000.00.01.H33\": Sở Tư pháp }\n").unwrap();
        let list: ServeConfig = serde_saphyr::from_str(
            "agencies:\n  - { code: \"000.00.01.H33\", name: Sở Tư pháp }\n",
        )
        .unwrap();
        assert_eq!(map.agencies, list.agencies);
        assert_eq!(
            list.agencies.get("000.00.01.H33").unwrap().name,
            "Sở Tư pháp"
        );
        let kinds: ServeConfig = serde_saphyr::from_str(
            "agencies:\n  - { code: \"000.00.01.H33\", name: Sở Tư pháp, kind: so_tu_phap, valid_from: 2025-07-01 }\n",
        )
        .unwrap();
        let a = kinds.agencies.get("000.00.01.H33").unwrap();
        assert_eq!(a.kind.as_deref(), Some("so_tu_phap"));
        assert_eq!(a.valid_from, Some("2025-07-01".parse().unwrap()));
    }

    /// Every key of the table in docs/operations.md, in the shape it documents.
    #[test]
    fn the_documented_configuration_keys_and_shapes_are_accepted() {
        let yaml = r#"
listen: "127.0.0.1:9000"
database_url: "sqlite://tthc.db?max_page_count=100000"
root: /srv/tthc
deploy_on_start: false
jwt_secret: "0123456789abcdef0123456789abcdef"
jwt_public_key_file: /etc/tthc/jwt.pem
overdue_scan: "0 0 7 * * Mon-Fri"
job_poll_ms: 500
job_lease_seconds: 30
state_cache: 128
seal_after_seconds: null
body_limit_bytes: 65536
log_format: json
agencies: [{ code: "000.00.01.H33", name: Sở Tư pháp }]
holiday_files: [/etc/tthc/holidays-2028.yaml]
blobs_dir: /var/lib/tthc/blobs
upload_limit_bytes: 1048576
portal_url: "https://portal.example"
portal_client_id: province-a
portal_client_secret: "s3cret"
portal_simulator: false
portal_simulator_database: "sqlite://portal-sim.db"
keys_file: /etc/tthc/keys.yaml
"#;
        let c: ServeConfig = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(c.seal_after_seconds, None);
        assert_eq!(c.portal_client_id, "province-a");
        assert_eq!(c.agencies.iter().count(), 1);
        let c: ServeConfig = serde_saphyr::from_str(
            "seal_after_seconds: 3600
",
        )
        .unwrap();
        assert_eq!(c.seal_after_seconds, Some(3600));
    }

    #[test]
    fn every_secret_and_the_portal_client_id_have_an_environment_variable() {
        let mut c = ServeConfig::default();
        c.apply_env(|k| match k {
            "TTHC_JWT_SECRET" => Some("j".repeat(32)),
            "TTHC_PORTAL_CLIENT_ID" => Some("province-b".into()),
            "TTHC_PORTAL_CLIENT_SECRET" => Some("portal secret".into()),
            "TTHC_DATABASE_URL" => Some("postgres://tthc:pw@db/tthc".into()),
            "TTHC_KEYS_FILE" => Some("/etc/tthc/keys.yaml".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.jwt_secret.as_deref(), Some("j".repeat(32).as_str()));
        assert_eq!(c.portal_client_id, "province-b");
        assert_eq!(c.portal_client_secret.as_deref(), Some("portal secret"));
        assert_eq!(c.database_url, "postgres://tthc:pw@db/tthc");
        assert_eq!(c.keys_file, Some(PathBuf::from("/etc/tthc/keys.yaml")));
    }

    /// A server with the defaults talks to `tthc portal-sim` with its defaults.
    #[test]
    fn the_portal_client_defaults_are_the_simulators() {
        #[derive(clap::Parser)]
        struct Sim {
            #[command(flatten)]
            args: crate::portal_sim::Args,
        }
        use clap::Parser;
        let sim = Sim::try_parse_from(["portal-sim"]).unwrap().args;
        let c = ServeConfig::default();
        assert_eq!(c.portal_client_id, sim.client_id);
        assert_eq!(c.portal_secret(), sim.client_secret);
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c = ServeConfig::default();
        c.apply_env(|k| match k {
            "TTHC_LISTEN" => Some("127.0.0.1:9999".into()),
            "TTHC_LOG_FORMAT" => Some("json".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.log_format, "json");
        let mut c = ServeConfig::default();
        assert!(
            c.apply_env(|k| (k == "TTHC_LOG_FORMAT").then(|| "xml".into()))
                .is_err()
        );
    }
}
