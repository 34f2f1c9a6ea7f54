//! What each simulated vendor answers on the list endpoint the demo calls, shaped like that
//! vendor's API (field names after its public API; the values are invented), so `tokenproxy
//! demo` shows data a user recognises rather than a bare "authorized". Every other path of
//! a simulator answers with what arrived (`api_echo`), which the tests read.

use serde_json::{json, Value};

/// The vendor's answer to an authorized `GET path`, if it is the list the demo calls.
/// `organization`: CAEPE's `Organization` header, which scopes what it lists.
pub(crate) fn listing(vendor: &str, path: &str, organization: Option<&str>) -> Option<Value> {
    let answer = match (vendor, path) {
        ("BigAnimal", path) if path.ends_with("/clusters") => biganimal_clusters(),
        ("BigID", "/api/v1/ds-connections") => bigid_data_sources(),
        ("BiG EVAL", "/api/v1/testcases") => bigeval_test_cases(),
        ("CAEPE", "/api/v1/applications") => caepe_applications(organization.unwrap_or("")),
        ("AMM", "/api/v1/systems") => amm_systems(),
        _ => return None,
    };
    Some(answer)
}

/// BigAnimal API v3 `GET /clusters`: `{"data": [cluster]}`.
fn biganimal_clusters() -> Value {
    json!({ "data": [
        cluster(("p-c6a8ztq0bm", "orders-prod"), ("ha", 3), ("epas", "16"), ("aws", "eu-central-1", "aws:m6i.large"), 1_764_000_000),
        cluster(("p-8kx2n4r7vd", "analytics-dev"), ("single", 1), ("pg", "17"), ("azure", "westeurope", "azure:Standard_D2s_v3"), 1_764_300_000),
    ]})
}

/// One BigAnimal cluster: (id, name), (architecture, nodes), (Postgres type, version),
/// (cloud, region, instance type), created at.
fn cluster(
    (id, name): (&str, &str),
    (architecture, nodes): (&str, u32),
    (pg_type, pg_version): (&str, &str),
    (cloud, region, instance_type): (&str, &str, &str),
    created: u64,
) -> Value {
    json!({
        "clusterId": id,
        "clusterName": name,
        "clusterArchitecture": { "clusterArchitectureId": architecture, "nodes": nodes },
        "phase": "Cluster in healthy state",
        "pgType": { "pgTypeId": pg_type },
        "pgVersion": { "pgVersionId": pg_version, "pgVersionName": pg_version },
        "provider": { "cloudProviderId": cloud },
        "region": { "regionId": region },
        "instanceType": { "instanceTypeId": instance_type },
        "createdAt": { "seconds": created }
    })
}

/// BigID `GET /api/v1/ds-connections`: its `status`/`statusCode`/`data` envelope.
fn bigid_data_sources() -> Value {
    json!({
        "status": "success",
        "statusCode": 200,
        "data": {
            "ds_connections": [
                { "_id": "65f1c0a2e4b0a1d2c3b4a501", "name": "crm-postgres", "type": "rdb-postgresql", "enabled": "yes", "location": "EU", "owners": ["data-office@acme.example"], "scanner_group": "default" },
                { "_id": "65f1c0a2e4b0a1d2c3b4a502", "name": "hr-share", "type": "smb", "enabled": "yes", "location": "EU", "owners": ["hr-it@acme.example"], "scanner_group": "default" },
                { "_id": "65f1c0a2e4b0a1d2c3b4a503", "name": "marketing-s3", "type": "s3-v2", "enabled": "no", "location": "US", "owners": [], "scanner_group": "cloud" }
            ],
            "totalCount": 3
        },
        "message": null
    })
}

/// BiG EVAL `GET /api/v1/testcases`: a page of test cases.
fn bigeval_test_cases() -> Value {
    json!({
        "items": [
            { "id": 1017, "name": "Row count: CRM customers vs. DWH dim_customer", "testType": "Comparison", "category": "Completeness", "isActive": true, "lastRun": { "status": "Succeeded", "finishedAt": "2026-11-30T06:00:12Z" } },
            { "id": 1018, "name": "No orphan order lines", "testType": "Rule", "category": "Consistency", "isActive": true, "lastRun": { "status": "Failed", "finishedAt": "2026-11-30T06:00:47Z", "failedRecords": 12 } },
            { "id": 1021, "name": "Revenue per month within 5 % of ERP", "testType": "Comparison", "category": "Accuracy", "isActive": false, "lastRun": null }
        ],
        "totalCount": 3,
        "page": 1,
        "pageSize": 50
    })
}

/// CAEPE `GET /api/v1/applications`: the applications of the `Organization` asked for.
fn caepe_applications(organization: &str) -> Value {
    json!({
        "organization": organization,
        "items": [
            { "id": "app-4f7c2a", "name": "payments-api", "type": "helm", "repository": "oci://registry.acme.example/charts/payments-api", "version": "2.14.1", "environments": ["staging", "production"], "status": "Deployed" },
            { "id": "app-9b31e0", "name": "checkout-web", "type": "manifest", "repository": "https://git.acme.example/web/checkout.git", "version": "a1c9f03", "environments": ["staging"], "status": "Progressing" }
        ],
        "total": 2
    })
}

/// AMM `GET /api/v1/systems`: `{"items": [system], "size": n}`.
fn amm_systems() -> Value {
    json!({
        "items": [
            { "uid": "8f6c1a2b3d4e4f5a9b0c1d2e3f4a5b6c", "name": "Truck 12", "type": "GATEWAY", "commStatus": "OK", "lifeCycleState": "DEPLOYED", "lastCommDate": 1_764_540_000_000_i64, "gateway": { "imei": "359072061234567", "serialNumber": "LA72460123011017", "type": "RV50X", "macAddress": "00:14:3E:4A:7B:21" } },
            { "uid": "1a2b3c4d5e6f40718293a4b5c6d7e8f9", "name": "Pump station North", "type": "GATEWAY", "commStatus": "WARNING", "lifeCycleState": "DEPLOYED", "lastCommDate": 1_764_536_400_000_i64, "gateway": { "imei": "359072069876543", "serialNumber": "LA72460123019876", "type": "RX55", "macAddress": "00:14:3E:4A:9C:05" } }
        ],
        "size": 2
    })
}
