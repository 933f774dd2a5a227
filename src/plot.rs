//! Learning curves from a `--metrics` log: loss and accuracy, train, validation (when the run
//! held some out) and test, and the learning rate where it changed during the run, against
//! epochs, as SVG (written here) or PNG (that SVG rendered by resvg).

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};
use crate::shapes::Shape;

/// One epoch's figures, as `train --metrics` logs them.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPoint {
    pub epoch: f64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// Loss and accuracy on the held-out part of the training set (`--validation-split`).
    pub validation: Option<(f64, f64)>,
    /// The learning rate of the epoch's last step (logs from before schedules lack it).
    pub learning_rate: Option<f64>,
}

/// Reads a metrics log (one JSON object per line).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochPoint>> {
    Ok(read_runs(path)?
        .pop()
        .expect("read_runs returns at least one run"))
}

/// Every run a log holds, oldest first (`train --metrics` appends, so a log can hold several: a
/// run starts where the epoch count does not go up); each with at least one point.
pub fn read_runs(path: &Path) -> Result<Vec<Vec<EpochPoint>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, problem: String| Error::MetricsLog {
        path: path.to_path_buf(),
        problem: format!("line {line}: {problem}"),
    };
    let mut runs: Vec<Vec<EpochPoint>> = Vec::new();
    let mut points = Vec::new();
    let mut last_epoch = None;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad(i + 1, format!("not a JSON object: {e}")))?;
        // `--metrics-every` lines: running figures inside an epoch; the curves are per epoch.
        if value["kind"] == "interval" {
            continue;
        }
        let epoch = value["epoch"].as_f64().ok_or_else(|| {
            bad(
                i + 1,
                "no number \"epoch\": not a `train --metrics` log".into(),
            )
        })?;
        // A partial epoch (stopped by --max-steps) stands where it stopped inside the epoch.
        let epoch = match (value["partial"].as_bool(), value["epoch_step"].as_f64()) {
            (Some(true), Some(step)) => match value["epoch_steps"].as_f64() {
                Some(steps) if steps > 0.0 => epoch - 1.0 + step / steps,
                _ => epoch,
            },
            _ => epoch,
        };
        if last_epoch.is_some_and(|last| epoch <= last) && !points.is_empty() {
            runs.push(std::mem::take(&mut points));
        }
        last_epoch = Some(epoch);
        // A diverged epoch's figures are written as text ("NaN", "inf"): it has no point.
        let not_finite = ["train_loss", "test_loss", "val_loss"]
            .iter()
            .any(|key| matches!(value[key].as_str(), Some("NaN" | "inf" | "-inf")));
        if not_finite {
            continue;
        }
        let field = |key: &str| {
            value[key].as_f64().ok_or_else(|| {
                bad(
                    i + 1,
                    format!("no number {key:?}: not a `train --metrics` log"),
                )
            })
        };
        let validation = match (value.get("val_loss"), value.get("val_accuracy")) {
            (None, None) => None,
            _ => Some((field("val_loss")?, field("val_accuracy")?)),
        };
        points.push(EpochPoint {
            epoch,
            train_loss: field("train_loss")?,
            test_loss: field("test_loss")?,
            train_accuracy: field("train_accuracy")?,
            test_accuracy: field("test_accuracy")?,
            validation,
            learning_rate: value["learning_rate"].as_f64(),
        });
    }
    if !points.is_empty() {
        runs.push(points);
    }
    if runs.is_empty() {
        return Err(Error::MetricsLog {
            path: path.to_path_buf(),
            problem: "no epoch with finite figures in it: `train --metrics PATH` writes a line \
                      at the end of each epoch"
                .into(),
        });
    }
    // A curve is drawn only where every epoch has its figure.
    for points in &mut runs {
        if points.iter().any(|p| p.validation.is_none()) {
            for p in points.iter_mut() {
                p.validation = None;
            }
        }
    }
    Ok(runs)
}

/// The width of one panel, and the picture's height.
const PANEL_WIDTH: f64 = 480.0;
const HEIGHT: f64 = 400.0;
const TRAIN_COLOUR: &str = "#1f77b4";
const TEST_COLOUR: &str = "#d62728";
const VALIDATION_COLOUR: &str = "#2ca02c";
const RATE_COLOUR: &str = "#9467bd";

