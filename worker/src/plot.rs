//! PNG charts for the results people look at: loss and reward curves, accuracy bars.
//!
//! plotters renders with its bitmap backend and a bundled font (DejaVu Sans, registered once), so
//! no system font library is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn ensure_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registering a valid embedded TTF cannot fail in practice; if it does, text is skipped.
        let _ = register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Draws line series (e.g. loss per step) to a PNG.
pub fn line_chart(path: &Path, title: &str, x_label: &str, y_label: &str, series: &[Series]) -> Result<()> {
    ensure_font();
    let finite =
        || series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
    if finite().next().is_none() {
        return Err(anyhow!("{title}: nothing to plot"));
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in finite() {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).label_style((FAMILY, 14)).draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> =
            s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()?;
    }
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Grouped vertical bars: one group per category, one bar per series, values in [0, y_max].
/// `threshold` draws a dashed horizontal line (a gate).
pub fn bar_chart(
    path: &Path,
    title: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
    y_max: f64,
    threshold: Option<(&str, f64)>,
) -> Result<()> {
    ensure_font();
    if categories.is_empty() || series.is_empty() {
        return Err(anyhow!("{title}: nothing to plot"));
    }
    let n = categories.len();
    let width = (160 + n * 90 * series.len().max(1)).clamp(700, 2400) as u32;
    let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 24))
        .margin(12)
        .x_label_area_size(110)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..y_max)?;
    let labels = categories.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            // Label only the centre of each group.
            if (x - i as f64 - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_label_style((FAMILY, 13).into_font().transform(FontTransform::Rotate90))
        .label_style((FAMILY, 14))
        .draw()?;
    let k = series.len() as f64;
    let bar_w = 0.8 / k;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let bars = values.iter().enumerate().filter(|(_, v)| v.is_finite()).map(move |(ci, v)| {
            let left = ci as f64 + 0.1 + si as f64 * bar_w;
            Rectangle::new([(left, 0.0), (left + bar_w * 0.95, v.min(y_max))], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    if let Some((name, t)) = threshold {
        let dashes = (0..n * 10).step_by(2).map(|i| {
            let a = i as f64 / 10.0;
            PathElement::new(vec![(a, t), (a + 0.1, t)], BLACK.stroke_width(2))
        });
        chart
            .draw_series(dashes)?
            .label(name)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FAMILY, 14))
        .draw()?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_dims(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
        let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        (w, h)
    }

    #[test]
    fn line_and_bar_charts_write_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let loss = dir.path().join("loss.png");
        let pts: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, 3.0 / (1.0 + i as f64))).collect();
        line_chart(&loss, "loss", "step", "loss", &[Series { name: "train", points: pts }]).unwrap();
        assert_eq!(png_dims(&loss), (900, 540));
        let bars = dir.path().join("acc.png");
        let cats = vec!["purchase_order".to_string(), "supplier_invoice".to_string()];
        bar_chart(
            &bars,
            "accuracy",
            &cats,
            &[("api", vec![0.9, 1.0]), ("payload", vec![0.5, 0.7])],
            1.0,
            Some(("gate", 0.97)),
        )
        .unwrap();
        assert!(png_dims(&bars).0 >= 700);
    }

    #[test]
    fn empty_or_non_finite_input_is_an_error_not_a_blank_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        let err =
            line_chart(&p, "loss", "step", "loss", &[Series { name: "nan", points: vec![(0.0, f64::NAN)] }]);
        assert!(err.is_err());
        assert!(bar_chart(&p, "acc", &[], &[], 1.0, None).is_err());
    }
}
