//! `tessera-bench`: see `bench/README.md` and `tessera-bench --help`.

use anyhow::Context as _;
use clap::Parser as _;
use tessera_bench::cli::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
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

    let report = tessera_bench::bench(&args, stop).await?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("report: {}", path.display());
    }
    if let Some(dir) = &args.plot {
        for file in tessera_bench::plot::write_plots(&report, dir)? {
            println!("chart: {}", file.display());
        }
    }
    Ok(())
}