/// Whether the run's learning rate changed (every epoch logged it, and not all the same): then
/// it gets a panel of its own.
fn rate_changes(points: &[EpochPoint]) -> bool {
    let rates: Option<Vec<f64>> = points.iter().map(|p| p.learning_rate).collect();
    rates.is_some_and(|r| r.iter().any(|&rate| rate != r[0]))
}

/// The picture's width: two panels, or three with the learning rate.
fn width_for(points: &[EpochPoint]) -> f64 {
    PANEL_WIDTH * if rate_changes(points) { 3.0 } else { 2.0 }
}

/// "Nice" tick values covering [low, high].
fn ticks(low: f64, high: f64) -> Vec<f64> {
    let span = (high - low).max(1e-12);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let first = (low / step).ceil() * step;
    (0..)
        .map(|i| first + i as f64 * step)
        .take_while(|t| *t <= high + step * 1e-9)
        .collect()
}

/// A curve of a panel: its legend name, colour, and the figure it plots.
type Series<'a> = (&'a str, &'a str, fn(&EpochPoint) -> f64);

/// One panel: its series against epochs, with axes, ticks, labels and a legend.
fn panel(
    svg: &mut String,
    left: f64,
    title: &str,
    y_label: &str,
    points: &[EpochPoint],
    series: &[Series],
) {
    let (width, height) = (PANEL_WIDTH - 90.0, HEIGHT - 135.0);
    let (x0, y0) = (left + 70.0, 50.0);
    let epochs = (
        points[0].epoch,
        points[points.len() - 1].epoch.max(points[0].epoch + 1.0),
    );
    let values: Vec<f64> = points
        .iter()
        .flat_map(|p| series.iter().map(move |s| (s.2)(p)))
        .collect();
    let (mut low, mut high) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let pad = ((high - low) * 0.08).max(1e-6);
    (low, high) = (low - pad, high + pad);
    let x = |e: f64| x0 + (e - epochs.0) / (epochs.1 - epochs.0) * width;
    let y = |v: f64| y0 + height - (v - low) / (high - low) * height;

    let _ = write!(
        svg,
        r#"<text x="{}" y="30" font-size="16" text-anchor="middle" font-weight="bold">{title}</text>"#,
        x0 + width / 2.0
    );
    let _ = write!(
        svg,
        r##"<rect x="{x0}" y="{y0}" width="{width}" height="{height}" fill="none" stroke="#444"/>"##
    );
    for t in ticks(low, high) {
        let _ = write!(
            svg,
            r##"<line x1="{x0}" x2="{x1}" y1="{ty}" y2="{ty}" stroke="#ddd"/><text x="{lx}" y="{ly}" font-size="11" text-anchor="end">{label}</text>"##,
            x1 = x0 + width,
            ty = y(t),
            lx = x0 - 6.0,
            ly = y(t) + 4.0,
            label = format_tick(t)
        );
    }
    for t in ticks(epochs.0, epochs.1)
        .into_iter()
        .filter(|t| t.fract() == 0.0)
    {
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{t}</text>"#,
            x(t),
            y0 + height + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">epoch</text>"#,
        x0 + width / 2.0,
        y0 + height + 38.0
    );
    let _ = write!(
        svg,
        r#"<text x="{0}" y="{1}" font-size="13" text-anchor="middle" transform="rotate(-90 {0} {1})">{y_label}</text>"#,
        left + 18.0,
        y0 + height / 2.0
    );
    for (i, (name, colour, value)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|p| format!("{:.2},{:.2}", x(p.epoch), y(value(p))))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in points {
            let _ = write!(
                svg,
                r#"<circle cx="{:.2}" cy="{:.2}" r="3" fill="{colour}"/>"#,
                x(p.epoch),
                y(value(p))
            );
        }
        let ly = y0 + height + 60.0;
        let lx = x0 + i as f64 * 115.0;
        let _ = write!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" font-size="13">{name}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
}

