//! Tests of the plotters renderer: exact sizes, decodable output, text drawn from the
//! compiled-in font, and hostile values.

use image::GenericImageView;
use quickcheck::{Arbitrary, Gen, QuickCheck};
use trainyard_domain::charts::Series;

use super::*;

fn panel(y_label: &str, series: Vec<Series>) -> Panel {
    Panel {
        x_label: "epoch".to_owned(),
        y_label: y_label.to_owned(),
        y_format: AxisFormat::Number,
        y_clamp: None,
        series,
        empty_note: "no epochs yet".to_owned(),
    }
}

fn spec(width: u32, height: u32, panels: Vec<Panel>) -> ChartSpec {
    ChartSpec { title: "mlp on iris".to_owned(), subtitle: "sess_0 \u{b7} running".to_owned(), panels, width, height }
}

fn line(label: &str, values: &[f64]) -> Series {
    Series { label: label.to_owned(), points: values.iter().enumerate().map(|(i, v)| (i as f64 + 1.0, *v)).collect() }
}

fn decode(png: &[u8]) -> image::DynamicImage {
    image::load_from_memory_with_format(png, image::ImageFormat::Png).expect("a PNG")
}

/// Whether the PNG has a pixel that is not white within the rows `rows`.
fn inked(img: &image::DynamicImage, rows: std::ops::Range<u32>) -> bool {
    let rgb = img.to_rgb8();
    rows.flat_map(|y| (0..rgb.width()).map(move |x| (x, y))).any(|(x, y)| rgb.get_pixel(x, y).0 != [255, 255, 255])
}

/// The value of `name="..."` in the opening `<svg` tag.
fn svg_attr(svg: &str, name: &str) -> Option<String> {
    let open = &svg[svg.find("<svg")?..];
    let open = &open[..open.find('>')?];
    let from = open.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(open[from..from + open[from..].find('"')?].to_owned())
}

#[test]
fn a_png_has_the_size_asked_for_and_its_title_drawn_from_the_compiled_in_font() {
    let chart =
        spec(640, 480, vec![panel("loss", vec![line("training loss", &[1.0, 0.6, 0.4]), line("validation loss", &[1.1, 0.8, 0.7])])]);
    let png = PlottersRenderer::new().render(&chart, ChartFormat::Png).unwrap();
    let img = decode(&png);
    assert_eq!(img.dimensions(), (640, 480));
    // The header holds nothing but the title and subtitle text: ink there is glyphs.
    assert!(inked(&img, 0..40), "no title was drawn");
}

#[test]
fn an_svg_has_the_size_asked_for_and_escapes_its_text() {
    let mut chart = spec(800, 600, vec![panel("loss", vec![line("a <b> & \"c\"", &[1.0, 2.0])])]);
    chart.title = "<script>x</script>".to_owned();
    let bytes = PlottersRenderer::new().render(&chart, ChartFormat::Svg).unwrap();
    let svg = String::from_utf8(bytes).unwrap();
    assert_eq!(svg_attr(&svg, "width").as_deref(), Some("800"));
    assert_eq!(svg_attr(&svg, "height").as_deref(), Some("600"));
    assert!(!svg.contains("<script>") && svg.contains("&lt;script&gt;"), "{svg:.400}");
    assert!(svg.contains("font-family=\"sans-serif\""));
}

#[test]
fn a_chart_without_points_draws_its_note() {
    let chart = spec(500, 400, vec![panel("loss", vec![line("training loss", &[])]), panel("accuracy", Vec::new())]);
    let svg = String::from_utf8(PlottersRenderer::new().render(&chart, ChartFormat::Svg).unwrap()).unwrap();
    assert_eq!(svg.matches("no epochs yet").count(), 2, "{svg:.400}");
    assert!(!svg.contains("training loss"), "a series without points has no legend entry");
    let png = PlottersRenderer::new().render(&chart, ChartFormat::Png).unwrap();
    assert_eq!(decode(&png).dimensions(), (500, 400));
}

#[test]
fn sizes_outside_the_bounds_are_refused() {
    for (w, h) in [(199, 500), (500, 4001), (0, 0), (u32::MAX, 300)] {
        let err = PlottersRenderer::new().render(&spec(w, h, Vec::new()), ChartFormat::Png).unwrap_err();
        assert!(err.0.contains("200 to 4000"), "{err}");
    }
}

