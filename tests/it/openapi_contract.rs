//! `openapi.yaml` and the router agree: every route the router serves is in the spec, every
//! route the spec names is served, each documented method answers (never the unknown-route
//! fallback), and every other method gets 405.

use crate::support::*;
use serde_json::json;
use std::collections::BTreeSet;

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `{id}`, `{tsId}`, `{handle}` → `{}`: parameter names may differ between spec and router.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

fn spec_routes() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    let spec: serde_json::Value = serde_norway::from_str(&text).expect("openapi.yaml parses");
    let mut routes = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.to_lowercase()).is_some() {
                routes.insert((method.to_owned(), normalize(path)));
            }
        }
    }
    routes
}

fn code_routes() -> BTreeSet<(String, String)> {
    signalflow_gateway::http::route_table().into_iter().map(|(m, p)| (m.to_owned(), normalize(p))).collect()
}

#[test]
fn the_spec_documents_exactly_the_routes_the_router_serves() {
    let spec = spec_routes();
    let code = code_routes();
    let undocumented: Vec<_> = code.difference(&spec).collect();
    let unserved: Vec<_> = spec.difference(&code).collect();
    assert!(undocumented.is_empty(), "routes missing from openapi.yaml: {undocumented:?}");
    assert!(unserved.is_empty(), "openapi.yaml names routes that do not exist: {unserved:?}");
}

#[tokio::test]
async fn documented_methods_answer_and_others_are_405() {
    let gw = in_process_gateway(test_settings()).await;
    let r = gw.post_json("/computations", json!({"program": "data('cpu.utilization').max().publish()"})).await;
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let served = code_routes();
    let paths: BTreeSet<&String> = served.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replacen("{}", &id, 1).replacen("{}", "AAAAAAAAAAE", 1);
        for method in METHODS {
            // The head only: a served stream stays open until the response is dropped.
            let response = gw.respond(request(method, &concrete).body(axum::body::Body::empty()).unwrap()).await;
            let status = response.status().as_u16();
            let documented = served.contains(&(method.to_owned(), path.clone()));
            if documented {
                assert_ne!(status, 405, "{method} {concrete}");
                if status == 404 {
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
                    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert!(
                        !problem["detail"].as_str().unwrap_or("").starts_with("no route"),
                        "{method} {concrete} fell through"
                    );
                }
            } else {
                assert_eq!(status, 405, "{method} {concrete} is not documented, so it must not be served");
            }
        }
    }
    let served_spec = gw.get("/openapi.yaml").await.body;
    assert_eq!(served_spec, std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap());
    gw.stop().await;
}
