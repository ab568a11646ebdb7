//! The self-contained HTML report: tables and inline SVG charts, no script, no external link,
//! so it opens offline and can be archived with the JSON.
//!
//! Contract: [`render`] is a pure function of a [`Report`]; every text taken from the report is
//! HTML-escaped.

use crate::plan::objective::ObjectiveResult;
use crate::report::Report;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One series of a chart: name, colour, points, drawn as bars or a line.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
    bars: bool,
}

fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h) = (760.0, 260.0);
    let (ml, mr, mt, mb) = (64.0, 16.0, 30.0, 40.0);
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = nice_max(all.clone().map(|p| p.0).fold(0.0, f64::max));
    let y_max = nice_max(all.map(|p| p.1).fold(0.0, f64::max));
    let x = |v: f64| ml + v / x_max * pw;
    let y = |v: f64| mt + ph - v / y_max * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<figure><svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><text x="{ml}" y="18" class="title">{t}</text>"#,
        t = esc(title)
    );
    for i in 0..=5 {
        let fy = y_max * i as f64 / 5.0;
        let fx = x_max * i as f64 / 5.0;
        let _ = write!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            ml + pw,
            ml - 6.0,
            y(fy) + 4.0,
            fmt_tick(fy),
            mt + ph + 16.0,
            fmt_tick(fx),
            py = y(fy),
            px = x(fx),
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{ml}" x2="{ml}" y1="{mt}" y2="{}" stroke="#888"/><line x1="{ml}" x2="{}" y1="{b}" y2="{b}" stroke="#888"/><text x="{}" y="{}" text-anchor="middle">{}</text><text x="14" y="{}" transform="rotate(-90 14 {})" text-anchor="middle">{}</text>"##,
        mt + ph,
        ml + pw,
        ml + pw / 2.0,
        h - 6.0,
        esc(x_label),
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(y_label),
        b = mt + ph,
    );
    for (k, se) in series.iter().enumerate() {
        if se.bars {
            let bw = (pw / (x_max.max(1.0) + 1.0)).clamp(1.0, 12.0);
            for &(px, py) in &se.points {
                if py > 0.0 {
                    let _ = write!(
                        s,
                        r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{}" opacity="0.7"/>"#,
                        x(px) - bw / 2.0,
                        y(py),
                        (mt + ph - y(py)).max(0.5),
                        se.color
                    );
                }
            }
        } else if !se.points.is_empty() {
            let pts: Vec<String> = se
                .points
                .iter()
                .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
                .collect();
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
                se.color,
                pts.join(" ")
            );
        }
        let lx = ml + 10.0 + k as f64 * 150.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            mt + 2.0,
            se.color,
            lx + 14.0,
            mt + 11.0,
            esc(se.name)
        );
    }
    s.push_str("</svg></figure>");
    s
}

fn row(s: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = write!(
        s,
        "<tr><th>{}</th><td>{}</td></tr>",
        esc(k),
        esc(&v.to_string())
    );
}

fn objectives_table(objs: &[ObjectiveResult]) -> String {
    let mut s = String::from(
        "<table><tr><th>objective</th><th>field</th><th>measured</th><th>result</th></tr>",
    );
    for o in objs {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{}</td><td>{}</td><td class="{}">{}</td></tr>"#,
            esc(&o.expr),
            esc(o.field.as_deref().unwrap_or("(no such metric)")),
            o.actual.map_or("n/a".into(), |v| format!("{v:.4}")),
            if o.passed { "ok" } else { "bad" },
            if o.passed { "passed" } else { "FAILED" }
        );
    }
    s.push_str("</table>");
    s
}