#[test]
fn axis_ranges_are_finite_increasing_and_clamped() {
    let close = |(a, b): (f64, f64), (c, d): (f64, f64)| (a - c).abs() < 1e-12 && (b - d).abs() < 1e-12;
    assert!(close(axis_range(0.5, 0.5, 0.05, None), (0.45, 0.55)));
    assert!(close(axis_range(1.0, 1.0, 0.05, Some((0.0, 1.0))), (0.9, 1.0)), "a flat accuracy of 1 stays within 100%");
    assert!(close(axis_range(3.0, 3.0, 1.0, None), (2.0, 4.0)), "one epoch");
    assert_eq!(axis_range(f64::NAN, 1.0, 0.05, None), (0.0, 1.0));
    assert_eq!(axis_range(2.0, 1.0, 0.05, None), (0.0, 1.0));
    let (a, b) = axis_range(-1e300, 1e300, 0.05, None);
    assert!(a.is_finite() && b.is_finite() && a < b);
    let (a, b) = axis_range(0.2, 0.9, 0.05, Some((0.0, 1.0)));
    assert!(a > 0.1 && a < 0.2 && b > 0.9 && b <= 1.0, "{a} {b}");
    // Out of the clamp's bounds, the data decides.
    let (a, _) = axis_range(-0.5, 0.5, 0.05, Some((0.0, 1.0)));
    assert!(a < -0.5);
}

#[test]
fn tick_labels_read_well() {
    assert_eq!(epoch_label(3.0), "3");
    assert_eq!(epoch_label(2.5), "");
    assert_eq!(epoch_label(-1.0), "");
    assert_eq!(value_label(0.4, 1.0, AxisFormat::Percent), "40%");
    assert_eq!(value_label(1.5, 2.5, AxisFormat::Number), "1.5");
    assert_eq!(value_label(2_000_000.0, 5_000_000.0, AxisFormat::Number), "2.0e6");
    assert_eq!(value_label(-1e-17, 0.1, AxisFormat::Number), "0.00");
}

/// A chart as a hostile caller might build one: any size within bounds, up to three panels
/// of up to twenty series, with NaN, infinities, flat runs, huge and tiny values, no points.
#[derive(Debug, Clone)]
struct AnySpec(ChartSpec);

fn value(g: &mut Gen, flat: f64) -> f64 {
    match u8::arbitrary(g) % 12 {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 | 4 => flat,
        5 => *g.choose(&[f64::MAX, f64::MIN, 1e300, -1e300, 5e-324, 1e-310, 0.0, -0.0]).unwrap_or(&0.0),
        _ => f64::from(i32::arbitrary(g) % 1000) / 100.0,
    }
}

impl Arbitrary for AnySpec {
    fn arbitrary(g: &mut Gen) -> Self {
        let side = |g: &mut Gen| MIN_SIDE + u32::arbitrary(g) % (MAX_SIDE - MIN_SIDE + 1);
        let (width, height) = (side(g), side(g));
        let panels = (0..u8::arbitrary(g) % 4)
            .map(|_| {
                let series = (0..usize::from(u8::arbitrary(g)) % 21)
                    .map(|k| {
                        let flat = value(g, 0.5);
                        let start = if bool::arbitrary(g) { 1 } else { u32::arbitrary(g) };
                        let points = (0..usize::from(u8::arbitrary(g)) % 30)
                            .map(|i| (f64::from(start.saturating_add(u32::try_from(i).unwrap_or(0))), value(g, flat)))
                            .collect();
                        Series { label: format!("series {k} {}", String::arbitrary(g)), points }
                    })
                    .collect();
                Panel {
                    x_label: "epoch".to_owned(),
                    y_label: String::arbitrary(g),
                    y_format: if bool::arbitrary(g) { AxisFormat::Percent } else { AxisFormat::Number },
                    y_clamp: bool::arbitrary(g).then_some((0.0, 1.0)),
                    series,
                    empty_note: "no epochs yet".to_owned(),
                }
            })
            .collect();
        Self(ChartSpec { title: String::arbitrary(g), subtitle: String::arbitrary(g), panels, width, height })
    }
}

// Property 62: every chart within the size bounds, whatever its series hold (NaN, infinities,
// flat runs, extreme values, nothing), renders as a PNG that decodes to exactly width x height
// pixels and as an SVG whose width and height attributes say the same.
fn prop62_every_chart_renders_at_exactly_its_size(spec: AnySpec) -> bool {
    let spec = spec.0;
    let renderer = PlottersRenderer::new();
    let Ok(png) = renderer.render(&spec, ChartFormat::Png) else { return false };
    let Ok(img) = image::load_from_memory_with_format(&png, image::ImageFormat::Png) else { return false };
    let Ok(svg) = renderer.render(&spec, ChartFormat::Svg) else { return false };
    let svg = String::from_utf8_lossy(&svg);
    img.dimensions() == (spec.width, spec.height)
        && svg_attr(&svg, "width") == Some(spec.width.to_string())
        && svg_attr(&svg, "height") == Some(spec.height.to_string())
}

#[test]
fn prop62_runs() {
    QuickCheck::new().tests(24).rng(Gen::new(30)).quickcheck(prop62_every_chart_renders_at_exactly_its_size as fn(AnySpec) -> bool);
}
