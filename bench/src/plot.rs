//! SVG charts of a [`Report`] (plotters, SVG backend only): throughput over time and
//! latency percentiles per operation kind. Drawn from the report alone, so they can be
//! redrawn from a saved JSON report too.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Report;

/// A chart that could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// The output directory could not be made.
    #[error("cannot create plot directory {dir}: {source}")]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Drawing failed.
    #[error("drawing {file}: {message}")]
    Draw {
        /// The chart's file.
        file: PathBuf,
        /// What the plotting library said.
        message: String,
    },
}

const SIZE: (u32, u32) = (960, 540);

/// Writes `throughput.svg` and `latency.svg` into `dir` (created if missing); returns
/// the files written.
pub fn write_plots(report: &Report, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Dir {
        dir: dir.into(),
        source,
    })?;
    let throughput = dir.join("throughput.svg");
    draw_throughput(report, &throughput).map_err(|message| PlotError::Draw {
        file: throughput.clone(),
        message,
    })?;
    let latency = dir.join("latency.svg");
    draw_latency(report, &latency).map_err(|message| PlotError::Draw {
        file: latency.clone(),
        message,
    })?;
    Ok(vec![throughput, latency])
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn subtitle(report: &Report) -> String {
    let m = &report.manifest;
    format!(
        "{}, workload {}, {} keys {}, {} B values, concurrency {}{}",
        m.target,
        m.workload,
        m.keys,
        m.distribution,
        m.value_size,
        m.concurrency,
        m.rate
            .map_or(String::new(), |r| format!(", open loop {r} ops/s"))
    )
}

fn draw_throughput(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let samples = &report.throughput;
    let x0 = samples
        .iter()
        .map(|s| s.t_secs - s.interval_secs)
        .fold(0.0f64, f64::min);
    let x1 = samples.iter().map(|s| s.t_secs).fold(1.0f64, f64::max);
    let y1 = samples
        .iter()
        .map(|s| s.ops_per_sec.max(s.errors_per_sec))
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Throughput: {}", subtitle(report)),
            ("sans-serif", 16),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds from the end of warmup (shaded: warmup, not recorded)")
        .y_desc("operations per second")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    if x0 < 0.0 {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (0.0, y1)],
                BLACK.mix(0.06).filled(),
            )))
            .map_err(err)?;
    }
    let ok: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_secs, s.ops_per_sec)).collect();
    chart
        .draw_series(LineSeries::new(ok, BLUE.stroke_width(2)))
        .map_err(err)?
        .label("successful ops/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if samples.iter().any(|s| s.errors_per_sec > 0.0) {
        let errors: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.t_secs, s.errors_per_sec))
            .collect();
        chart
            .draw_series(LineSeries::new(errors, RED.stroke_width(2)))
            .map_err(err)?
            .label("errors/s")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Quantile to "nines": 0.9 -> 1, 0.99 -> 2, ...
fn nines(q: f64) -> f64 {
    -(1.0 - q).log10()
}

fn draw_latency(report: &Report, path: &Path) -> Result<(), String> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let curves: Vec<(String, Vec<(f64, f64)>)> = report
        .ops
        .iter()
        .filter(|op| !op.curve.is_empty())
        .map(|op| {
            let points = op
                .curve
                .iter()
                .filter(|p| p.quantile < 1.0)
                .map(|p| (nines(p.quantile), (p.latency_us / 1000.0).max(1e-3)))
                .collect();
            (op.op.name().to_string(), points)
        })
        .collect();
    let all = curves.iter().flat_map(|(_, points)| points.iter());
    let (ymin, ymax) = all.fold((f64::MAX, 0.0f64), |(lo, hi), &(_, y)| {
        (lo.min(y), hi.max(y))
    });
    let (ymin, ymax) = if ymax > 0.0 {
        (ymin / 2.0, ymax * 2.0)
    } else {
        (1e-3, 1.0)
    };
    let x1 = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.0))
        .fold(3.0f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Latency percentiles: {}", subtitle(report)),
            ("sans-serif", 16),
        )
        .margin(15)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x1, (ymin..ymax).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency, ms (log scale)")
        .x_labels(x1 as usize + 1)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            let s = format!("{p:.4}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            format!("{s}%")
        })
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::known_report;

    #[test]
    fn writes_both_charts_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plots");
        let files = write_plots(&known_report(), &out).unwrap();
        assert_eq!(files.len(), 2);
        for file in files {
            let svg = std::fs::read_to_string(&file).unwrap();
            assert!(
                svg.starts_with("<svg") || svg.contains("<svg"),
                "{}",
                file.display()
            );
            assert!(
                svg.contains("<polyline") || svg.contains("<path"),
                "{}",
                file.display()
            );
        }
        let latency = std::fs::read_to_string(out.join("latency.svg")).unwrap();
        assert!(latency.contains("read") && latency.contains("update"));
        assert!(latency.contains("99.9%"));
    }

    #[test]
    fn nines_scale() {
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
    }
}
