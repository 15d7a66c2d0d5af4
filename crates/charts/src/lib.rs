//! The [`ChartRenderer`] port on plotters: a chart's title, then its panels stacked top to
//! bottom, each with labelled axes, thick lines in distinct colours and a legend, drawn as PNG
//! (through a pixel buffer, encoded by `image`) or SVG.
//!
//! Text is drawn by ab_glyph from DejaVu Sans compiled into the binary (`fonts/`): plotters is
//! built without its `ttf` feature, so no code path looks for fonts on the machine. SVG text
//! names the generic `sans-serif` family, which every SVG viewer has.
//! Sizes scale with the chart, so a chart a phone shrinks to its screen stays readable.

use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::{
    backend::RGBPixel,
    coord::Shift,
    prelude::*,
    style::{
        register_font,
        text_anchor::{HPos, Pos, VPos},
        FontDesc, FontFamily, FontStyle,
    },
};
use trainyard_domain::charts::{AxisFormat, ChartFormat, ChartRenderer, ChartSpec, Panel, RenderError, MAX_SIDE, MIN_SIDE};

/// The family the compiled-in fonts are registered under, and SVG text names.
const FAMILY: &str = "sans-serif";
static REGULAR: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");
static BOLD: &[u8] = include_bytes!("../fonts/DejaVuSans-Bold.ttf");

/// Values beyond this magnitude are drawn at it, so that an axis's span stays finite.
const VALUE_LIMIT: f64 = 1e300;
/// The smallest text, in pixels.
const MIN_TEXT: f64 = 11.0;

const INK: RGBColor = RGBColor(33, 33, 33);
const MUTED: RGBColor = RGBColor(110, 110, 110);
const GRID: RGBColor = RGBColor(221, 221, 221);
/// Tableau 10: distinct hues that stay apart for most colour-blind readers. Series past the
/// tenth repeat them dashed.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Registers the compiled-in fonts with plotters, once per process.
fn fonts_ready() -> Result<(), RenderError> {
    static READY: OnceLock<bool> = OnceLock::new();
    let ok = *READY
        .get_or_init(|| register_font(FAMILY, FontStyle::Normal, REGULAR).is_ok() && register_font(FAMILY, FontStyle::Bold, BOLD).is_ok());
    if ok {
        Ok(())
    } else {
        Err(RenderError("the compiled-in font could not be read".to_owned()))
    }
}

fn fail(e: impl std::fmt::Display) -> RenderError {
    RenderError(e.to_string())
}

/// Draws charts with plotters. Stateless: one value serves every thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlottersRenderer;

impl PlottersRenderer {
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

impl ChartRenderer for PlottersRenderer {
    fn render(&self, spec: &ChartSpec, format: ChartFormat) -> Result<Vec<u8>, RenderError> {
        let sides = MIN_SIDE..=MAX_SIDE;
        if !sides.contains(&spec.width) || !sides.contains(&spec.height) {
            return Err(RenderError(format!("a chart is {MIN_SIDE} to {MAX_SIDE} pixels a side, not {}x{}", spec.width, spec.height)));
        }
        fonts_ready()?;
        match format {
            ChartFormat::Png => png(spec),
            ChartFormat::Svg => svg(spec),
        }
    }
}

fn png(spec: &ChartSpec) -> Result<Vec<u8>, RenderError> {
    let (w, h) = (spec.width, spec.height);
    let len = usize::try_from(u64::from(w) * u64::from(h) * 3).map_err(fail)?;
    let mut pixels = vec![255u8; len];
    {
        let root = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut pixels, (w, h)).map_err(fail)?.into_drawing_area();
        draw(&root, spec)?;
        root.present().map_err(fail)?;
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out).write_image(&pixels, w, h, image::ExtendedColorType::Rgb8).map_err(fail)?;
    Ok(out)
}

fn svg(spec: &ChartSpec) -> Result<Vec<u8>, RenderError> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (spec.width, spec.height)).into_drawing_area();
        draw(&root, spec)?;
        root.present().map_err(fail)?;
    }
    Ok(text.into_bytes())
}

/// Text and line sizes for a chart, in pixels, scaled from those of a 1000 x 700 chart.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    title: f64,
    subtitle: f64,
    axis: f64,
    tick: f64,
    legend: f64,
    line: u32,
    dot: u32,
    margin: u32,
}

impl Sizes {
    fn of(width: u32, height: u32) -> Self {
        let s = (f64::from(width) / 1000.0).min(f64::from(height) / 700.0);
        let text = |base: f64| (base * s).max(MIN_TEXT);
        let px = |base: f64, least: f64| to_px((base * s).max(least));
        Self {
            title: text(40.0),
            subtitle: text(24.0),
            axis: text(25.0),
            tick: text(22.0),
            legend: text(22.0),
            line: px(5.0, 2.0),
            dot: px(7.0, 3.0),
            margin: px(14.0, 4.0),
        }
    }
}

