//! Subscribe, publish, authorization and resume against a real `herald serve`.

mod common;

use std::time::Duration;

use common::*;

const T: &str = "https://example.com/books/1";

#[tokio::test]
async fn publish_reaches_subscriber_with_exact_wire_format() {
    let s = Server::start(&[]);
    let mut sub = Sub::ok(&s.hub(), &format!("match={}", enc(T))).await;
    assert_eq!(
        sub.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(sub.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(sub.header("x-accel-buffering").as_deref(), Some("no"));
    let id = publish(
        &s.hub(),
        &[
            ("topic", T),
            ("data", "line1\r\nline2\rline3\nline4"),
            ("type", "book"),
            ("retry", "1500"),
        ],
    )
    .await;
    assert!(id.starts_with("urn:uuid:"), "{id}");
    let ev = sub.next().await;
    assert_eq!(ev.id, id);
    assert_eq!(ev.data, "line1\nline2\nline3\nline4");
    assert_eq!(ev.event_type, "book");
    assert_eq!(ev.retry, Some(1500));
}

#[tokio::test]
async fn publish_answers_text_plain_with_the_given_id() {
    let s = Server::start(&[]);
    let resp = reqwest::Client::new()
        .post(s.hub())
        .bearer_auth(publisher())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("topic={}&id=my-id-1&data=x", enc(T)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(resp.text().await.unwrap(), "my-id-1");
    // Reusing an id still held in history is refused instead of making
    // Last-Event-ID ambiguous.
    let (status, text) = publish_raw(
        &s.hub(),
        Some(&publisher()),
        &format!("topic={}&id=my-id-1", enc(T)),
    )
    .await;
    assert_eq!(status, 409, "{text}");
}

#[tokio::test]
async fn all_matcher_kinds_select_topics() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let mut exact = Sub::ok(&hub, &format!("match={}", enc(T))).await;
    let mut pattern = Sub::ok(
        &hub,
        &format!("match_urlpattern={}", enc("https://example.com/books/:id")),
    )
    .await;
    let mut template = Sub::ok(
        &hub,
        &format!("topic={}", enc("https://example.com/books/{id}")),
    )
    .await;
    let mut star = Sub::ok(&hub, "match=*").await;
    let mut other = Sub::ok(
        &hub,
        &format!("match={}", enc("https://example.com/books/2")),
    )
    .await;
    publish(&hub, &[("topic", T), ("data", "b1")]).await;
    publish(
        &hub,
        &[("topic", "https://example.com/authors/1"), ("data", "a1")],
    )
    .await;
    publish(
        &hub,
        &[("topic", "https://example.com/books/2"), ("data", "b2")],
    )
    .await;
    assert_eq!(exact.next().await.data, "b1");
    assert_eq!(pattern.next().await.data, "b1");
    assert_eq!(pattern.next().await.data, "b2");
    assert_eq!(template.next().await.data, "b1");
    assert_eq!(template.next().await.data, "b2");
    assert_eq!(star.next().await.data, "b1");
    assert_eq!(star.next().await.data, "a1");
    assert_eq!(
        other.next().await.data,
        "b2",
        "exact subscriber got only its topic"
    );
    // Nothing else is pending for the exact subscriber.
    publish(&hub, &[("topic", T), ("data", "b1-again")]).await;
    assert_eq!(exact.next().await.data, "b1-again");
}

#[tokio::test]
async fn alternate_topics_deliver_once() {
    let s = Server::start(&[]);
    let mut sub = Sub::ok(&s.hub(), &format!("match={}&match={}", enc("a"), enc("b"))).await;
    publish(&s.hub(), &[("topic", "a"), ("topic", "b"), ("data", "one")]).await;
    publish(&s.hub(), &[("topic", "b"), ("data", "two")]).await;
    assert_eq!(sub.next().await.data, "one");
    assert_eq!(sub.next().await.data, "two");
}

#[tokio::test]
async fn subscribe_rejects_bad_requests_with_400() {
    let s = Server::start(&[]);
    let long = "x".repeat(3000);
    let many: Vec<String> = (0..101).map(|i| format!("match=t{i}")).collect();
    for query in [
        String::new(),
        "unrelated=1".to_string(),
        "match_regex=a".to_string(),
        "matchx=a".to_string(),
        "match=a%00".to_string(),
        "match=a%E2%80%8B".to_string(),
        "match=a%7F".to_string(),
        format!("match={long}"),
        many.join("&"),
        "match_urlpattern=https%3A%2F%2Fx%2F(".to_string(),
        "topic=https://x/{".to_string(),
    ] {
        let sub = Sub::open(&s.hub(), &query, SubOpts::default()).await;
        assert_eq!(sub.status, 400, "query {:.60}", query);
    }
}

#[tokio::test]
async fn subscribe_refuses_clients_that_do_not_accept_event_streams() {
    let s = Server::start(&[]);
    let resp = reqwest::Client::new()
        .get(format!("{}?match=a", s.hub()))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 406);
    let resp = reqwest::Client::new()
        .get(format!("{}?match=a", s.hub()))
        .header("accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn publish_validation_and_auth_statuses() {
    let s = Server::start(&["--max-body", "4096"]);
    let hub = s.hub();
    let p = publisher();
    let cases: Vec<(Option<String>, String, u16)> = vec![
        (None, "topic=a&data=x".into(), 401),
        (Some("not-a-jwt".into()), "topic=a".into(), 401),
        (
            Some(herald::auth::mint_hs256("wrong-key", &["*".into()], &[], None, None).unwrap()),
            "topic=a".into(),
            401,
        ),
        (
            Some(herald::auth::mint_hs256(KEY, &["*".into()], &[], None, Some(0)).unwrap()),
            "topic=a".into(),
            200,
        ),
        (
            Some(token(&["https://example.com/books/{id}"], &[])),
            "topic=https://example.com/users/1".into(),
            403,
        ),
        (
            Some(token(&["https://example.com/books/{id}"], &[])),
            format!("topic={}&topic=other", enc(T)),
            403,
        ),
        (
            Some(token(&["https://example.com/books/{id}"], &[])),
            format!("topic={}", enc(T)),
            200,
        ),
        (Some(p.clone()), "data=no-topic".into(), 400),
        (Some(p.clone()), "topic=*".into(), 400),
        (
            Some(p.clone()),
            "topic=/.well-known/mercure/subscriptions/x".into(),
            400,
        ),
        (Some(p.clone()), "topic=a&id=%23x".into(), 400),
        (Some(p.clone()), "topic=a&id=earliest".into(), 400),
        (Some(p.clone()), "topic=a&id=a%0Ab".into(), 400),
        (Some(p.clone()), "topic=a&id=a%E2%80%8Eb".into(), 400),
        (
            Some(p.clone()),
            "topic=a&type=x%0Adata:%20injected".into(),
            400,
        ),
        (Some(p.clone()), "topic=a&type=x%0Db".into(), 400),
        (Some(p.clone()), "topic=a&type=mercure".into(), 400),
        // type is limited like ids and topics (--max-selector-len).
        (
            Some(p.clone()),
            format!("topic=a&type={}", "t".repeat(3000)),
            413,
        ),
        (Some(p.clone()), "topic=a&retry=10s".into(), 400),
        (Some(p.clone()), "topic=%FF".into(), 400),
        (
            Some(p.clone()),
            format!("topic=a&data={}", "x".repeat(5000)),
            413,
        ),
    ];
    for (tok, body, expected) in cases {
        let (status, text) = publish_raw(&hub, tok.as_deref(), &body).await;
        assert_eq!(status, expected, "body {:.60} -> {text}", body);
        assert!(!text.trim().is_empty(), "every error says what was wrong");
    }
    // An expired token (exp in the past, beyond leeway).
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"mercure": {"publish": ["*"]}, "exp": 1_000_000}),
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let (status, _) = publish_raw(&hub, Some(&expired), "topic=a").await;
    assert_eq!(status, 401);
    // 401 carries the Bearer challenge.
    let resp = reqwest::Client::new()
        .post(&hub)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=a")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert!(resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    // Every refusal of a token says why, in the challenge too (RFC 6750).
    let why = |expired: &str| {
        let expired = expired.to_string();
        let hub = hub.clone();
        async move {
            let resp = reqwest::Client::new()
                .post(&hub)
                .bearer_auth(expired)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("topic=https%3A%2F%2Fexample.com%2Fnot-mine")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let challenge = resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_string();
            (status, challenge)
        }
    };
    let (status, challenge) = why(&expired).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(
        challenge.contains("error_description=\"invalid token: the token expired"),
        "{challenge}"
    );
    let forged = herald::auth::mint_hs256("another-key", &["*".into()], &[], None, None).unwrap();
    let (status, challenge) = why(&forged).await;
    assert_eq!(status, 401);
    assert!(
        challenge.contains("signature does not verify"),
        "{challenge}"
    );
    assert!(
        !challenge.contains("another-key") && !challenge.contains(KEY),
        "{challenge}"
    );
    let narrow =
        herald::auth::mint_hs256(KEY, &["https://example.com/mine".into()], &[], None, None)
            .unwrap();
    let (status, challenge) = why(&narrow).await;
    assert_eq!(status, 403);
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("https://example.com/not-mine"),
        "names the topic: {challenge}"
    );
    // Wrong media type.
    let resp = reqwest::Client::new()
        .post(&hub)
        .bearer_auth(&p)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
}

