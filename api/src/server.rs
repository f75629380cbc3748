//! `tthc serve`: the HTTP API (axum) over the engine, with its background worker.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use engine::calendar::Calendar;
use engine::definition::{Loader, LoaderConfig};
use engine::engine::Background;
use engine::{Clock, Engine, EngineConfig};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::Verifier;
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::problem::ApiError;
use crate::routes;

pub use crate::extract::{Body, entity_tag, expected_seq};
pub use crate::state::{AppState, Shared};

#[derive(OpenApi)]
#[openapi(
    info(title = "tthc", description = "Process engine for Vietnamese administrative procedures: the HTTP API for officers, citizens, administrators and auditors."),
    components(schemas(crate::problem::Problem)),
    modifiers(&SecurityAddon)
)]
struct ApiDoc;

struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The router and the OpenAPI document, built from the same route registrations (and
/// finished by [`crate::openapi::finish`]).
pub fn app(state: AppState, body_limit: usize) -> (Router, serde_json::Value) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::system::router())
        .merge(routes::admin::router())
        .merge(routes::dossiers::router())
        .merge(routes::audit::router())
        .merge(routes::papers::router(state.upload_limit))
        .split_for_parts();
    let mut api = serde_json::to_value(&api).unwrap_or_default();
    crate::openapi::finish(&mut api);
    // Serialized once: the document is large and the same for every request.
    let doc = axum::body::Bytes::from(serde_json::to_vec(&api).unwrap_or_default());
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(problemize))
        .with_state(state);
    (router, api)
}

/// Turns error answers made outside the handlers (body limit, unknown method) into problem
/// details like every other error.
async fn problemize(request: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if !status.is_client_error() && !status.is_server_error() || is_json {
        return response;
    }
    let (code, detail) = match status.as_u16() {
        413 => ("body_too_large", "the request body is too large"),
        405 => ("method_not_allowed", "this route does not take that method"),
        415 => ("unsupported_media_type", "unsupported content type"),
        400 => ("bad_request", "the request could not be read"),
        _ => ("error", "the request failed"),
    };
    ApiError::new(status, code, detail).into_response()
}

/// Counts requests and their latency by route, and logs each.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let elapsed = start.elapsed();
    state
        .metrics
        .observe(method.as_str(), &route, response.status().as_u16(), elapsed);
    tracing::info!(method = %method, route = %route, status = response.status().as_u16(), micros = elapsed.as_micros() as u64, "request");
    response
}

/// Starts the engine and serves until Ctrl-C or SIGTERM, then finishes in-flight requests
/// and jobs before exiting.
pub async fn serve(config: ServeConfig, clock: Clock) -> Result<()> {
    let (router, state, background) = build(&config, clock).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "tthc listening on http://{addr} (database {})",
        config.database_url
    );
    tracing::info!(%addr, "listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = {
        let engine = state.engine.clone();
        tokio::spawn(async move { engine.run_background(background, stop_rx).await })
    };
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    // `into_make_service`: every connection shares the router. Served as a `Router`, axum
    // 0.8 copies the whole route tree for each connection (`with_state(())` on a shared
    // router), which held about 1 MB a kept-alive connection here.
    axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("stopping: finishing background jobs");
    let _ = stop_tx.send(true);
    let _ = worker.await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Kho DL blobs, the portal (or the built-in simulator) and the signing keys.
async fn integration_settings(
    config: &ServeConfig,
    agencies: &engine::agency::Agencies,
) -> Result<crate::integrations::Settings> {
    let portal = match (&config.portal_url, config.portal_simulator) {
        (Some(url), _) => Some(engine::portal::PortalConfig::new(
            url.clone(),
            config.portal_client_id.clone(),
            config.portal_secret(),
        )),
        (None, true) => {
            let secret = hex::encode(rand::random::<[u8; 16]>());
            let (addr, _) = crate::portal_sim::start(crate::portal_sim::SimConfig::local(
                config.portal_simulator_database.clone(),
                config.portal_client_id.clone(),
                secret.clone(),
            ))
            .await
            .map_err(|e| anyhow::anyhow!("starting the built-in portal simulator: {e}"))?;
            tracing::warn!(%addr, "no portal_url configured: using the built-in portal simulator (development only)");
            Some(engine::portal::PortalConfig::new(
                format!("http://{addr}"),
                config.portal_client_id.clone(),
                secret,
            ))
        }
        (None, false) => {
            tracing::warn!("no portal configured: portal hooks will fail and open incidents");
            None
        }
    };
    let keys = match &config.keys_file {
        Some(f) => crate::integrations::Keys::Ring(
            engine::signing::KeyRing::load(f)
                .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?,
        ),
        None => {
            tracing::warn!("no keys_file configured: results are signed with development keys");
            crate::integrations::Keys::Development("tthc-development".into())
        }
    };
    Ok(crate::integrations::Settings {
        blobs_dir: config.blobs_dir.clone(),
        portal,
        keys,
        agencies: agencies.names(),
        reuse_unverified: config.reuse.unverified,
    })
}