/// A non-negative size in whole pixels.
fn to_px(v: f64) -> u32 {
    if v.is_finite() && v > 0.0 {
        // Sizes here are below 10^4, well within u32.
        v.round().min(f64::from(u32::MAX)) as u32
    } else {
        0
    }
}

fn font(size: f64, style: FontStyle) -> TextStyle<'static> {
    TextStyle::from(FontDesc::new(FontFamily::Name(FAMILY), size, style)).color(&INK)
}

/// `size`, shrunk (not below [`MIN_TEXT`]) so that `text` fits in `max_width` pixels.
fn fitted<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, text: &str, size: f64, style: FontStyle, max_width: u32) -> f64 {
    match area.estimate_text_size(text, &font(size, style)) {
        Ok((w, _)) if w > max_width && w > 0 => (size * f64::from(max_width) / f64::from(w)).max(MIN_TEXT),
        _ => size,
    }
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &ChartSpec) -> Result<(), RenderError> {
    root.fill(&WHITE).map_err(fail)?;
    let z = Sizes::of(spec.width, spec.height);
    let (width, _) = root.dim_in_pixel();
    let inner = width.saturating_sub(2 * z.margin);
    let title = fitted(root, &spec.title, z.title, FontStyle::Bold, inner);
    let subtitle = fitted(root, &spec.subtitle, z.subtitle, FontStyle::Normal, inner);
    let header = z.margin + to_px(title * 1.25 + subtitle * 1.35);
    let (head, body) = root.split_vertically(header);
    let centre = i32::try_from(width / 2).map_err(fail)?;
    let top = i32::try_from(z.margin).map_err(fail)?;
    let anchor = Pos::new(HPos::Center, VPos::Top);
    head.draw(&Text::new(spec.title.as_str(), (centre, top), font(title, FontStyle::Bold).pos(anchor))).map_err(fail)?;
    let below = top + i32::try_from(to_px(title * 1.25)).map_err(fail)?;
    head.draw(&Text::new(spec.subtitle.as_str(), (centre, below), font(subtitle, FontStyle::Normal).color(&MUTED).pos(anchor)))
        .map_err(fail)?;
    if spec.panels.is_empty() {
        return Ok(());
    }
    for (area, panel) in body.split_evenly((spec.panels.len(), 1)).iter().zip(&spec.panels) {
        draw_panel(area, panel, &z)?;
    }
    Ok(())
}

/// The range an axis shows for values from `lo` to `hi`: a little wider than the data, a
/// readable span around a flat series, within `clamp` when the data is, always finite and
/// increasing.
fn axis_range(lo: f64, hi: f64, flat_pad: f64, clamp: Option<(f64, f64)>) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span <= lo.abs().max(hi.abs()) * 1e-9 { flat_pad.max(lo.abs() * 0.1) } else { span * 0.08 };
    let (mut a, mut b) = (lo - pad, hi + pad);
    if let Some((floor, ceiling)) = clamp {
        if lo >= floor && hi <= ceiling {
            a = a.max(floor);
            b = b.min(ceiling);
        }
    }
    if a.is_finite() && b.is_finite() && a < b {
        (a, b)
    } else {
        (0.0, 1.0)
    }
}

/// An epoch tick's label: whole epochs only.
fn epoch_label(v: f64) -> String {
    let r = v.round();
    if (v - r).abs() < 1e-6 && r >= 0.0 {
        format!("{r:.0}")
    } else {
        String::new()
    }
}

/// A value tick's label, with as many decimals as ticks `span / 5` apart need.
fn value_label(v: f64, span: f64, format: AxisFormat) -> String {
    let (v, span, unit) = match format {
        AxisFormat::Number => (v, span, ""),
        AxisFormat::Percent => (v * 100.0, span * 100.0, "%"),
    };
    let step = span / 5.0;
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    let magnitude = v.abs().max(span);
    if !(1e-3..1e6).contains(&magnitude) {
        return format!("{v:.1e}{unit}");
    }
    let decimals = if step > 0.0 { to_px(-step.log10().floor()).min(6) as usize } else { 0 };
    format!("{v:.decimals$}{unit}")
}