/// Renders the report. See the module docs.
pub fn render(r: &Report) -> String {
    let kind = r.scenario["kind"].as_str().unwrap_or("?");
    let name = r.scenario["name"].as_str().unwrap_or(kind);
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>levee storm: {n}</title><style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}}
h1{{font-size:22px}} h2{{font-size:17px;margin-top:28px}}
table{{border-collapse:collapse;margin:8px 0}} th,td{{border:1px solid #ddd;padding:3px 8px;text-align:left}}
th{{background:#f5f5f5;font-weight:600}} .ok{{color:#176c2b}} .bad{{color:#b00020;font-weight:700}}
svg text{{font-size:11px;fill:#444}} svg .title{{font-size:13px;font-weight:600;fill:#222}}
figure{{margin:12px 0}} .grid{{display:flex;flex-wrap:wrap;gap:24px}}
</style></head><body><h1>levee storm: {n} ({k})</h1>"#,
        n = esc(name),
        k = esc(kind)
    );
    let _ = write!(
        s,
        r#"<p>Space <code>{}</code>, started at {} ({} ms Unix), {:.1} s. Result: <b class="{}">{}</b>, run <b class="{}">{}</b>.</p>"#,
        esc(&r.space),
        esc(&r.started_at),
        r.started_at_unix_ms,
        r.duration_s,
        if r.passed { "ok" } else { "bad" },
        if r.passed { "PASSED" } else { "FAILED" },
        if r.valid { "ok" } else { "bad" },
        if r.valid { "valid" } else { "INVALID" }
    );
    for why in &r.invalid_reasons {
        let _ = write!(s, r#"<p class="bad">{}</p>"#, esc(why));
    }
    if !r.objectives.is_empty() {
        s.push_str("<h2>Objectives</h2>");
        s.push_str(&objectives_table(&r.objectives));
    }
    s.push_str(r#"<h2>What the listeners got</h2><div class="grid"><table>"#);
    let l = &r.listeners;
    row(&mut s, "listeners planned", l.planned);
    row(&mut s, "listeners joined", l.joined);
    row(&mut s, "listeners failed", l.failed);
    row(&mut s, "sessions dropped", l.dropped);
    row(&mut s, "peak listening", l.peak_connected);
    row(
        &mut s,
        "delivered ratio",
        format!("{:.6}", r.delivered_ratio),
    );
    row(
        &mut s,
        "gaps (total ms)",
        format!("{} ({:.0})", r.gaps, r.gap_ms_total),
    );
    row(
        &mut s,
        "worst gap per listener p99 / max, ms",
        format!("{:.1} / {:.1}", r.worst_gap_ms.p99, r.worst_gap_ms.max),
    );
    row(
        &mut s,
        format!("listeners with a stall > {} ms", r.stall_bound_ms).as_str(),
        format!("{:.3} %", r.listeners_with_stall_pct),
    );
    row(
        &mut s,
        format!("underruns ({} ms playout buffer)", r.playout_ms).as_str(),
        format!(
            "{} ({:.3} % of timed listeners)",
            r.underruns, r.listeners_with_underrun_pct
        ),
    );
    row(
        &mut s,
        "timed listeners (latency, jitter, underruns)",
        format!("{} sessions, {} frames", r.timed_sessions, r.timed_frames),
    );
    row(
        &mut s,
        "jitter p50 / p99, ms",
        format!("{:.1} / {:.1}", r.jitter_ms.p50, r.jitter_ms.p99),
    );
    row(&mut s, "bytes received", r.bytes_received);
    s.push_str("</table><table><tr><th>ms</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (k, p) in [
        ("connect", &r.connect_ms),
        ("answer", &r.response_ms),
        ("time to first audio", &r.ttfa_ms),
        ("end-to-end latency", &r.e2e_latency_ms),
        ("worst gap per listener", &r.worst_gap_ms),
        ("worst stall per listener", &r.worst_stall_ms),
        ("rejoin after a wave (churn)", &r.rejoin_ms),
    ] {
        if p.count == 0 && k.starts_with("rejoin") {
            continue;
        }
        let _ = write!(
            s,
            "<tr><th>{k}</th><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td></tr>",
            p.p50, p.p90, p.p99, p.p999, p.max
        );
    }
    s.push_str("</table></div>");

    let tl = &r.timeline;
    let pts = |f: &dyn Fn(&crate::report::Row) -> f64| -> Vec<(f64, f64)> {
        tl.iter().map(|p| (p.t as f64, f(p))).collect()
    };
    let mut failed_cum = 0.0;
    let failed: Vec<(f64, f64)> = tl
        .iter()
        .map(|p| {
            failed_cum += p.failures as f64;
            (p.t as f64, failed_cum)
        })
        .collect();
    s.push_str("<h2>Charts</h2>");
    s.push_str(&chart(
        "Listeners over time",
        "seconds",
        "listeners",
        &[
            Series {
                name: "listening",
                color: "#1f6feb",
                points: pts(&|p| p.connected as f64),
                bars: false,
            },
            Series {
                name: "failed (cumulative)",
                color: "#b00020",
                points: failed,
                bars: false,
            },
            Series {
                name: "joins per second",
                color: "#2da44e",
                points: pts(&|p| p.joins as f64),
                bars: true,
            },
        ],
    ));
    // Join latency distribution: time to first audio by percentile.
    let total: u64 = r.ttfa_histogram.iter().map(|b| b.1).sum();
    let mut cum = 0u64;
    let cdf: Vec<(f64, f64)> = r
        .ttfa_histogram
        .iter()
        .map(|&(ms, n)| {
            cum += n;
            (cum as f64 * 100.0 / total.max(1) as f64, ms)
        })
        .collect();
    s.push_str(&chart(
        "Join latency distribution (time to first audio, from the scheduled time)",
        "percentile of joins",
        "ms",
        &[Series {
            name: "time to first audio",
            color: "#8250df",
            points: cdf,
            bars: false,
        }],
    ));
    s.push_str(&chart(
        "End-to-end latency over time",
        "seconds",
        "ms",
        &[
            Series {
                name: "p50",
                color: "#2da44e",
                points: pts(&|p| p.latency_p50_ms),
                bars: false,
            },
            Series {
                name: "p99",
                color: "#d4a72c",
                points: pts(&|p| p.latency_p99_ms),
                bars: false,
            },
            Series {
                name: "max",
                color: "#b00020",
                points: pts(&|p| p.latency_max_ms),
                bars: false,
            },
        ],
    ));
    s.push_str(&chart(
        "Gaps and stalls over time",
        "seconds",
        "ms missing / count",
        &[
            Series {
                name: "missing audio (ms)",
                color: "#b00020",
                points: pts(&|p| p.gap_ms),
                bars: true,
            },
            Series {
                name: "stalls",
                color: "#d4a72c",
                points: pts(&|p| p.stalls as f64),
                bars: false,
            },
            Series {
                name: "underruns",
                color: "#8250df",
                points: pts(&|p| p.underruns as f64),
                bars: false,
            },
        ],
    ));

    if !r.steps.is_empty() {
        s.push_str("<h2>Capacity levels</h2><table><tr><th>listeners</th><th>window s</th><th>mean listening</th><th>delivered</th><th>e2e p99 ms</th><th>ttfa p99 ms</th><th>result</th></tr>");
        for st in &r.steps {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td>{}–{}</td><td>{:.0}</td><td>{:.5}</td><td>{:.1}</td><td>{:.1}</td><td class="{}">{}</td></tr>"#,
                st.level_listeners,
                st.from_s,
                st.to_s,
                st.connected_mean,
                st.delivered_ratio,
                st.e2e_latency_ms.p99,
                st.ttfa_ms.p99,
                if st.passed { "ok" } else { "bad" },
                if st.passed { "held" } else { "FAILED" }
            );
        }
        s.push_str("</table>");
        if let Some(k) = r.knee_listeners {
            let _ = write!(
                s,
                "<p>Knee: objectives held up to <b>{k}</b> listeners.</p>"
            );
        }
    }
    if !r.failures.is_empty() || !r.drops.is_empty() {
        s.push_str("<h2>Failures</h2><table><tr><th>kind</th><th>reason</th><th>count</th></tr>");
        for (kind, m) in [("join failed", &r.failures), ("dropped", &r.drops)] {
            for (k, v) in m {
                let _ = write!(s, "<tr><td>{kind}</td><td>{}</td><td>{v}</td></tr>", esc(k));
            }
        }
        s.push_str("</table>");
    }
    s.push_str("<h2>Generator</h2><table>");
    let g = &r.generator;
    row(
        &mut s,
        "processes / threads",
        format!("{} / {}", g.procs, g.threads),
    );
    row(&mut s, "CPU, % of the machine", format!("{:.1}", g.cpu_pct));
    row(
        &mut s,
        "busiest process, % of its threads",
        format!("{:.1}", g.cpu_busy_pct_max),
    );
    row(
        &mut s,
        "CPU per listener-second, µs",
        format!("{:.1}", g.cpu_us_per_listener_s),
    );
    row(
        &mut s,
        "of which listener threads, µs",
        format!("{:.1}", g.listen_cpu_us_per_listener_s),
    );
    if let (Some(all), Some(listen)) = (g.cpu_vs_server, g.listen_cpu_vs_server) {
        row(
            &mut s,
            "against the server's CPU (all / listener threads)",
            format!("{all:.2} / {listen:.2}"),
        );
    }
    row(
        &mut s,
        "listener threads reading through io_uring",
        format!("{} of {}", g.io_uring_threads, g.threads),
    );
    row(
        &mut s,
        "memory per listener, KiB",
        format!("{:.2}", g.mem_per_listener_kb),
    );
    row(&mut s, "peak RSS, MiB", format!("{:.1}", g.rss_peak_mb));
    row(
        &mut s,
        "event-loop lag p99 / max, ms",
        format!("{:.1} / {:.1}", g.loop_lag_ms.p99, g.loop_lag_ms.max),
    );
    row(
        &mut s,
        "join start lag p99 / max, ms",
        format!("{:.1} / {:.1}", g.start_lag_ms.p99, g.start_lag_ms.max),
    );
    row(&mut s, "sockets peak", g.sockets_peak);
    row(&mut s, "saturated", g.saturated);
    s.push_str("</table>");
    if let Some(h) = &r.host {
        s.push_str("<h2>Synthetic host</h2><table>");
        row(&mut s, "packets sent", h.packets_sent);
        row(
            &mut s,
            "packets dropped (injected pause)",
            h.packets_dropped,
        );
        row(&mut s, "bitrate", h.bitrate);
        row(
            &mut s,
            "max send lag, ms",
            format!("{:.1}", h.max_send_lag_ms),
        );
        if let Some(e) = &h.error {
            row(&mut s, "error", e);
        }
        s.push_str("</table>");
    }
    if let Some(m) = &r.server {
        s.push_str("<h2>Server counters over the run (/metrics)</h2><table>");
        for (k, v) in m {
            row(&mut s, k, v);
        }
        s.push_str("</table>");
    }
    let _ = writeln!(
        s,
        "<h2>Scenario</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&r.scenario).unwrap_or_default())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Row;

    #[test]
    fn report_is_self_contained_and_escaped() {
        let mut r = Report {
            space: "<script>x</script>".into(),
            ..Report::default()
        };
        r.timeline = (0..10)
            .map(|t| Row {
                t,
                connected: t as u64 * 10,
                latency_p99_ms: 30.0,
                ..Row::default()
            })
            .collect();
        r.ttfa_histogram = vec![(10.0, 5), (20.0, 5)];
        let html = render(&r);
        assert!(html.starts_with("<!doctype html>"));
        assert!(!html.contains("<script"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external links"
        );
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("<polyline"));
    }

    #[test]
    fn axis_bounds_are_round() {
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(180.0), 200.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(2300.0), 2500.0);
    }
}
