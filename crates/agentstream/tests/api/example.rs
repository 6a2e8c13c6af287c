//! The README's "Your agents and tools" example, as a new user runs it:
//! `examples/orders/` (the shop's schema and agentstream's configuration)
//! with the demo model, customers signed in with the shop's JWTs.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::{both, helpers::*};

const CONFIG: &str = include_str!("../../../../examples/orders/agentstream.toml");
const SCHEMA: &str = include_str!("../../../../examples/orders/schema.sql");
const TOKEN_SCRIPT: &str = include_str!("../../../../examples/orders/token.py");
const README: &str = include_str!("../../../../README.md");

/// An environment variable cargo sets for tests, standing in for
/// `SHOP_JWT_SECRET` (tests cannot set variables: that is unsafe code).
const SECRET_ENV: &str = "CARGO_PKG_DESCRIPTION";
const SECRET: &str = env!("CARGO_PKG_DESCRIPTION");

/// A token as `examples/orders/token.py` makes it.
fn token(customer: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "sub": customer,
        "iss": "https://shop.example",
        "aud": "agentstream",
        "exp": now + 3600,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A new conversation of `customer` with the orders agent, as created.
async fn start(app: &TestApp, customer: &str) -> Value {
    app.client
        .post(app.url("/v1/conversations"))
        .bearer_auth(token(customer))
        .json(&json!({ "agent": "orders" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// One turn of `customer` in `conversation`: its events.
async fn say(app: &TestApp, customer: &str, conversation: &str, input: &str) -> Vec<SseEvent> {
    let response = app
        .client
        .post(app.url(&format!("/v1/conversations/{conversation}/runs")))
        .bearer_auth(token(customer))
        .header("accept", "text/event-stream")
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = read_all(response).await;
    assert_eq!(done_status(&events), "completed", "{events:#?}");
    events
}

fn result_of(events: &[SseEvent]) -> Value {
    let result = events.iter().find(|e| e.event == "tool.result").unwrap();
    assert_eq!(result.data["is_error"], false, "{result:?}");
    result.data["output"].clone()
}

async fn the_orders_example_works(backend: Backend) {
    // The README shows the files as they are.
    for file in [CONFIG, SCHEMA] {
        assert!(README.contains(file.trim()), "README shows:\n{file}");
    }
    assert!(TOKEN_SCRIPT.contains("SHOP_JWT_SECRET"));
    let shop = tempfile::tempdir().unwrap();
    let db = shop.path().join("shop.db");
    let url = format!("sqlite://{}", db.display());
    {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        sqlx::raw_sql(SCHEMA).execute(&pool).await.unwrap();
        pool.close().await;
    }
    let config = CONFIG
        .replace("sqlite://data/shop.db", &url)
        .replace("SHOP_JWT_SECRET", SECRET_ENV);
    let (app, _dir) = spawn_app_with_file(backend, &config, |_| {}).await;

    let agents: Value = app
        .client
        .get(app.url("/v1/agents"))
        .bearer_auth(token("ada"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let orders = agents["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "orders")
        .unwrap();
    assert_eq!(orders["tools"], json!(["list_orders", "place_order"]));
    assert_eq!(orders["demo"], true);

    let created = start(&app, "ada").await;
    assert_eq!(created["agent"], "orders");
    let conversation = created["id"].as_str().unwrap();

    // Ada sees her order, not Grace's.
    let listed = result_of(&say(&app, "ada", conversation, "list my orders").await);
    let items: Vec<&str> = listed["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["item"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["teapot"]);
    assert_eq!(listed["rows"][0]["quantity"], 1);

    let placed = say(&app, "ada", conversation, "place order item=mug quantity=2").await;
    let placed = result_of(&placed);
    assert_eq!(placed["item"], "mug");
    assert_eq!(placed["quantity"], 2);
    assert_eq!(placed["status"], "open");

    let open = result_of(&say(&app, "ada", conversation, "list orders status=open").await);
    assert_eq!(open["row_count"], 1);
    assert_eq!(open["rows"][0]["item"], "mug");

    // Another customer cannot reach Ada's conversation, and lists only hers.
    let theirs = app
        .client
        .post(app.url(&format!("/v1/conversations/{conversation}/runs")))
        .bearer_auth(token("grace"))
        .json(&json!({ "input": "list orders" }))
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404);
    let created = start(&app, "grace").await;
    let graces = result_of(
        &say(
            &app,
            "grace",
            created["id"].as_str().unwrap(),
            "list orders",
        )
        .await,
    );
    assert_eq!(graces["rows"][0]["item"], "compiler");
    assert_eq!(graces["row_count"], 1);
    app.stop().await;

    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let ada: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE customer = 'ada'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ada, 2);
    pool.close().await;
}
both!(the_orders_example_works);