/// The legend corner with the fewest points near it: upper right, lower right, upper left,
/// lower left, in that order of preference.
fn legend_corner(points: &[Vec<(f64, f64)>], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let mut counts = [0usize; 4];
    for &(x, y) in points.iter().flatten() {
        let (nx, ny) = ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0));
        let right = nx > 0.45;
        let left = nx < 0.55;
        let up = ny > 0.45;
        let down = ny < 0.55;
        for (count, near) in counts.iter_mut().zip([right && up, right && down, left && up, left && down]) {
            *count += usize::from(near);
        }
    }
    let corners =
        [SeriesLabelPosition::UpperRight, SeriesLabelPosition::LowerRight, SeriesLabelPosition::UpperLeft, SeriesLabelPosition::LowerLeft];
    let best = (0..4).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
    corners[best].clone()
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel, z: &Sizes) -> Result<(), RenderError> {
    let (pw, ph) = area.dim_in_pixel();
    let points: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| s.finite_points().map(|(x, y)| (x.clamp(-VALUE_LIMIT, VALUE_LIMIT), y.clamp(-VALUE_LIMIT, VALUE_LIMIT))).collect())
        .collect();
    let bounds = |pick: fn(&(f64, f64)) -> f64| {
        points.iter().flatten().map(pick).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
    };
    let has_points = points.iter().any(|p| !p.is_empty());
    let (x0, x1) = if has_points {
        let (lo, hi) = bounds(|p| p.0);
        axis_range(lo, hi, 1.0, None)
    } else {
        (0.0, 1.0)
    };
    let (y0, y1) = if has_points {
        let (lo, hi) = bounds(|p| p.1);
        axis_range(lo, hi, 0.05, panel.y_clamp)
    } else {
        panel.y_clamp.unwrap_or((0.0, 1.0))
    };
    let span = y1 - y0;
    let y_fmt = |v: &f64| value_label(*v, span, panel.y_format);
    let x_fmt = |v: &f64| epoch_label(*v);

    let tick_style = font(z.tick, FontStyle::Normal);
    let widest_tick = [y0, y1, (y0 + y1) / 2.0]
        .iter()
        .filter_map(|v| area.estimate_text_size(&y_fmt(v), &tick_style).ok())
        .map(|(w, _)| w)
        .max()
        .unwrap_or(0);
    let y_area = (widest_tick + to_px(z.axis * 1.6 + z.tick * 0.8)).min(pw / 3);
    let x_area = to_px(z.tick * 1.6 + z.axis * 1.6).min(ph / 3);
    let mut chart = ChartBuilder::on(area)
        .margin_top(z.margin)
        .margin_bottom(z.margin / 2)
        .margin_left(z.margin / 2)
        .margin_right(z.margin * 2)
        .x_label_area_size(x_area)
        .y_label_area_size(y_area)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(fail)?;
    // Epoch ticks at most one an epoch, so that every labelled tick is a whole epoch.
    let x_ticks = if (x1 - x0).is_finite() { to_px((x1 - x0).floor() + 1.0).clamp(2, 10) as usize } else { 2 };
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .axis_desc_style(font(z.axis, FontStyle::Normal))
        .label_style(tick_style)
        .x_labels(x_ticks)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(TRANSPARENT)
        .axis_style(INK.stroke_width(2))
        .draw()
        .map_err(fail)?;

    let (plot_w, _) = chart.plotting_area().dim_in_pixel();
    let legend_line = to_px(f64::from(z.line) * 7.0);
    let mut drawn = 0usize;
    for (i, (series, pts)) in panel.series.iter().zip(&points).enumerate() {
        if pts.is_empty() {
            continue;
        }
        let colour = PALETTE[i % PALETTE.len()];
        let style = colour.stroke_width(z.line);
        let dashed = i >= PALETTE.len();
        let anno = if dashed {
            let dash = z.line * 3;
            chart.draw_series(DashedLineSeries::new(pts.iter().copied(), dash, dash, style)).map_err(fail)?
        } else {
            chart.draw_series(LineSeries::new(pts.iter().copied(), style)).map_err(fail)?
        };
        anno.label(series.label.as_str()).legend(move |(x, y)| {
            let end = x + i32::try_from(legend_line).unwrap_or(0);
            PathElement::new(vec![(x, y), (end, y)], style)
        });
        // Dots mark each epoch while there is room between them (and make a single epoch visible).
        if pts.len() == 1 || pts.len() * z.dot as usize * 5 <= plot_w as usize {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, z.dot, colour.filled()))).map_err(fail)?;
        }
        drawn += 1;
    }
    if drawn == 0 {
        let note = font(z.axis, FontStyle::Normal).color(&MUTED).pos(Pos::new(HPos::Center, VPos::Center));
        chart.plotting_area().draw(&Text::new(panel.empty_note.as_str(), ((x0 + x1) / 2.0, (y0 + y1) / 2.0), note)).map_err(fail)?;
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(legend_corner(&points, (x0, x1), (y0, y1)))
        .margin(z.margin)
        .legend_area_size(legend_line + z.margin)
        .label_font(font(z.legend, FontStyle::Normal))
        .background_style(WHITE.mix(0.88).filled())
        .border_style(MUTED.stroke_width(1))
        .draw()
        .map_err(fail)
}

#[cfg(test)]
mod tests;
