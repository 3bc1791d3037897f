//! A small SVG line plot with logarithmic axes, for perf/ figures (no
//! plotting dependency: the figures are simple and must stay readable as
//! text in review).

use std::fmt::Write;

/// One line of a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Stroke colour (CSS).
    pub colour: &'static str,
    /// Dashed line.
    pub dashed: bool,
    /// (x, y) points, x ascending; both positive.
    pub points: Vec<(f64, f64)>,
}

/// A log-log plot.
#[derive(Debug, Clone)]
pub struct LogPlot {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
}

fn decades(lo: f64, hi: f64) -> (f64, f64) {
    (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0))
}

fn tick_label(v: f64, unit_bytes: bool) -> String {
    if unit_bytes {
        match v {
            v if v >= 1048576.0 => format!("{} MiB", v / 1048576.0),
            v if v >= 1024.0 => format!("{} KiB", v / 1024.0),
            v => format!("{v} B"),
        }
    } else if v >= 1000.0 {
        format!("{} ms", v / 1000.0)
    } else {
        format!("{v} µs")
    }
}

impl LogPlot {
    /// Renders the plot as an SVG document. The x axis is ticked in powers
    /// of 4 (bytes), the y axis in decades (microseconds).
    pub fn svg(&self) -> String {
        let (w, h, ml, mr, mt, mb) = (760.0, 460.0, 80.0, 20.0, 40.0, 60.0);
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
        let (xl0, xl1) = (xmin.log2().floor(), xmax.log2().ceil().max(xmin.log2().floor() + 1.0));
        let (yd0, yd1) = decades(ymin, ymax);
        let px = |x: f64| ml + (x.log2() - xl0) / (xl1 - xl0) * (w - ml - mr);
        let py = |y: f64| h - mb - (y.log10() - yd0) / (yd1 - yd0) * (h - mt - mb);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ =
            writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, w / 2.0, self.title);
        // Grid and ticks.
        let mut k = xl0;
        while k <= xl1 + 1e-9 {
            let x = px(2f64.powf(k));
            let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##, h - mb);
            let _ = writeln!(
                s,
                r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                h - mb + 16.0,
                tick_label(2f64.powf(k), true)
            );
            k += 2.0;
        }
        let mut d = yd0;
        while d <= yd1 + 1e-9 {
            let y = py(10f64.powf(d));
            let _ = writeln!(s, r##"<line x1="{ml}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##, w - mr);
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                ml - 6.0,
                y + 4.0,
                tick_label(10f64.powf(d), false)
            );
            d += 1.0;
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            (ml + w - mr) / 2.0,
            h - 18.0,
            self.x_label
        );
        let _ = writeln!(
            s,
            r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
            (mt + h - mb) / 2.0,
            (mt + h - mb) / 2.0,
            self.y_label
        );
        for (i, series) in self.series.iter().enumerate() {
            let path: Vec<String> = series.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            let dash = if series.dashed { r#" stroke-dasharray="6 4""# } else { "" };
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                series.colour
            );
            let ly = mt + 10.0 + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/>"#,
                ml + 14.0,
                ml + 44.0,
                series.colour
            );
            let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, ml + 50.0, ly + 4.0, series.label);
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_svg_with_every_series() {
        let p = LogPlot {
            title: "t".into(),
            x_label: "size".into(),
            y_label: "rtt".into(),
            series: vec![
                Series { label: "a".into(), colour: "red", dashed: false, points: vec![(1.0, 5.0), (1024.0, 20.0)] },
                Series { label: "b".into(), colour: "blue", dashed: true, points: vec![(1.0, 10.0), (1024.0, 40.0)] },
            ],
        };
        let svg = p.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("1 KiB") && svg.contains("10 µs"));
    }
}
