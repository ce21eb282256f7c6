//! `POST /.well-known/mercure/batch` against a real herald: order, all or
//! nothing, authorization per record (private updates included), limits,
//! delivery and resume of batched updates.

mod common;

use std::time::Duration;

use common::*;

async fn batch(hub: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{hub}/batch"))
        .header("content-type", "application/x-ndjson")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("batch request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn record(topic: &str, data: &str) -> String {
    serde_json::json!({"topic": topic, "data": data}).to_string()
}

#[tokio::test]
async fn a_batch_is_published_in_order_and_answers_its_ids() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let mut all = Sub::ok(
        &hub,
        &format!("match_urlpattern={}", enc("https://ex.net/users/*")),
    )
    .await;
    let mut user7 = Sub::ok(&hub, &format!("match={}", enc("https://ex.net/users/7"))).await;
    let lines: Vec<String> = (0..50)
        .map(|i| record(&format!("https://ex.net/users/{i}"), &format!("digest {i}")))
        .chain([
            serde_json::json!({"topic": ["https://ex.net/users/7", "https://ex.net/alt"], "data": "two topics", "id": "mine-1", "type": "digest", "retry": 5000}).to_string(),
        ])
        .collect();
    let (status, text) = batch(&hub, Some(&publisher()), &(lines.join("\n") + "\n")).await;
    assert_eq!(status, 200, "{text}");
    let ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids.len(), 51);
    assert_eq!(ids[50], "mine-1");
    for (i, id) in ids.iter().enumerate() {
        let ev = all.next().await;
        assert_eq!(&ev.id, id, "in request order");
        if i < 50 {
            assert_eq!(ev.data, format!("digest {i}"));
        }
    }
    assert_eq!(user7.next().await.data, "digest 7");
    let ev = user7.next().await;
    assert_eq!(
        (ev.data.as_str(), ev.event_type.as_str(), ev.retry),
        ("two topics", "digest", Some(5000))
    );
    // Batched updates are in history like any other: resume works.
    let mut resumed = Sub::open(
        &hub,
        &format!("match={}", enc("https://ex.net/users/7")),
        SubOpts {
            last_event_id: Some(ids[0]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        resumed.header("mercure-last-event-id").as_deref(),
        Some(ids[0])
    );
    assert_eq!(resumed.next().await.data, "digest 7");
    assert_eq!(resumed.next().await.id, "mine-1");
}

#[tokio::test]
async fn a_bad_line_refuses_the_whole_batch_and_names_it() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let mut sub = Sub::ok(&hub, "match=*").await;
    let good = record("https://ex.net/a", "ok");
    let cases = [
        (format!("{good}\n{good}\nnot json\n"), 400, "line 3"),
        (
            format!("{good}\n{{\"data\": \"no topic\"}}\n"),
            400,
            "line 2",
        ),
        (
            format!(
                "{good}\n{}\n",
                serde_json::json!({"topic": "t", "id": "a\nb"})
            ),
            400,
            "line 2",
        ),
        (
            format!(
                "{good}\n{}\n",
                serde_json::json!({"topic": "/.well-known/mercure/x"})
            ),
            400,
            "line 2",
        ),
        (
            format!(
                "{}\n{}\n",
                serde_json::json!({"topic": "t", "id": "same"}),
                serde_json::json!({"topic": "t", "id": "same"})
            ),
            400,
            "line 2",
        ),
        ("\n\n".to_string(), 400, "no records"),
    ];
    for (body, status, says) in cases {
        let (got, text) = batch(&hub, Some(&publisher()), &body).await;
        assert_eq!(got, status, "{body:?}: {text}");
        assert!(text.contains(says), "{body:?}: {text}");
    }
    // An id already in history: 409, nothing of the batch published.
    let taken = publish(&hub, &[("topic", "https://ex.net/a"), ("data", "first")]).await;
    let body = format!(
        "{good}\n{}\n",
        serde_json::json!({"topic": "t", "id": taken})
    );
    let (status, text) = batch(&hub, Some(&publisher()), &body).await;
    assert_eq!(status, 409, "{text}");
    // The only update that ever arrives is the single publish.
    assert_eq!(sub.next().await.id, taken);
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
    // Wrong media type, no token.
    let resp = reqwest::Client::new()
        .post(format!("{hub}/batch"))
        .bearer_auth(publisher())
        .header("content-type", "application/json")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(batch(&hub, None, &good).await.0, 401);
}

#[tokio::test]
async fn every_record_is_authorized_and_private_ones_reach_only_their_audience() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let mut anon = Sub::ok(&hub, &format!("topic={}", enc("https://ex.net/users/{id}"))).await;
    let alice_token = token(&[], &["https://ex.net/users/alice"]);
    let mut alice = Sub::open(
        &hub,
        &format!("topic={}", enc("https://ex.net/users/{id}")),
        SubOpts {
            token: Some(&alice_token),
            ..Default::default()
        },
    )
    .await;
    // A publisher allowed only under /users/: one record elsewhere refuses all.
    let narrow = token(&["https://ex.net/users/{id}"], &[]);
    let body = format!(
        "{}\n{}\n",
        record("https://ex.net/users/alice", "x"),
        record("https://ex.net/admin", "y")
    );
    let (status, text) = batch(&hub, Some(&narrow), &body).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("line 2"), "{text}");
    let body = format!(
        "{}\n{}\n",
        serde_json::json!({"topic": "https://ex.net/users/alice", "data": "for alice", "private": true}),
        record("https://ex.net/users/bob", "public")
    );
    let (status, text) = batch(&hub, Some(&narrow), &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(alice.next().await.data, "for alice");
    assert_eq!(alice.next().await.data, "public");
    assert_eq!(
        anon.next().await.data,
        "public",
        "the private record reached only alice"
    );
    assert!(anon.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn batch_limits_answer_413() {
    let s = Server::start(&["--max-batch-records", "3", "--max-batch-bytes", "2048"]);
    let hub = s.hub();
    let four: Vec<String> = (0..4).map(|i| record("t", &i.to_string())).collect();
    let (status, text) = batch(&hub, Some(&publisher()), &four.join("\n")).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--max-batch-records"), "{text}");
    let big = record("t", &"x".repeat(3000));
    let (status, text) = batch(&hub, Some(&publisher()), &big).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--max-batch-bytes"), "{text}");
    let three: Vec<String> = (0..3).map(|i| record("t", &i.to_string())).collect();
    assert_eq!(
        batch(&hub, Some(&publisher()), &three.join("\n")).await.0,
        200
    );
}
