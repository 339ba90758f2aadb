//! Injected faults, each shown firing: 429 with rate-limit headers, 5xx, latency, and a
//! rejected token. (Gateway drops are in `flows`.)

use std::time::{Duration, Instant};

use imagine_tests::{Fault, Simulator};
use serenity::http::HttpError;

use crate::{ready_world, WAIT};

fn status_of(error: serenity::Error) -> u16 {
    match error {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            response.status_code.as_u16()
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rate_limited_route_answers_429_with_discords_headers_then_recovers() {
    let sim = Simulator::start().await;
    sim.fail_route(
        "GET",
        "/gateway",
        Fault::RateLimited {
            retry_after: Duration::from_millis(1500),
        },
        1,
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/api/v10/gateway", sim.api_base());
    let auth = format!("Bot {}", sim.token());

    let limited = client
        .get(&url)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    let headers = limited.headers().clone();
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset-after"], "1.500");
    assert!(
        headers.contains_key("x-ratelimit-bucket") && headers.contains_key("x-ratelimit-reset")
    );
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["retry_after"], 1.5);
    assert_eq!(body["global"], false);

    let again = client
        .get(&url)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        again.status().as_u16(),
        200,
        "the fault fired once, then retired"
    );
    // serenity's own client sees the 429 as an unsuccessful request.
    sim.fail_route(
        "GET",
        "/users/@me",
        Fault::RateLimited {
            retry_after: Duration::from_secs(1),
        },
        1,
    );
    assert_eq!(
        status_of(sim.bot_http().get_current_user().await.unwrap_err()),
        429
    );
}

#[tokio::test]
async fn a_server_error_on_the_followup_route_reaches_the_bot_and_the_next_call_succeeds() {
    let world = ready_world().await;
    let sim = &world.sim;
    sim.fail_route("POST", "/webhooks/*/*", Fault::ServerError(502), 1);
    let first = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "one".into())],
        )
        .unwrap();
    let path = format!("/webhooks/{}/{}", sim.application_id(), first.token);
    sim.wait_for(
        "the bot's follow-up to be refused with 502",
        WAIT,
        |entries| {
            entries
                .iter()
                .filter_map(|e| e.as_rest())
                .any(|c| c.path == path && c.status == 502)
                .then_some(())
        },
    )
    .await
    .unwrap();

    let second = sim
        .slash_command(
            world.alice,
            world.channel,
            "imagine",
            vec![("prompt", "two".into())],
        )
        .unwrap();
    assert_eq!(
        sim.wait_followup(&second, WAIT).await.unwrap().content,
        "**two**"
    );
}

#[tokio::test]
async fn latency_delays_the_answer_but_not_the_result() {
    let sim = Simulator::start().await;
    sim.fail_route(
        "GET",
        "/users/@me",
        Fault::Latency(Duration::from_millis(400)),
        1,
    );
    let http = sim.bot_http();
    let started = Instant::now();
    let me = http.get_current_user().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(me.id, sim.bot_user_id());
}

#[tokio::test]
async fn a_wrong_bot_token_is_refused() {
    let sim = Simulator::start().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("{}/api/v10/users/@me", sim.api_base());
    let response = client
        .get(url)
        .header("authorization", "Bot wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}
