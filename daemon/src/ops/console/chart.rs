//! Charts for the console, drawn here as SVG: a few lines or bars over
//! days need no chart library, no script in the browser and nothing
//! fetched from elsewhere; the page is complete as it is served.

/// One line of a chart: a point a day, `None` where the day has nothing to
/// measure (a rate on a day without mail is no 0 %), drawn as a gap.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<Option<f64>>,
}

// The drawing's own units: the page scales it to the width it has.
const W: f64 = 1000.0;
const H: f64 = 240.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;

pub use crate::ses::templates::html_escape as escape;

/// A value as the axis shows it.
fn tick(v: f64, unit: &str) -> String {
    if unit == "%" {
        format!("{v:.0}%")
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract() != 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// The frame: title, horizontal grid with values, day labels (every
/// `step`-th), a legend.
fn frame(
    title: &str,
    labels: &[String],
    y_max: f64,
    unit: &str,
    legend: &[(&str, &str)],
) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {W} {H}\" preserveAspectRatio=\"xMinYMin meet\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{LEFT}\" y=\"16\" class=\"title\">{t}</text>",
        t = escape(title)
    );
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = TOP + plot_h - plot_h * i as f64 / 4.0;
        svg.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 4.0,
            y + 4.0,
            tick(v, unit)
        ));
    }
    let n = labels.len().max(1);
    let step = n.div_ceil(6).max(1);
    for (i, label) in labels.iter().enumerate().filter(|(i, _)| i % step == 0) {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\">{}</text>",
            x_at(i, n),
            H - BOTTOM + 16.0,
            escape(label)
        ));
    }
    let mut lx = LEFT;
    for (name, color) in legend {
        svg.push_str(&format!(
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\">{}</text>",
            H - 12.0,
            lx + 14.0,
            H - 3.0,
            escape(name)
        ));
        lx += 24.0 + 7.0 * name.len() as f64;
    }
    svg
}

fn x_at(i: usize, n: usize) -> f64 {
    let plot_w = W - LEFT - RIGHT;
    if n <= 1 {
        LEFT + plot_w / 2.0
    } else {
        LEFT + plot_w * i as f64 / (n - 1) as f64
    }
}

fn y_at(v: f64, y_max: f64) -> f64 {
    let plot_h = H - TOP - BOTTOM;
    TOP + plot_h - plot_h * (v / y_max).clamp(0.0, 1.0)
}

/// A round maximum for the axis, at least `v`.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * magnitude)
}

/// Lines over days; `unit` "%" draws 0–100.
pub fn lines(title: &str, labels: &[String], series: &[Series], unit: &str) -> String {
    let y_max = if unit == "%" {
        100.0
    } else {
        nice_max(
            series
                .iter()
                .flat_map(|s| s.points.iter().flatten().copied())
                .fold(0.0, f64::max),
        )
    };
    let legend: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
    let mut svg = frame(title, labels, y_max, unit, &legend);
    for s in series {
        let n = s.points.len();
        // A line through each run of days with a value; a lone day is a dot.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (i, v) in s.points.iter().enumerate() {
            match v {
                Some(v) => {
                    if let Some(run) = runs.last_mut() {
                        run.push((x_at(i, n), y_at(*v, y_max)));
                    }
                }
                None if runs.last().is_some_and(|r| !r.is_empty()) => runs.push(Vec::new()),
                None => {}
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            if let [(x, y)] = run.as_slice() {
                svg.push_str(&format!(
                    "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{}\"><title>{}</title></circle>",
                    s.color,
                    escape(s.name)
                ));
                continue;
            }
            let points: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            svg.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
                s.color,
                points.join(" "),
                escape(s.name)
            ));
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Bars over days.
pub fn bars(title: &str, labels: &[String], values: &[f64], color: &str) -> String {
    let y_max = nice_max(values.iter().copied().fold(0.0, f64::max));
    let mut svg = frame(title, labels, y_max, "", &[]);
    let n = values.len().max(1);
    let width = ((W - LEFT - RIGHT) / n as f64 * 0.7).max(1.0);
    for (i, v) in values.iter().enumerate() {
        let y = y_at(*v, y_max);
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{:.1}\" fill=\"{color}\"><title>{}: {v}</title></rect>",
            x_at(i, n) - width / 2.0,
            (H - BOTTOM - y).max(0.0),
            escape(labels.get(i).map(String::as_str).unwrap_or(""))
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_complete_svg_with_escaped_text() {
        let labels: Vec<String> = (1..=30).map(|d| format!("11-{d:02}")).collect();
        let svg = lines(
            "Rates <30 days>",
            &labels,
            &[Series {
                name: "delivered",
                color: "#2a7",
                points: vec![Some(99.0); 30],
            }],
            "%",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("Rates &lt;30 days&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        let b = bars("Sent", &labels, &[3.0; 30], "#36c");
        assert_eq!(b.matches("<rect").count(), 30);
        assert_eq!(nice_max(37.0), 50.0);
        assert_eq!(nice_max(0.0), 1.0);
    }

    #[test]
    fn days_without_a_value_are_gaps_not_zeros() {
        let labels: Vec<String> = (1..=6).map(|d| format!("11-{d:02}")).collect();
        let svg = lines(
            "Rates",
            &labels,
            &[Series {
                name: "delivered",
                color: "#2a7",
                points: vec![None, Some(90.0), Some(95.0), None, Some(80.0), None],
            }],
            "%",
        );
        // Days 2-3 are a line, day 5 a dot; nothing is drawn at 0 %.
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        let zero = format!("{:.1}", y_at(0.0, 100.0));
        let line = &svg[svg.find("<polyline").unwrap()..];
        assert!(!line.contains(&format!(",{zero}")), "{svg}");
    }
}
