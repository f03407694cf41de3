//! The SVG plot of a run: throughput against workers (the median over rounds, one line per
//! target) on the left, and on the right the latency CDF of each target at its largest worker
//! count (last round), on a logarithmic latency axis.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::stats::{Spread, StepResult};

/// Width and height of the SVG.
const SIZE: (u32, u32) = (1280, 520);

/// Line colours, distinct on white (the default palette's yellow is not).
const COLORS: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

fn line_color(i: usize) -> RGBAColor {
    COLORS[i % COLORS.len()].to_rgba()
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Throughput per target and worker count (median over rounds), in first-seen target order.
fn throughput(steps: &[StepResult]) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    for s in steps {
        if !order.contains(&s.target) {
            order.push(s.target.clone());
        }
        by.entry((s.target.clone(), s.workers))
            .or_default()
            .push(s.ops_per_s);
    }
    order
        .into_iter()
        .map(|t| {
            let pts = by
                .iter()
                .filter(|((name, _), _)| *name == t)
                .filter_map(|((_, w), v)| Spread::of(v.clone()).map(|s| (*w as f64, s.median)))
                .collect();
            (t, pts)
        })
        .collect()
}

/// A target's CDF: its name, the worker count, the points.
type Curve = (String, usize, Vec<(f64, f64)>);

/// The CDF of each target's last step at its largest worker count.
fn cdfs(steps: &[StepResult]) -> Vec<Curve> {
    let mut out: Vec<Curve> = Vec::new();
    for s in steps {
        let pts: Vec<(f64, f64)> = s
            .cdf
            .iter()
            .map(|p| (p.latency_ms.max(0.001), p.fraction))
            .collect();
        match out.iter_mut().find(|(t, _, _)| *t == s.target) {
            Some(e) if s.workers >= e.1 => *e = (s.target.clone(), s.workers, pts),
            Some(_) => {}
            None => out.push((s.target.clone(), s.workers, pts)),
        }
    }
    out
}

/// Writes the plot of `steps` to `path` (SVG), titled `title`.
///
/// # Errors
/// If the file cannot be written.
pub fn write_svg(path: &Path, title: &str, steps: &[StepResult]) -> Result<()> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(err)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);

    let series = throughput(steps);
    let max_w = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.0))
        .fold(1.0, f64::max);
    let max_ops = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|x| x.1))
        .fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput vs workers", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_w * 1.05, 0.0..max_ops * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("workers")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("ops/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(err)?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = line_color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;

    let curves = cdfs(steps);
    let lat_max = curves
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|x| x.0))
        .fold(0.01, f64::max);
    let lat_min = curves
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|x| x.0))
        .fold(lat_max, f64::min)
        .min(lat_max / 10.0);
    let mut chart = ChartBuilder::on(&right)
        .caption("latency CDF (largest worker count)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lat_min * 0.9..lat_max * 1.1).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(err)?;
    for (i, (name, workers, pts)) in curves.iter().enumerate() {
        let color = line_color(i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(format!("{name} ({workers} workers)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::{Mode, Recorder};
    use crate::workload::Op;

    #[test]
    fn writes_an_svg() {
        let mut steps = Vec::new();
        for (t, w, us) in [("a", 1, 100), ("a", 4, 150), ("b", 1, 300), ("b", 4, 900)] {
            let mut r = Recorder::new();
            for i in 0..100 {
                r.success(Op::Sign, Duration::from_micros(us + i));
            }
            steps.push(StepResult::new(
                t,
                1,
                w,
                Mode::Closed,
                Duration::from_secs(1),
                &r,
                0,
            ));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        write_svg(&path, "test", &steps).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        assert!(svg.contains("throughput vs workers"));
        assert!(svg.contains("a (4 workers)"));
    }
}
