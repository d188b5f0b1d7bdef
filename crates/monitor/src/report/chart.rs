//! The report's chart, drawn with plotters: the loss (raw, smoothed, and the eval loss), the
//! learning rate and memory over the optimizer steps, stacked in three panels. The same drawing
//! goes to an SVG string or to an RGB buffer encoded as PNG; text uses DejaVu Sans bundled in
//! the binary, so a report looks the same on a machine without fonts.

use super::RunRecord;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::ops::Range;
use std::sync::Once;

pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 900;
const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(37, 99, 235);
const EVAL: RGBColor = RGBColor(234, 88, 12);
const LR: RGBColor = RGBColor(22, 163, 74);
const MEMORY: RGBColor = RGBColor(147, 51, 234);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled font is valid; if it were not, plotters would draw no text (not fail).
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        );
    });
}

/// The smoothed loss the UI also shows: an exponential moving average with bias correction.
pub fn ema(values: &[(u64, f64)], weight: f64) -> Vec<(u64, f64)> {
    let mut avg = 0.0;
    let mut n = 0;
    values
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|&(s, v)| {
            avg = avg * weight + (1.0 - weight) * v;
            n += 1;
            (s, avg / (1.0 - weight.powi(n)))
        })
        .collect()
}

fn range_of<'a>(series: impl Iterator<Item = &'a [(u64, f64)]>, from_zero: bool) -> Range<f64> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        for &(_, v) in s.iter().filter(|(_, v)| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.02).max(1e-9);
    (lo - if from_zero && lo == 0.0 { 0.0 } else { pad })..(hi + pad)
}

fn as_f(series: &[(u64, f64)]) -> Vec<(f64, f64)> {
    series.iter().filter(|(_, v)| v.is_finite()).map(|&(s, v)| (s as f64, v)).collect()
}

/// A series of a panel: its legend label (empty: none), colour, line width and points.
type Series<'a> = (&'a str, RGBAColor, u32, &'a [(u64, f64)]);

type Plot<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// One panel: a titled chart of some series over the steps.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_desc: &str,
    steps: Range<f64>,
    series: &[Series<'_>],
    from_zero: bool,
    y_label: &dyn Fn(&f64) -> String,
) -> Plot<DB> {
    let y = range_of(series.iter().map(|s| s.3), from_zero);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(72)
        .build_cartesian_2d(steps, y)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(y_label)
        .draw()?;
    let mut labelled = false;
    for (label, color, width, data) in series {
        if data.is_empty() {
            continue;
        }
        let style = ShapeStyle { color: *color, filled: false, stroke_width: *width };
        let pts = as_f(data);
        let drawn = if pts.len() == 1 || label.starts_with("eval") {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, style.filled())))?
        } else {
            chart.draw_series(LineSeries::new(pts, style))?
        };
        if !label.is_empty() {
            labelled = true;
            drawn.label(*label).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, run: &RunRecord) -> Plot<DB> {
    root.fill(&WHITE)?;
    let title = format!("{} — {} ({})", run.job.name, run.job.method, run.job.status.as_str());
    let root = root.titled(&title, (FONT, 22))?;
    let loss: Vec<(u64, f64)> = run.points.iter().filter_map(|p| Some((p.step, p.loss?))).collect();
    if loss.is_empty() {
        root.draw(&Text::new("no metrics recorded yet", (40, 60), (FONT, 18)))?;
        return root.present();
    }
    let last = run.points.iter().map(|p| p.step).max().unwrap_or(1).max(run.job.total_steps);
    let steps = 0f64..(last.max(1) as f64);
    let smooth = ema(&loss, 0.9);
    let evals = run.evals();
    let lr: Vec<(u64, f64)> = run.points.iter().filter_map(|p| Some((p.step, p.lr?))).collect();
    let (mem_title, mem) = run.memory_gib();
    let panels = root.split_evenly((3, 1));
    panel(
        &panels[0],
        "loss",
        "loss",
        steps.clone(),
        &[
            ("", TRAIN.mix(0.25), 1, &loss),
            ("train (smoothed)", TRAIN.to_rgba(), 2, &smooth),
            ("eval", EVAL.to_rgba(), 2, &evals),
        ],
        false,
        &|v| format!("{v:.3}"),
    )?;
    let lr_label = |v: &f64| if *v == 0.0 { "0".to_string() } else { format!("{v:.1e}") };
    panel(&panels[1], "learning rate", "lr", steps.clone(), &[("", LR.to_rgba(), 2, &lr)], true, &lr_label)?;
    let gib_label = |v: &f64| format!("{v:.3}");
    panel(&panels[2], mem_title, "GiB", steps, &[("", MEMORY.to_rgba(), 2, &mem)], true, &gib_label)?;
    root.present()
}

/// The chart as an SVG document.
pub fn svg(run: &RunRecord) -> Result<String, String> {
    register_font();
    let mut out = String::new();
    draw(SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area(), run)
        .map_err(|e| format!("cannot draw the chart: {e}"))?;
    Ok(out)
}

/// The chart as a PNG image.
pub fn png(run: &RunRecord) -> Result<Vec<u8>, String> {
    register_font();
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    draw(BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area(), run)
        .map_err(|e| format!("cannot draw the chart: {e}"))?;
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(|e| format!("cannot encode the PNG: {e}"))?;
    w.write_image_data(&rgb).map_err(|e| format!("cannot encode the PNG: {e}"))?;
    w.finish().map_err(|e| format!("cannot encode the PNG: {e}"))?;
    Ok(out)
}
