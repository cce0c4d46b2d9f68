//! The overview: circuit, outbox, the last hour as a chart, delivery lag.

use super::*;

/// `GET /admin`.
#[utoipa::path(get, path = "/admin", tag = "console", security(("console_session" = [])),
    responses(
        (status = 200, description = "The overview", body = String, content_type = "text/html"),
        PageRefused,
        Unavailable,
    ))]
pub(crate) async fn overview(
    operator: Operator,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let now = Utc::now();
    let counts = outbox::outbox_counts(&state.db).await?;
    let snapshot = state.metrics.activity.snapshot(now);
    let view = overview_view(&snapshot, &counts, now);
    Ok(pages::console_overview(&operator.csrf_token(&state), &view))
}

fn overview_view(
    snapshot: &Snapshot,
    counts: &outbox::OutboxCounts,
    now: DateTime<Utc>,
) -> OverviewView {
    let seconds = |s: Option<f64>| s.map_or_else(|| "–".to_owned(), short_seconds);
    OverviewView {
        circuit: snapshot.circuit.as_str(),
        circuit_class: match snapshot.circuit {
            CircuitState::Closed => "good",
            CircuitState::HalfOpen => "warn",
            CircuitState::Open => "bad",
        },
        circuit_since: timestamp(snapshot.circuit_since),
        circuit_for: duration(now - snapshot.circuit_since),
        pending: counts.pending,
        dead: counts.dead,
        oldest_pending: counts
            .oldest_pending
            .map_or_else(|| "–".to_owned(), |at| duration(now - at)),
        lag_p50: seconds(snapshot.lag_p50),
        lag_p99: seconds(snapshot.lag_p99),
        delivered_total: snapshot.minutes.iter().map(|m| m.delivered).sum(),
        failed_total: snapshot.minutes.iter().map(|m| m.failed).sum(),
        chart: chart(&snapshot.minutes),
        instance: hostname(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "this host".to_owned())
}

/// `at` as the console writes times (UTC).
fn timestamp(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A duration as "4 s", "3 min 20 s", "2 h 5 min", "3 d 4 h".
fn duration(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A lag in seconds, to two significant figures where it matters.
fn short_seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else {
        duration(chrono::TimeDelta::seconds(s as i64))
    }
}

/// The chart's size in SVG units.
const CHART_WIDTH: usize = 720;
const CHART_HEIGHT: usize = 180;
const CHART_LEFT: usize = 40;
const CHART_BOTTOM: usize = 20;

/// Deliveries (green) and failed attempts (red) per minute as an SVG bar chart: two bars a
/// minute, oldest on the left, one scale, its top labelled. Drawn with presentation classes
/// only (the page's CSP allows no inline style).
fn chart(minutes: &[MinuteCounts]) -> String {
    let top = minutes
        .iter()
        .map(|m| m.delivered.max(m.failed))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_h = (CHART_HEIGHT - CHART_BOTTOM - 10) as f64;
    let slot = (CHART_WIDTH - CHART_LEFT) as f64 / MINUTES as f64;
    let base = (CHART_HEIGHT - CHART_BOTTOM) as f64;
    let (delivered, failed): (u64, u64) = minutes
        .iter()
        .fold((0, 0), |(d, f), m| (d + m.delivered, f + m.failed));
    let mut svg = String::with_capacity(16 * 1024);
    let _ = write!(
        svg,
        r#"<svg class="chart" id="chart" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" role="img" aria-label="Last hour: {delivered} delivered, {failed} failed attempts">"#
    );
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{CHART_LEFT}" y1="{base}" x2="{CHART_WIDTH}" y2="{base}"/><line class="axis" x1="{CHART_LEFT}" y1="10" x2="{CHART_LEFT}" y2="{base}"/>"#
    );
    let _ = write!(
        svg,
        r#"<text x="{}" y="14" text-anchor="end">{top}</text><text x="{}" y="{base}" text-anchor="end">0</text>"#,
        CHART_LEFT - 4,
        CHART_LEFT - 4
    );
    for (i, m) in minutes.iter().enumerate() {
        let x = CHART_LEFT as f64 + i as f64 * slot;
        let bar = (slot - 2.0) / 2.0;
        let _ = write!(
            svg,
            r#"<g><title>{} UTC: {} delivered, {} failed</title>"#,
            m.at.format("%H:%M"),
            m.delivered,
            m.failed
        );
        for (n, class, dx) in [
            (m.delivered, "delivered", 1.0),
            (m.failed, "failed", 1.0 + bar),
        ] {
            let h = n as f64 / top as f64 * plot_h;
            if n > 0 {
                let _ = write!(
                    svg,
                    r#"<rect class="{class}" x="{:.1}" y="{:.1}" width="{bar:.1}" height="{:.1}"/>"#,
                    x + dx,
                    base - h.max(1.0),
                    h.max(1.0)
                );
            }
        }
        svg.push_str("</g>");
    }
    for (i, label) in [
        (0, "−60 min"),
        (MINUTES / 2, "−30 min"),
        (MINUTES - 1, "now"),
    ] {
        let x = CHART_LEFT as f64 + i as f64 * slot + slot / 2.0;
        let anchor = if i == MINUTES - 1 { "end" } else { "middle" };
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{}" text-anchor="{anchor}">{label}</text>"#,
            CHART_HEIGHT - 4
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(i: usize, delivered: u64, failed: u64) -> MinuteCounts {
        MinuteCounts {
            at: DateTime::from_timestamp(1_800_000_000 + 60 * i as i64, 0).expect("time"),
            delivered,
            failed,
        }
    }

    #[test]
    fn the_chart_scales_to_the_busiest_minute_and_draws_only_what_happened() {
        let mut minutes: Vec<_> = (0..MINUTES).map(|i| minute(i, 0, 0)).collect();
        minutes[10] = minute(10, 40, 0);
        minutes[59] = minute(59, 10, 20);
        let svg = chart(&minutes);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(
            svg.matches("<rect").count(),
            3,
            "one bar per non-zero count"
        );
        assert_eq!(
            svg.matches("<title>").count(),
            MINUTES,
            "a tooltip per minute"
        );
        assert!(
            svg.contains(">40</text>"),
            "the top of the scale is the busiest minute"
        );
        assert!(
            svg.contains("50 delivered, 20 failed"),
            "the summary: {svg:.300}"
        );
        // The 40-delivery bar is full height (150 units), the 10-delivery one a quarter.
        assert!(svg.contains(r#"height="150.0""#));
        assert!(svg.contains(r#"height="37.5""#));
        assert!(
            !svg.contains("style="),
            "no inline style: the CSP refuses it"
        );
    }

    #[test]
    fn an_empty_hour_is_an_empty_chart_not_a_division_by_zero() {
        let minutes: Vec<_> = (0..MINUTES).map(|i| minute(i, 0, 0)).collect();
        let svg = chart(&minutes);
        assert_eq!(svg.matches("<rect").count(), 0);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn durations_read_as_people_say_them() {
        let s = chrono::TimeDelta::seconds;
        assert_eq!(duration(s(4)), "4 s");
        assert_eq!(duration(s(200)), "3 min 20 s");
        assert_eq!(duration(s(7500)), "2 h 5 min");
        assert_eq!(duration(s(3 * 86_400 + 4 * 3600)), "3 d 4 h");
        assert_eq!(duration(s(-5)), "0 s", "a clock step back is not negative");
        assert_eq!(short_seconds(0.25), "250 ms");
        assert_eq!(short_seconds(32.9), "32.9 s");
    }
}