#[tokio::test]
async fn subscribe_with_bad_or_expired_token_is_401() {
    let s = Server::start(&[]);
    for t in [
        "garbage".to_string(),
        herald::auth::mint_hs256("other", &[], &["*".into()], None, None).unwrap(),
    ] {
        let sub = Sub::open(
            &s.hub(),
            "match=a",
            SubOpts {
                token: Some(&t),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(sub.status, 401);
    }
    let sub = Sub::open(
        &s.hub(),
        "match=a&authorization=garbage",
        SubOpts::default(),
    )
    .await;
    assert_eq!(sub.status, 401, "a bad token in the query is refused too");
}

#[tokio::test]
async fn anonymous_subscribers_can_be_refused() {
    let s = Server::start(&["--allow-anonymous", "false"]);
    let sub = Sub::open(&s.hub(), "match=a", SubOpts::default()).await;
    assert_eq!(sub.status, 401);
    let t = token(&[], &["a"]);
    let sub = Sub::open(
        &s.hub(),
        "match=a",
        SubOpts {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sub.status, 200);
}

/// The private update for user 1 reaches both of user 1's tabs and nobody
/// else: not an anonymous page, not user 2 (who subscribes to the same
/// topic), not a `*` subscriber without rights.
#[tokio::test]
async fn private_updates_reach_only_their_audience_in_every_tab() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let u1 = "https://example.com/users/1";
    let u1_token = token(&[], &[u1]);
    let u2_token = token(&[], &["https://example.com/users/2"]);
    let q = format!("match={}&match=announcements", enc(u1));
    let mut tab1 = Sub::open(
        &hub,
        &q,
        SubOpts {
            token: Some(&u1_token),
            ..Default::default()
        },
    )
    .await;
    let mut tab2 = Sub::open(
        &hub,
        &q,
        SubOpts {
            token: Some(&u1_token),
            ..Default::default()
        },
    )
    .await;
    let mut anon = Sub::ok(&hub, &q).await;
    let mut user2 = Sub::open(
        &hub,
        &q,
        SubOpts {
            token: Some(&u2_token),
            ..Default::default()
        },
    )
    .await;
    let mut star = Sub::ok(&hub, "match=*").await;
    publish(
        &hub,
        &[("topic", u1), ("data", "secret for 1"), ("private", "on")],
    )
    .await;
    publish(
        &hub,
        &[("topic", "announcements"), ("data", "public marker")],
    )
    .await;
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(tab.next().await.data, "secret for 1");
        assert_eq!(tab.next().await.data, "public marker");
    }
    for outsider in [&mut anon, &mut user2, &mut star] {
        assert_eq!(
            outsider.next().await.data,
            "public marker",
            "the private update was skipped"
        );
    }
}

#[tokio::test]
async fn tokens_from_cookie_and_query_parameter() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let t = token(&[], &["p"]);
    let mut by_cookie = Sub::open(
        &hub,
        "match=p",
        SubOpts {
            headers: vec![("cookie", format!("mercureAuthorization={t}"))],
            ..Default::default()
        },
    )
    .await;
    let mut by_query = Sub::ok(&hub, &format!("match=p&authorization={t}")).await;
    publish(
        &hub,
        &[("topic", "p"), ("data", "private"), ("private", "")],
    )
    .await;
    assert_eq!(by_cookie.next().await.data, "private");
    assert_eq!(by_query.next().await.data, "private");
    // The Authorization header wins over a cookie.
    let sub = Sub::open(
        &hub,
        "match=p",
        SubOpts {
            token: Some("bad"),
            headers: vec![("cookie", format!("mercureAuthorization={t}"))],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sub.status, 401);
}

#[tokio::test]
async fn authorization_details_tokens_are_understood() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let claims = serde_json::json!({
        "exp": 9_999_999_999u64,
        "authorization_details": [{
            "type": "https://mercure.rocks/authorization-detail",
            "actions": ["subscribe"],
            "topics": [{"match": "https://example.com/users/42/*", "match_type": "urlpattern"}]
        }]
    });
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let mut sub = Sub::open(
        &hub,
        &format!("match_urlpattern={}", enc("https://example.com/books/:id")),
        SubOpts {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sub.status, 200);
    publish(
        &hub,
        &[
            ("topic", "https://example.com/books/2"),
            ("data", "not yours"),
            ("private", "on"),
        ],
    )
    .await;
    publish(
        &hub,
        &[
            ("topic", "https://example.com/books/1"),
            ("topic", "https://example.com/users/42/books/1"),
            ("data", "yours"),
            ("private", "on"),
        ],
    )
    .await;
    assert_eq!(sub.next().await.data, "yours");
    // A malformed detail invalidates the token.
    let bad = serde_json::json!({"authorization_details": [{"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe"], "topics": []}]});
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &bad,
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let sub = Sub::open(
        &hub,
        "match=a",
        SubOpts {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sub.status, 401);
}

#[tokio::test]
async fn resume_from_history_every_way() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish(&hub, &[("topic", "r"), ("data", &format!("m{i}"))]).await);
    }
    publish(&hub, &[("topic", "elsewhere"), ("data", "skip")]).await;

    // Header.
    let mut sub = Sub::open(
        &hub,
        "match=r",
        SubOpts {
            last_event_id: Some(&ids[1]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        sub.header("mercure-last-event-id").as_deref(),
        Some(ids[1].as_str())
    );
    for i in 2..5 {
        assert_eq!(sub.next().await.data, format!("m{i}"));
    }
    publish(&hub, &[("topic", "r"), ("data", "live")]).await;
    assert_eq!(sub.next().await.data, "live");

    // Query parameters, both dialects; the header wins over them.
    let mut q = Sub::ok(&hub, &format!("match=r&last_event_id={}", enc(&ids[3]))).await;
    assert_eq!(q.next().await.data, "m4");
    let mut legacy = Sub::ok(&hub, &format!("topic=r&lastEventID={}", enc(&ids[3]))).await;
    assert_eq!(legacy.next().await.data, "m4");
    let mut both = Sub::open(
        &hub,
        &format!("match=r&last_event_id={}", enc(&ids[0])),
        SubOpts {
            last_event_id: Some(&ids[3]),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(both.next().await.data, "m4");

    // earliest.
    let mut e = Sub::ok(&hub, "match=r&last_event_id=earliest").await;
    assert_eq!(
        e.header("mercure-last-event-id").as_deref(),
        Some("earliest")
    );
    assert_eq!(e.next().await.data, "m0");

    // Unknown id: nothing replayed, and the response says so.
    let mut u = Sub::open(
        &hub,
        "match=r",
        SubOpts {
            last_event_id: Some("urn:uuid:unknown"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        u.header("mercure-last-event-id").as_deref(),
        Some("earliest")
    );
    assert!(u.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn replay_rechecks_authorization() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let first = publish(&hub, &[("topic", "u/1"), ("data", "start")]).await;
    publish(
        &hub,
        &[("topic", "u/1"), ("data", "private"), ("private", "on")],
    )
    .await;
    publish(&hub, &[("topic", "u/1"), ("data", "public")]).await;
    let mut anon = Sub::open(
        &hub,
        "match=u/1",
        SubOpts {
            last_event_id: Some(&first),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(anon.next().await.data, "public");
    let t = token(&[], &["u/1"]);
    let mut owner = Sub::open(
        &hub,
        "match=u/1",
        SubOpts {
            last_event_id: Some(&first),
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(owner.next().await.data, "private");
    assert_eq!(owner.next().await.data, "public");
}

#[tokio::test]
async fn heartbeat_comments_keep_idle_streams_alive() {
    let s = Server::start(&["--heartbeat", "100ms"]);
    let mut sub = Sub::ok(&s.hub(), "match=a").await;
    assert!(sub.next_within(Duration::from_millis(600)).await.is_none());
    assert!(
        sub.comments() >= 2,
        "got {} keep-alive comments",
        sub.comments()
    );
}

#[tokio::test]
async fn stream_ends_when_the_token_expires() {
    let s = Server::start(&[]);
    let t = herald::auth::mint_hs256(KEY, &[], &["a".into()], None, Some(2)).unwrap();
    let mut sub = Sub::open(
        &s.hub(),
        "match=a",
        SubOpts {
            token: Some(&t),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(sub.status, 200);
    assert!(
        sub.ended_within(Duration::from_secs(6)).await,
        "stream closed at exp"
    );
}

#[tokio::test]
async fn thousand_dropped_connections_leave_nothing_behind() {
    let s = Server::start(&[]);
    let hub = s.hub();
    let mut subs = Vec::new();
    for i in 0..1000 {
        subs.push(Sub::ok(&hub, &format!("match=t{}&match=shared", i % 50)).await);
    }
    assert_eq!(s.subscribers().await, 1000);
    drop(subs);
    let mut count = u64::MAX;
    for _ in 0..100 {
        count = s.subscribers().await;
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, 0, "every dropped subscriber was removed");
    // And the hub still works.
    let mut sub = Sub::ok(&hub, "match=shared").await;
    publish(&hub, &[("topic", "shared"), ("data", "still here")]).await;
    assert_eq!(sub.next().await.data, "still here");
}

#[tokio::test]
async fn slow_subscriber_is_cut_off_and_resumes_without_loss() {
    let s = Server::start(&["--queue-capacity", "4"]);
    let hub = s.hub();
    // A raw TCP client that never reads: its socket buffers fill, then its
    // queue, then it is cut off, while a reading subscriber gets everything.
    let mut fast = Sub::ok(&hub, "match=flood").await;
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    slow.write_all(
        format!("GET /.well-known/mercure?match=flood HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.subscribers().await, 2);
    let data = "x".repeat(32 * 1024);
    let mut ids = Vec::new();
    let publishing = {
        let hub = hub.clone();
        let data = data.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..800 {
                ids.push(publish(&hub, &[("topic", "flood"), ("data", &data)]).await);
            }
            ids
        })
    };
    let mut got = Vec::new();
    while got.len() < 800 {
        got.push(fast.next().await.id);
    }
    ids.extend(publishing.await.unwrap());
    assert_eq!(
        got, ids,
        "the reading subscriber got every update, in order"
    );
    assert!(metric(&s.base, "herald_slow_cut_off_total").await >= 1);
    assert_eq!(s.subscribers().await, 1);
    drop(slow);
}

#[tokio::test]
async fn health_and_readiness() {
    let s = Server::start(&[]);
    assert_eq!(
        reqwest::get(format!("{}/healthz", s.base))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", s.base))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[tokio::test]
async fn sigterm_ends_streams_and_exits_zero() {
    let mut s = Server::start(&[]);
    let mut sub = Sub::ok(&s.hub(), "match=a").await;
    publish(&s.hub(), &[("topic", "a"), ("data", "before")]).await;
    assert_eq!(sub.next().await.data, "before");
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(sub.ended_within(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn cors_allowlist_never_reflects_other_origins() {
    let s = Server::start(&[
        "--cors-origins",
        "https://app.example.com,https://admin.example.com",
    ]);
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}?match=a", s.hub()))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    drop(resp);
    let resp = client
        .get(format!("{}?match=a", s.hub()))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    drop(resp);
    let pre = client
        .request(reqwest::Method::OPTIONS, s.hub())
        .header("origin", "https://admin.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );
}

/// Raw HTTP/1.x over TCP: the lean event-stream path and hyper's path must
/// both answer correctly, whatever the client sends first.
#[tokio::test]
async fn raw_http_clients_get_correct_answers_on_both_paths() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start(&[]);
    let addr = s.base.trim_start_matches("http://").to_string();
    async fn exchange(addr: &str, request: &[u8], until: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&got).contains(until) {
            match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }
    // Lean path: chunked event stream.
    let lean = exchange(
        &addr,
        b"GET /.well-known/mercure?match=raw HTTP/1.1\r\nHost: x\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(lean.starts_with("HTTP/1.1 200 OK\r\n"), "{lean}");
    assert!(lean.contains("transfer-encoding: chunked\r\n"), "{lean}");
    assert!(
        lean.contains("content-type: text/event-stream\r\n"),
        "{lean}"
    );
    // Lean path, error answer: whole, then closed.
    let bad = exchange(
        &addr,
        b"GET /.well-known/mercure?nomatch=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        "match",
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
    // HTTP/1.0 goes to hyper and still streams.
    let old = exchange(
        &addr,
        b"GET /.well-known/mercure?match=raw HTTP/1.0\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(old.contains(" 200 OK\r\n"), "{old}");
    // Keep-alive: a health check then a subscription on one connection.
    let two = exchange(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /.well-known/mercure?match=raw HTTP/1.1\r\nHost: x\r\n\r\n",
        "text/event-stream",
    )
    .await;
    assert!(two.contains("ok\n"), "{two}");
    assert!(two.contains("text/event-stream"), "{two}");
    // Garbage and oversized heads get hyper's answers, not a hang.
    let garbage = exchange(&addr, b"NOT HTTP AT ALL\r\n\r\n", "\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let mut huge = b"GET /.well-known/mercure?match=raw HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 500_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let big = exchange(&addr, &huge, "\r\n\r\n").await;
    assert!(big.starts_with("HTTP/1.1 431"), "{big}");
    // The server notices each close on its own schedule: wait for it.
    let mut count = u64::MAX;
    for _ in 0..100 {
        count = s.subscribers().await;
        if count == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, 0, "every raw subscriber is gone");
}
