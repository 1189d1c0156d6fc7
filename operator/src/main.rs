//! `relay-operator run` (the controller) and `relay-operator crd` (the CRD YAML).

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::{Api, Client, CustomResourceExt};
use relay_operator::config::RunConfig;
use relay_operator::controller::{self, Context};
use relay_operator::crd::Relay;
use relay_operator::leader::LeaderElector;
use relay_operator::metrics::Metrics;
use relay_operator::web::{self, WebState};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser)]
#[command(name = "relay-operator", version, about = "Kubernetes operator for ATProto relays")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(Box<RunConfig>),
    /// Print the Relay CustomResourceDefinition as YAML.
    Crd,
    /// Print the Markdown field reference of the Relay resource (docs/crd-reference.md).
    Reference,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Reference => {
            print!("{}", relay_operator::reference::markdown());
            Ok(())
        }
        Command::Run(config) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|runtime| runtime.block_on(run(*config))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn print_crd() -> anyhow::Result<()> {
    let yaml = serde_saphyr::to_string(&Relay::crd()).context("serializing the CRD")?;
    print!("---\n{yaml}");
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let _ = tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn run(config: RunConfig) -> anyhow::Result<()> {
    init_logging();
    let _ = rustls_provider();
    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(&config.probe_addr)
        .await
        .with_context(|| format!("binding {}", config.probe_addr))?;
    info!(addr = %listener.local_addr()?, "probe and metrics endpoint");
    let web_state = WebState { metrics: metrics.clone(), ready: ready.clone() };
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, web::router(web_state)).await {
            error!(%error, "probe server stopped");
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let elector = config.leader_elect.then(|| {
        let namespace = config.lease_namespace.clone().unwrap_or_else(|| "default".into());
        let identity = config.pod_name.clone().unwrap_or_else(default_identity);
        LeaderElector::new(
            Api::namespaced(client.clone(), &namespace),
            config.lease_name.clone(),
            identity,
            config.lease_duration,
            config.lease_renew,
        )
    });
    if let Some(elector) = &elector {
        // A standby replica is healthy and ready; it just does not reconcile.
        ready.store(true, Ordering::Relaxed);
        tokio::select! {
            _ = elector.acquire() => {}
            _ = wait_stop(stop_rx.clone()) => return Ok(()),
        }
    }
    metrics.leader.set(1);
    let ctx = Arc::new(Context::new(client, metrics.clone(), config));
    ready.store(true, Ordering::Relaxed);
    let controller = controller::run(ctx, wait_stop(stop_rx.clone()));
    let outcome = match &elector {
        Some(elector) => tokio::select! {
            result = controller => result,
            _ = elector.hold() => Err(anyhow::anyhow!("lost the leader Lease; exiting so a fresh replica can stand by")),
        },
        None => controller.await,
    };
    metrics.leader.set(0);
    if let Some(elector) = &elector {
        elector.release().await;
    }
    outcome
}

fn rustls_provider() -> Result<(), std::sync::Arc<rustls::crypto::CryptoProvider>> {
    rustls::crypto::ring::default_provider().install_default()
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    info!("shutting down");
}