fn format_tick(t: f64) -> String {
    // Small learning rates in scientific notation, where four decimals would round them away.
    if t != 0.0 && t.abs() < 1e-3 {
        return format!("{t:.1e}").replace(".0e", "e");
    }
    let text = format!("{t:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The curves as an SVG document.
pub fn curves_svg(points: &[EpochPoint]) -> String {
    let width = width_for(points);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{HEIGHT}" viewBox="0 0 {width} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    let validated = points.iter().all(|p| p.validation.is_some());
    let mut losses: Vec<Series> = vec![("train", TRAIN_COLOUR, |p| p.train_loss)];
    let mut accuracies: Vec<Series> = vec![("train", TRAIN_COLOUR, |p| p.train_accuracy)];
    if validated {
        losses.push(("validation", VALIDATION_COLOUR, |p| {
            p.validation.map_or(f64::NAN, |v| v.0)
        }));
        accuracies.push(("validation", VALIDATION_COLOUR, |p| {
            p.validation.map_or(f64::NAN, |v| v.1)
        }));
    }
    losses.push(("test", TEST_COLOUR, |p| p.test_loss));
    accuracies.push(("test", TEST_COLOUR, |p| p.test_accuracy));
    panel(&mut svg, 0.0, "Loss", "loss", points, &losses);
    panel(
        &mut svg,
        PANEL_WIDTH,
        "Accuracy",
        "accuracy",
        points,
        &accuracies,
    );
    if rate_changes(points) {
        let rate: Vec<Series> = vec![("lr", RATE_COLOUR, |p| p.learning_rate.unwrap_or(f64::NAN))];
        let title = "Learning rate (last step)";
        panel(
            &mut svg,
            2.0 * PANEL_WIDTH,
            title,
            "learning rate",
            points,
            &rate,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Renders the SVG to PNG bytes (text in the system's fonts).
pub fn curves_png(points: &[EpochPoint]) -> Result<Vec<u8>> {
    svg_to_png(&curves_svg(points), width_for(points), HEIGHT)
}

/// An SVG document of `width` × `height` rendered to PNG bytes.
fn svg_to_png(svg: &str, width: f64, height: f64) -> Result<Vec<u8>> {
    let mut options = resvg::usvg::Options::default();
    options.fontdb_mut().load_system_fonts();
    let tree = resvg::usvg::Tree::from_str(svg, &options)
        .map_err(|e| Error::Config(format!("internal: the picture's SVG did not parse: {e}")))?;
    let mut pixmap =
        resvg::tiny_skia::Pixmap::new(width as u32, height as u32).expect("non-zero size");
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::default(),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| Error::Config(format!("could not encode the PNG: {e}")))
}

/// One picture of a grid: an image's bytes (channels-last, grey or RGB) and two caption lines.
#[derive(Debug, Clone, PartialEq)]
pub struct GridCell {
    pub pixels: Vec<u8>,
    pub caption: [String; 2],
    /// The caption's second line in red (a wrong prediction).
    pub wrong: bool,
}

/// Pixels per image pixel in a grid, and the room a cell's captions take.
const GRID_SCALE: f64 = 4.0;
const CAPTION_HEIGHT: f64 = 36.0;
const CELL_MARGIN: f64 = 12.0;

/// The size of a grid of `cells` images of `shape` in `columns` columns.
fn grid_size(cells: usize, shape: Shape, columns: usize) -> (f64, f64, f64, f64) {
    let image = (shape.width.max(shape.height) as f64 * GRID_SCALE).max(112.0);
    let cell_width = image.max(150.0) + CELL_MARGIN;
    let cell_height = image + CAPTION_HEIGHT + CELL_MARGIN;
    let rows = cells.div_ceil(columns.max(1));
    let width = cell_width * columns.min(cells).max(1) as f64 + CELL_MARGIN;
    (
        width,
        cell_height * rows as f64 + CELL_MARGIN,
        cell_width,
        cell_height,
    )
}

/// The images of `cells` (each of `shape`) in a grid of `columns` columns, each drawn pixel by
/// pixel (no smoothing: what the model saw) with its captions below, as an SVG document.
pub fn image_grid_svg(cells: &[GridCell], shape: Shape, columns: usize) -> String {
    let (width, height, cell_width, cell_height) = grid_size(cells.len(), shape, columns);
    let scale = (shape.width.max(shape.height) as f64 * GRID_SCALE).max(112.0)
        / shape.width.max(shape.height) as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    for (i, cell) in cells.iter().enumerate() {
        let x0 = CELL_MARGIN + (i % columns) as f64 * cell_width;
        let y0 = CELL_MARGIN + (i / columns) as f64 * cell_height;
        let _ = write!(svg, r#"<g class="cell" transform="translate({x0} {y0})">"#);
        for y in 0..shape.height {
            for x in 0..shape.width {
                let at = (y * shape.width + x) * shape.channels;
                let (r, g, b) = match shape.channels {
                    1 => (cell.pixels[at], cell.pixels[at], cell.pixels[at]),
                    _ => (cell.pixels[at], cell.pixels[at + 1], cell.pixels[at + 2]),
                };
                let _ = write!(
                    svg,
                    r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#{r:02x}{g:02x}{b:02x}"/>"##,
                    x as f64 * scale,
                    y as f64 * scale,
                    scale + 0.05,
                    scale + 0.05
                );
            }
        }
        let text_y = shape.height as f64 * scale + 15.0;
        let colour = if cell.wrong { "#c00000" } else { "#222" };
        let _ = write!(
            svg,
            r##"<text x="0" y="{text_y}" font-size="12" fill="#222">{}</text><text x="0" y="{}" font-size="12" fill="{colour}">{}</text></g>"##,
            escape(&cell.caption[0]),
            text_y + 15.0,
            escape(&cell.caption[1])
        );
    }
    svg.push_str("</svg>");
    svg
}

/// `image_grid_svg` rendered to PNG bytes.
pub fn image_grid_png(cells: &[GridCell], shape: Shape, columns: usize) -> Result<Vec<u8>> {
    let (width, height, _, _) = grid_size(cells.len(), shape, columns);
    svg_to_png(&image_grid_svg(cells, shape, columns), width, height)
}

/// Matplotlib's inferno colour map at nine evenly spaced points: perceptually uniform, dark
/// to bright, legible in grey print and to colour-blind readers.
const INFERNO: [[f32; 3]; 9] = [
    [0.0, 0.0, 4.0],
    [31.0, 12.0, 72.0],
    [85.0, 15.0, 109.0],
    [136.0, 34.0, 106.0],
    [186.0, 54.0, 85.0],
    [227.0, 89.0, 51.0],
    [249.0, 140.0, 10.0],
    [249.0, 201.0, 50.0],
    [252.0, 255.0, 164.0],
];

/// The colour of `value` in [0, 1] (clamped) on the inferno map, linearly between its points.
pub fn heat_colour(value: f32) -> [u8; 3] {
    let at = value.clamp(0.0, 1.0) * (INFERNO.len() - 1) as f32;
    let low = (at.floor() as usize).min(INFERNO.len() - 2);
    let t = at - low as f32;
    let (a, b) = (INFERNO[low], INFERNO[low + 1]);
    [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * t).round() as u8)
}

/// A heat map `[H, W]` of non-negative values as RGB pixels, scaled so that its largest value
/// is the brightest (an all-zero map is dark).
pub fn heat_map_pixels(map: &[f32]) -> Vec<u8> {
    let max = map.iter().cloned().fold(0.0f32, f32::max);
    let scale = if max > 0.0 { 1.0 / max } else { 0.0 };
    map.iter().flat_map(|&v| heat_colour(v * scale)).collect()
}

/// An image's pixels (`channels` 1 or 3, channels-last) as RGB with the heat map's colours
/// laid over them, `opacity` of the colour where the map is brightest and none where it is 0.
pub fn heat_overlay(pixels: &[u8], channels: usize, map: &[f32], opacity: f32) -> Vec<u8> {
    let max = map.iter().cloned().fold(0.0f32, f32::max);
    let scale = if max > 0.0 { 1.0 / max } else { 0.0 };
    (map.iter().enumerate())
        .flat_map(|(p, &v)| {
            let weight = (v * scale).clamp(0.0, 1.0);
            let alpha = opacity * weight.sqrt();
            let colour = heat_colour(weight);
            [0, 1, 2].map(|k| {
                let base = pixels[p * channels + if channels == 1 { 0 } else { k }] as f32;
                (base * (1.0 - alpha) + colour[k] as f32 * alpha).round() as u8
            })
        })
        .collect()
}

/// Text for SVG character data.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
