//! The PNG chart: one panel per key figure, a bar per system at its
//! median with a whisker from min to max. Text needs a TrueType font,
//! loaded at run time (DejaVu Sans, Debian's fonts-dejavu-core, which
//! bench/run installs) and drawn by plotters' built-in ab_glyph renderer;
//! without the font the chart is drawn without text.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::results::{Figure, Results, Stat, fmt};
use crate::systems::Kind;

const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

const PANELS: [Figure; 12] = [
    Figure::LatL7P99,
    Figure::LatL4P99,
    Figure::LatL7Cpu,
    Figure::RateL7,
    Figure::RateL4,
    Figure::RateL7PerCpu,
    Figure::BulkMibS,
    Figure::BulkMibPerCpu,
    Figure::HsServerPerCpu,
    Figure::ConnResumePerCpu,
    Figure::RssIdleServer,
    Figure::RssConnServer,
];

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Direct => RGBColor(150, 150, 150),
        Kind::Mtlsd => RGBColor(214, 39, 40),
        Kind::Mtlsd2 => RGBColor(240, 128, 128),
        Kind::Haproxy => RGBColor(31, 119, 180),
        Kind::Nginx => RGBColor(44, 160, 44),
        Kind::Caddy => RGBColor(148, 103, 189),
        Kind::Stunnel => RGBColor(255, 127, 14),
    }
}

fn load_font() -> bool {
    for path in FONT_FILES {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}

fn title(f: Figure) -> String {
    match f {
        Figure::LatL7P99 => "p99 at 1,000 rps, gRPC mode (ms, lower is better)".into(),
        Figure::LatL4P99 => "p99 at 1,000 rps, tcp mode (ms, lower is better)".into(),
        Figure::LatL7Cpu => "proxy CPU at 1,000 rps, gRPC (% core, lower)".into(),
        Figure::RateL7 => "max unary rate, gRPC mode (calls/s, higher)".into(),
        Figure::RateL4 => "max unary rate, tcp mode (calls/s, higher)".into(),
        Figure::RateL7PerCpu => "gRPC calls per proxy CPU-s (higher)".into(),
        Figure::BulkMibS => "bulk TCP (MiB/s, higher)".into(),
        Figure::BulkMibPerCpu => "bulk MiB per proxy CPU-s (higher)".into(),
        Figure::HsServerPerCpu => "full handshakes per server CPU-s (higher)".into(),
        Figure::ConnResumePerCpu => "resumed conns per pair CPU-s (higher)".into(),
        Figure::RssIdleServer => "RSS idle, server side (MB, lower)".into(),
        Figure::RssConnServer => "RSS per connection, server (KiB, lower)".into(),
        other => other.meta().title.to_owned(),
    }
}

pub(crate) fn draw(results: &Results, path: &Path) -> anyhow::Result<()> {
    let text = load_font();
    if !text {
        eprintln!("no DejaVu Sans font found; drawing the chart without text");
    }
    let root = BitMapBackend::new(path, (1800, 1300)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(70);
    if text {
        head.draw(&Text::new(
            format!(
                "mtlsd vs HAProxy, nginx, Caddy, stunnel — {} — median of {} run(s), whiskers min–max{}",
                results.date,
                results.params.reps,
                if results.params.quick { " (quick)" } else { "" }
            ),
            (20, 10),
            ("sans-serif", 26).into_font(),
        ))?;
        let mut x = 20;
        for kind in Kind::ALL {
            head.draw(&Rectangle::new(
                [(x, 45), (x + 18, 63)],
                color(kind).filled(),
            ))?;
            head.draw(&Text::new(
                kind.name(),
                (x + 24, 45),
                ("sans-serif", 18).into_font(),
            ))?;
            x += 140;
        }
    }
    let panels = body.split_evenly((3, 4));
    for (area, figure) in panels.iter().zip(PANELS) {
        let bars: Vec<(usize, Kind, Stat)> = Kind::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, &k)| results.stat(figure, k).map(|s| (i, k, s)))
            .collect();
        let top = bars
            .iter()
            .map(|(_, _, s)| s.max)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut builder = ChartBuilder::on(area);
        builder.margin(12);
        if text {
            builder
                .caption(title(figure), ("sans-serif", 17))
                .x_label_area_size(22)
                .y_label_area_size(62);
        }
        let mut chart = builder.build_cartesian_2d(0f64..Kind::ALL.len() as f64, 0f64..top)?;
        if text {
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(6)
                .y_label_formatter(&|v| fmt(*v))
                .label_style(("sans-serif", 14))
                .draw()?;
        }
        for (i, kind, s) in &bars {
            let x = *i as f64;
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, s.median)],
                color(*kind).filled(),
            )))?;
            if s.n > 1 {
                let whisker = BLACK.stroke_width(2);
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x + 0.5, s.min), (x + 0.5, s.max)],
                    whisker,
                )))?;
                for y in [s.min, s.max] {
                    chart.draw_series(std::iter::once(PathElement::new(
                        vec![(x + 0.4, y), (x + 0.6, y)],
                        whisker,
                    )))?;
                }
            }
            if text {
                chart.draw_series(std::iter::once(Text::new(
                    fmt(s.median),
                    (x + 0.2, s.max.max(s.median) + top * 0.06),
                    ("sans-serif", 13).into_font(),
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}
