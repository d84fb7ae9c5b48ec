use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft::config::{CaCommand, Cli, Command, LogFormat, RunArgs, RuntimeConfig};
use weft::shutdown::Shutdown;
use weft::Runtime;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Ca(cmd) => ca(cmd),
    }
}

/// `weft ca init | issue`: prints the files written; exit status 2 on bad
/// input.
fn ca(cmd: CaCommand) -> std::process::ExitCode {
    use weft::security::ca;
    let written = match cmd {
        CaCommand::Init(a) => ca::init_dir(
            &a.dir,
            &a.trust_domain,
            std::time::Duration::from_secs(a.days * 86_400),
            a.force,
        ),
        CaCommand::Issue(a) => ca::issue_to_dir(&a.ca_dir, &a.app_id, &a.namespace, a.ttl, &a.out),
    };
    match written {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft ca: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(args: RunArgs) -> std::process::ExitCode {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&args.log).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }

    let config = match RuntimeConfig::resolve(&args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let shutdown = Shutdown::new();
        spawn_signal_handler(shutdown.clone());
        let runtime = Runtime::start(config, shutdown.clone()).await?;
        runtime.run_until_shutdown(shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("weft: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn spawn_signal_handler(shutdown: Shutdown) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!(
                "cannot install signal handlers; stop the runtime with the Shutdown API"
            );
            return;
        };
        tokio::select! {
            _ = term.recv() => shutdown.trigger("SIGTERM"),
            _ = int.recv() => shutdown.trigger("SIGINT"),
        }
        // A second signal while draining stops at once.
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without waiting");
        std::process::exit(130);
    });
}
