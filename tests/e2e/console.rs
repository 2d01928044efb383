//! The rollout console in a real headless browser (Debian's `chromium` driven through
//! `chromedriver` over WebDriver): load the page, give it a token, see the flags, set an
//! override, see it take effect (on the page, live, and in the API), clear it. A screenshot
//! is kept as an artefact under `target/artefacts/`.
//!
//! `chromedriver` must be installed (`scripts/build-deps.sh` installs it): without it the test
//! fails rather than skips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::http_client::{API_TOKEN, RunningApi, call};
use crate::support::{TestEnv, wait_for};

/// `chromedriver` on a free port, killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver cannot start ({e}): install chromium and chromium-driver (scripts/build-deps.sh)")
            });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_for(
            "chromedriver to listen",
            || async { tokio::net::TcpStream::connect(addr).await.is_ok() },
            |up| *up,
        )
        .await;
        Driver {
            _child: child,
            url: format!("http://{addr}"),
        }
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,900"
            ]}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a headless Chromium session")
    }
}

/// The text of the `column` cell of `kind`'s row, `None` while the row is not there.
async fn cell(browser: &Client, kind: &str, column: &str) -> Option<String> {
    let css = format!("#flags tbody tr[data-type=\"{kind}\"] td.{column}");
    browser
        .find(Locator::Css(&css))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

async fn wait_cell(browser: &Client, kind: &str, column: &str, check: impl Fn(&str) -> bool) {
    wait_for(
        &format!("the console's {kind} {column}"),
        || cell(browser, kind, column),
        |text| text.as_deref().is_some_and(&check),
    )
    .await;
}

/// Clicks the element `css` names inside the flag table. The table is redrawn whenever the
/// state changes (an override's flip record lands a moment after the override itself), so an
/// element found just before a redraw is stale by the click: find it again and retry.
async fn click_in_table(browser: &Client, css: &str) {
    for _ in 0..20 {
        let result = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.click().await,
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => return,
            Err(error) if error.is_stale_element_reference() => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("click {css}: {error}"),
        }
    }
    panic!("click {css}: the element went stale on every one of 20 tries");
}

/// `<target>/artefacts/<name>`: what the suite keeps for `scripts/test.sh` to report.
pub(crate) fn artefact(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("artefacts");
    std::fs::create_dir_all(&dir).expect("artefact directory");
    dir.join(name)
}

#[tokio::test]
async fn the_console_shows_the_flags_and_sets_and_clears_an_override_live() {
    let env = TestEnv::without_controller("console").await;
    let api = RunningApi::start(&env, Duration::from_millis(500), None).await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    drive(&browser, api.addr).await;
    let _ = browser.close().await;
    drop(driver);
    env.cleanup().await;
}

async fn drive(browser: &Client, addr: SocketAddr) {
    browser
        .goto(&format!("http://{addr}/console"))
        .await
        .expect("load the console");
    browser
        .find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(API_TOKEN)
        .await
        .expect("type the token");
    browser
        .find(Locator::Id("connect"))
        .await
        .expect("connect button")
        .click()
        .await
        .expect("connect");
    // Every type shows, with the mode this API decides with (no flag object: the default).
    for kind in ["sessions", "idle", "autostart", "nodes", "quota"] {
        wait_cell(browser, kind, "mode", |m| m == "controller").await;
    }
    wait_cell(browser, "sessions", "source", |s| s == "default").await;
    let stored = browser
        .execute(
            "return sessionStorage.getItem('streamspace-console-token')",
            vec![],
        )
        .await
        .expect("read session storage");
    assert_eq!(
        stored,
        Value::String(API_TOKEN.into()),
        "the token is kept for the tab"
    );

    // Set an override: sessions to legacy for 10 minutes.
    let ttl = browser
        .find(Locator::Id("override-ttl"))
        .await
        .expect("ttl");
    ttl.clear().await.expect("clear ttl");
    ttl.send_keys("10m").await.expect("ttl");
    browser
        .find(Locator::Id("override-reason"))
        .await
        .expect("reason")
        .send_keys("console drill")
        .await
        .expect("reason");
    browser
        .find(Locator::Id("override-set"))
        .await
        .expect("set button")
        .click()
        .await
        .expect("set the override");
    // The page updates from the WebSocket, and the API decides with the override.
    wait_cell(browser, "sessions", "source", |s| s == "override").await;
    wait_cell(browser, "sessions", "mode", |m| m == "legacy").await;
    wait_cell(browser, "sessions", "override", |o| {
        o.contains("legacy/100") && o.contains("console drill")
    })
    .await;
    let (code, flag) = call(addr, "GET", "/api/v1/flags/sessions", Some(API_TOKEN)).await;
    assert_eq!(code, 200, "{flag}");
    assert_eq!(
        (flag["mode"].as_str(), flag["source"].as_str()),
        (Some("legacy"), Some("override"))
    );
    let shot = browser.screenshot().await.expect("screenshot");
    let path = artefact("console.png");
    std::fs::write(&path, &shot).expect("write the screenshot");
    assert!(shot.starts_with(b"\x89PNG"), "a PNG screenshot");
    println!("console screenshot: {}", path.display());

    // Clear it: the default is back, on the page and in the API.
    click_in_table(browser, "button.clear[data-type=\"sessions\"]").await;
    wait_cell(browser, "sessions", "source", |s| s != "override").await;
    wait_cell(browser, "sessions", "override", |o| o == "none").await;
    let (_, flag) = call(addr, "GET", "/api/v1/flags/sessions", Some(API_TOKEN)).await;
    assert_eq!(flag["mode"], "controller", "{flag}");
    let message = browser
        .find(Locator::Id("message"))
        .await
        .expect("message")
        .text()
        .await
        .expect("message text");
    assert_eq!(message, "override of sessions cleared");
}
