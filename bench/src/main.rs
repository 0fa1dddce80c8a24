//! `tessera-bench`: see `bench/README.md` and `tessera-bench --help`.

use anyhow::Context as _;
use clap::Parser as _;
use tessera_bench::cli::Args;

/// mimalloc, as the `tessera` binary uses: the store's many small
/// allocations made the system allocator about a tenth of the CPU (see
/// README.md, "Numbers").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.no_sync {
        eprintln!("warning: --no-sync: writes are acknowledged before they are durable");
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nCtrl-C: stopping, the summary follows (Ctrl-C again to abort)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });

    // The library's errors carry their causes in their own message: no chain to add.
    let report = tessera_bench::bench(&args, stop)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if let Some(dir) = &args.plot {
        let files =
            tessera_bench::plot::write_plots(&report, dir).map_err(|e| anyhow::anyhow!("{e}"))?;
        for file in files {
            println!("chart: {}", file.display());
        }
    }
    Ok(())
}