/// Opens the engine, deploys the definitions, and builds the router.
pub async fn build(config: &ServeConfig, clock: Clock) -> Result<(Router, AppState, Background)> {
    let mut calendar = Calendar::default_vietnam()?;
    for f in &config.holiday_files {
        calendar.merge(Calendar::load(f)?);
    }
    let mut engine_config = EngineConfig::new(
        &config.database_url,
        config.root.join("procedures").join("templates"),
    );
    // The configured agencies are this deployment's; without any, the catalog's (development).
    let agencies = if config.agencies.is_empty() {
        crate::config::agency_catalog(&config.root.join("procedures/catalog/agencies.yaml"))?
    } else {
        config.agencies.clone()
    };
    engine_config.agencies = agencies.clone();
    // With a portal (or the built-in simulator), every status change is synced to it.
    engine_config.sync_status_to_portal = config.portal_url.is_some() || config.portal_simulator;
    engine_config.job_lease =
        chrono::Duration::seconds(i64::try_from(config.job_lease_seconds.max(5)).unwrap_or(60));
    engine_config.state_cache = config.state_cache;
    engine_config.read_only = config.read_only;
    let engine = Engine::open(engine_config, calendar, clock).await?;
    let loader = LoaderConfig::at_root(&config.root);
    // The catalog is needed to deploy and by the Kho DL hook; without one nothing deploys.
    let catalog_loader = Loader::new(loader.clone()).map_err(|d| {
        anyhow::anyhow!(
            "the catalog has errors:\n{}",
            d.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    if config.deploy_on_start {
        let l = catalog_loader
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let report = l.load_paths(&[config.root.join("procedures")]);
        for d in report.diagnostics.iter().filter(|d| d.is_error()) {
            tracing::warn!(diagnostic = %d, "definition not deployed");
        }
        for d in &report.definitions {
            match engine.deploy(d).await {
                // A definition this deployment cannot route: starting would leave its
                // dossiers with tasks nobody can see.
                Err(e @ engine::EngineError::AgencyKindUnmapped { .. }) => {
                    anyhow::bail!(
                        "{}: {e}\nmap the kind to one of this deployment's agencies: `kind:` in `agencies` of the configuration (docs/operations.md, \"Agencies\")",
                        d.source.display()
                    );
                }
                Ok(engine::engine::Deployed::New { code, version }) => {
                    tracing::info!(%code, version, "procedure deployed")
                }
                Ok(engine::engine::Deployed::Unchanged { code, version }) => {
                    tracing::debug!(%code, version, "procedure already deployed")
                }
                Err(e) => {
                    tracing::warn!(code = %d.procedure.code, error = %e, "definition not deployed")
                }
            }
        }
    }
    // A server that reads only (the audit tools) routes nothing: unmapped kinds do not matter.
    let problems = engine.agency_problems();
    if !problems.is_empty() && !config.read_only {
        anyhow::bail!(
            "deployed procedures name agency kinds this configuration lacks:\n{}\nmap each kind to one of this deployment's agencies: `kind:` in `agencies` of the configuration (docs/operations.md, \"Agencies\")",
            problems.join("\n")
        );
    }
    let catalog = catalog_loader
        .map(|l| l.catalog().results.clone())
        .unwrap_or_default();
    let io = crate::integrations::install(
        &engine,
        &catalog,
        integration_settings(config, &agencies).await?,
    )?;
    let verifier = match &config.jwt_public_key_file {
        Some(f) => {
            Verifier::rs256(&std::fs::read(f).with_context(|| format!("reading {}", f.display()))?)?
        }
        None => Verifier::hs256(&config.secret()?),
    };
    let state = AppState::new(Shared {
        engine,
        io,
        upload_limit: config.upload_limit_bytes,
        verifier,
        loader,
        metrics: Arc::new(Metrics::new()),
        ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    });
    let (router, _) = app(state.clone(), config.body_limit_bytes);
    let background = Background {
        overdue_scan: Background::parse_schedule(&config.overdue_scan)
            .map_err(anyhow::Error::msg)?,
        poll: std::time::Duration::from_millis(config.job_poll_ms),
        seal_after: config
            .seal_after_seconds
            .map(|s| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))),
    };
    Ok((router, state, background))
}
