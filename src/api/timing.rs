//! Request metrics: one layer, put on every route by [`super::routes::router`], counts and
//! times each request under its route's fixed `endpoint` label
//! (`streamspace_api_requests_total{endpoint,code}`,
//! `streamspace_api_request_duration_seconds{endpoint}`), whatever answered it: the handler,
//! or an extractor that refused the request before the handler ran. Handlers carry no timing
//! code of their own.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::SharedMetrics;

/// What the layer of one route needs: where to record, and under which label.
#[derive(Clone)]
pub(super) struct RouteMetrics {
    pub metrics: SharedMetrics,
    /// The route's `endpoint` label ([`super::routes::Endpoint::metric`]).
    pub endpoint: &'static str,
}

/// Runs the request inside a span naming the endpoint (so a handler's log lines say which
/// route failed), then counts it by status code and records how long the answer took.
pub(super) async fn timed(
    State(route): State<RouteMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!("request", endpoint = route.endpoint);
    let response = next.run(request).instrument(span).await;
    route
        .metrics
        .api
        .request(route.endpoint, response.status().as_u16(), started);
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::extract::Query;
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;
    use crate::metrics::Metrics;

    #[derive(serde::Deserialize)]
    struct Wanted {
        n: u32,
    }

    async fn answer(Query(wanted): Query<Wanted>) -> StatusCode {
        if wanted.n == 0 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        }
    }

    fn count(metrics: &Metrics, series: &str) -> u64 {
        metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Handler answers and extractor refusals alike are counted under the route's label.
    #[tokio::test]
    async fn every_answer_is_counted_under_the_route_label() {
        let metrics = Arc::new(Metrics::default());
        let route = RouteMetrics {
            metrics: metrics.clone(),
            endpoint: "probe",
        };
        let router = Router::new().route(
            "/probe",
            get(answer).layer(from_fn_with_state(route, timed)),
        );
        for (uri, status) in [
            ("/probe?n=1", StatusCode::OK),
            ("/probe?n=1", StatusCode::OK),
            ("/probe?n=0", StatusCode::NOT_FOUND),
            ("/probe?n=x", StatusCode::BAD_REQUEST),
            ("/elsewhere", StatusCode::NOT_FOUND),
        ] {
            let request = Request::builder().uri(uri).body(Body::empty());
            let response = router
                .clone()
                .oneshot(request.expect("request"))
                .await
                .expect("infallible");
            assert_eq!(response.status(), status, "{uri}");
        }
        let requests = "streamspace_api_requests_total";
        let rows = [
            (r#"{endpoint="probe",code="200"} "#, 2),
            (r#"{endpoint="probe",code="404"} "#, 1),
            (r#"{endpoint="probe",code="400"} "#, 1),
        ];
        for (labels, expected) in rows {
            let series = format!("{requests}{labels}");
            assert_eq!(count(&metrics, &series), expected, "{series}");
        }
        let text = metrics.encode();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with(requests) && !l.contains("probe"))
                .count(),
            0,
            "an unrouted request has no label: {text}"
        );
        let timed = r#"streamspace_api_request_duration_seconds_count{endpoint="probe"} "#;
        assert_eq!(count(&metrics, timed), 4);
    }
}
