//! The browser view in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver, a small JSON client below), against the agent
//! and real traffic between network-namespace pods. With
//! PALISADE_SCREENSHOTS=1 it writes the README's screenshots to docs/.

use anyhow::{Context, Result, bail, ensure};
use palisade_e2e::cluster::Cluster;
use palisade_e2e::np;
use palisade_e2e::probe::{self, Proto};
use palisade_e2e::suite::Fixture;
use serde_json::{Value, json};
use socket2::SockAddr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const UI: &str = "127.0.0.1:19470";
const DRIVER_PORT: u16 = 19515;
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One HTTP/1.1 exchange (Connection: close), for chromedriver.
fn http(method: &str, addr: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open: read what the headers announce.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let (head, body) = loop {
        let n = s.read(&mut buf)?;
        ensure!(n > 0, "{method} {path}: the connection closed early");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else { continue };
        let lower = head.to_ascii_lowercase();
        let length =
            lower.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
        let head_len = head.len() + 4;
        match length {
            Some(len) if raw.len() >= head_len + len => {
                break (head.to_string(), String::from_utf8_lossy(&raw[head_len..head_len + len]).to_string());
            }
            None if lower.contains("transfer-encoding: chunked") && rest.ends_with("0\r\n\r\n") => {
                break (head.to_string(), unchunk(rest));
            }
            _ => continue,
        }
    };
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn base64(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bits: Vec<u8> = s.bytes().filter_map(value).collect();
    bits.chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |n, (i, &v)| n | u32::from(v) << (18 - 6 * i));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            bytes.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

/// A chromedriver process and one headless chromium session, 1280×800.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    fn start() -> Result<Browser> {
        let driver_bin = std::env::var("PALISADE_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={DRIVER_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {driver_bin} (cargo xtask setup installs chromium-driver)"))?;
        let addr = format!("127.0.0.1:{DRIVER_PORT}");
        let mut b = Browser { driver, addr, session: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http("GET", &b.addr, "/status", None).is_err() {
            ensure!(Instant::now() < deadline, "chromedriver did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let chromium = std::env::var("PALISADE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--hide-scrollbars", "--force-device-scale-factor=1"],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (code, v) = http("POST", &b.addr, "/session", Some(&caps))?;
        ensure!(code == 200, "new session: {v}");
        b.session = v["value"]["sessionId"].as_str().context("no session id")?.to_string();
        // The window's size includes what headless chromium counts as its
        // frame: set the page's own viewport to exactly 1280×800.
        b.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setDeviceMetricsOverride",
                        "params": {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false}})),
        )?;
        Ok(b)
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let (code, v) = http(method, &self.addr, &format!("/session/{}{path}", self.session), body.as_ref())?;
        ensure!(code == 200, "{method} {path}: {code} {v}");
        Ok(v["value"].clone())
    }

    fn open(&self, path: &str) -> Result<()> {
        self.cmd("POST", "/url", Some(json!({ "url": format!("http://{UI}{path}") })))?;
        Ok(())
    }

    fn run(&self, script: &str) -> Result<Value> {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// The first element `css` selects, if any.
    fn find(&self, css: &str) -> Result<Option<String>> {
        let (code, v) = http(
            "POST",
            &self.addr,
            &format!("/session/{}/elements", self.session),
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        ensure!(code == 200, "find {css}: {v}");
        Ok(v["value"].as_array().and_then(|a| a.first()).and_then(|e| e[ELEMENT].as_str()).map(String::from))
    }

    /// Waits up to `timeout` for `css` to select an element.
    fn wait_for(&self, css: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find(css)? {
                return Ok(e);
            }
            ensure!(Instant::now() < deadline, "nothing matches {css} after {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn click(&self, element: &str) -> Result<()> {
        self.cmd("POST", &format!("/element/{element}/click"), Some(json!({})))?;
        Ok(())
    }

    fn text(&self, css: &str) -> Result<String> {
        Ok(self
            .run(&format!("const e = document.querySelector({css:?}); return e ? e.innerText : ''"))?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// Waits up to `timeout` for the text of `css` to contain every needle.
    fn wait_text(&self, css: &str, needles: &[&str], timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text(css)?;
            if needles.iter().all(|n| t.contains(n)) {
                return Ok(t);
            }
            ensure!(Instant::now() < deadline, "{css} does not say {needles:?} after {timeout:?}:\n{t}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Errors the page logged (uncaught exceptions, failed loads). Not a
    /// request the browser itself aborted because the host's interfaces
    /// changed (`ERR_NETWORK_CHANGED`: this suite makes namespaces and
    /// veths as the page loads); the page asks again on its next poll.
    fn console_errors(&self) -> Result<Vec<String>> {
        let logs = self.cmd("POST", "/se/log", Some(json!({"type": "browser"})))?;
        Ok(logs
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l["level"] == "SEVERE")
            .map(|l| l["message"].as_str().unwrap_or("").to_string())
            .filter(|m| !m.contains("net::ERR_NETWORK_CHANGED"))
            .collect())
    }

    /// Writes a screenshot to docs/`name` when PALISADE_SCREENSHOTS=1.
    fn screenshot(&self, name: &str) -> Result<()> {
        if std::env::var("PALISADE_SCREENSHOTS").as_deref() != Ok("1") {
            return Ok(());
        }
        let png = base64(self.cmd("GET", "/screenshot", None)?.as_str().context("no screenshot")?);
        ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(name);
        std::fs::create_dir_all(path.parent().context("docs")?)?;
        std::fs::write(&path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http("DELETE", &self.addr, &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

struct Env {
    cluster: Cluster,
    browser: Browser,
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        let cluster = Cluster::start("ui", 13, &["--ui-addr", UI])?;
        Ok(Env { cluster, browser: Browser::start()? })
    }

    fn reset(&self) -> Result<()> {
        self.cluster.reset()
    }
}

/// The page, loaded and live (it has drawn the map at least once).
/// Chrome abandons a navigation when the host's interfaces change
/// (`ERR_NETWORK_CHANGED`: the suite's namespaces and veths come and go as
/// the page loads) and shows its own error page: then it is opened again.
/// Seen once in CI on the suite's first load, right after its 13 pods'
/// namespaces were made: no status at all after 5 s.
fn load(e: &Env) -> Result<()> {
    let page = || {
        e.browser
            .run("return location.href + ' | ' + document.title + ' | ' + document.body.innerText.slice(0, 300)")
            .map_or_else(|err| format!("(unreadable: {err})"), |v| v.to_string())
    };
    let mut tries = 0;
    loop {
        e.browser.open("/")?;
        if e.browser.wait_for("#status", Duration::from_secs(3)).is_ok() {
            break;
        }
        tries += 1;
        ensure!(tries < 3, "the page did not load in {tries} tries: {}", page());
    }
    e.browser
        .wait_text("#status", &["live"], Duration::from_secs(5))
        .with_context(|| format!("the page: {}", page()))?;
    Ok(())
}

const DENY_B: &str = "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Ingress]\n";

/// x/a may reach z's pods on 80 only; y/b takes nothing; x/c sends nothing.
fn policies() -> Vec<String> {
    vec![
        np("y", "deny-b", DENY_B),
        np(
            "z",
            "from-x-on-80",
            "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80, protocol: TCP}]\n",
        ),
        np("x", "c-sends-nothing", "  podSelector: {matchLabels: {pod: c}}\n  policyTypes: [Egress]\n"),
    ]
}

/// Starts a TCP connection attempt without waiting for it.
fn syn(e: &Env, from: &str, to: &str, port: u16) -> Result<socket2::Socket> {
    let s = probe::socket_in(e.cluster.topo.pod(from), false, Proto::Tcp)?;
    s.set_nonblocking(true)?;
    let _ = s.connect(&SockAddr::from(SocketAddr::new(e.cluster.ip(to), port)));
    Ok(s)
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("page_loads_without_console_errors_at_1280x800", |e| {
            load(e)?;
            for tab in ["#tab-verdicts", "#tab-matrix", "#tab-policies", "#tab-map"] {
                e.browser.click(&e.browser.wait_for(tab, Duration::from_secs(2))?)?;
                std::thread::sleep(Duration::from_millis(700));
            }
            let errors = e.browser.console_errors()?;
            ensure!(errors.is_empty(), "the page logged errors: {errors:#?}");
            let size = e.browser.run(
                "return [window.innerWidth, window.innerHeight, document.documentElement.scrollWidth, \
                 document.documentElement.scrollHeight]",
            )?;
            ensure!(size[0] == 1280 && size[1] == 800, "the viewport is not 1280×800: {size}");
            ensure!(size[2] == 1280 && size[3] == 800, "the page does not fit 1280×800: {size}");
            // Keyboard: Tab reaches the tabs, arrows move between them.
            e.browser.run("document.querySelector('#tab-map').focus()")?;
            e.browser.cmd(
                "POST",
                "/actions",
                Some(json!({"actions": [{"type": "key", "id": "kb", "actions": [
                    {"type": "keyDown", "value": "\u{E014}"}, {"type": "keyUp", "value": "\u{E014}"}]}]})),
            )?;
            let active = e.browser.run("return document.activeElement.id")?;
            ensure!(active == "tab-verdicts", "ArrowRight on a tab focuses {active}");
            ensure!(e.browser.find("#view-verdicts:not([hidden])")?.is_some(), "ArrowRight did not show the verdicts");
            // Every namespace is on the map, each workload a node.
            let ids = e.browser.run("return [...document.querySelectorAll('#map .node')].map(n => n.dataset.id)")?;
            for pod in e.cluster.topo.names() {
                let (ns, name) = pod.split_once('/').context("pod id")?;
                let id = format!("{ns}/pod/{name}");
                ensure!(ids.as_array().is_some_and(|a| a.iter().any(|v| v == &json!(id))), "no node {id}: {ids}");
            }
            Ok(())
        }),
        ("denied_connection_is_a_dropped_edge_within_2s_naming_its_policy", |e| {
            e.cluster.apply(&policies())?;
            // Allowed traffic too, for the picture.
            for (from, to) in [("x/a", "z/a"), ("x/a", "z/b"), ("y/a", "x/b"), ("z/c", "y/c")] {
                // The agent's log names any drop: a failure here has been seen once
                // in CI and not explained.
                ensure!(
                    probe::probe(e.cluster.topo.pod(from), e.cluster.ip(to), 80, Proto::Tcp),
                    "{from} -> {to} failed\n{}",
                    e.cluster.log_tail()
                );
            }
            load(e)?;
            let started = Instant::now();
            let _sock = syn(e, "x/a", "y/b", 80)?;
            let edge =
                r#"#map g.edge[data-verdict="DROPPED"][data-source="x/pod/a"][data-target="y/pod/b"] .edge-label"#;
            let label = e.browser.wait_for(edge, Duration::from_secs(2)).with_context(|| {
                let edges =
                    e.browser.run("return [...document.querySelectorAll('#map g.edge')].map(g => g.dataset.id)");
                format!("the map's edges after {:?}: {edges:?}\n{}", started.elapsed(), e.cluster.log_tail())
            })?;
            let took = started.elapsed();
            ensure!(took <= Duration::from_secs(2), "the dropped edge took {took:?}");
            eprintln!("the dropped edge appeared {} ms after the SYN", took.as_millis());
            e.browser.click(&label)?;
            let detail = e.browser.wait_text("#detail", &["y/deny-b", "DROPPED"], Duration::from_secs(3))?;
            e.browser.wait_text("#detail", &["TCP/80: DENIED"], Duration::from_secs(3)).context(detail)?;
            let z = e.browser.run(
                r#"return !!document.querySelector('#map g.edge[data-verdict="ALLOWED"][data-source="x/pod/a"][data-target="z/pod/a"]')"#,
            )?;
            ensure!(z == json!(true), "no allowed edge x/a -> z/a");
            e.browser.screenshot("ui-flow-map.png")?;

            // The verdict tail opens with the recent history, filtered.
            e.browser.open("/")?;
            e.browser.click(&e.browser.wait_for("#tab-verdicts", Duration::from_secs(2))?)?;
            e.browser.run(
                "const f = document.querySelector('#tail-filter'); f.verdict.value = 'dropped'; \
                 f.dispatchEvent(new Event('input'));",
            )?;
            let tail = e.browser.wait_text("#tail", &["DROPPED", "(x/a)", "y/deny-b"], Duration::from_secs(3))?;
            ensure!(!tail.contains("ALLOWED ingress"), "the verdict filter let allowed events through:\n{tail}");
            let errors = e.browser.console_errors()?;
            ensure!(errors.is_empty(), "the page logged errors: {errors:#?}");
            Ok(())
        }),
        ("matrix_agrees_with_trace_on_every_pair", |e| {
            e.cluster.apply(&policies())?;
            ensure!(!probe::probe(e.cluster.topo.pod("x/a"), e.cluster.ip("y/b"), 80, Proto::Tcp));
            ensure!(probe::probe(e.cluster.topo.pod("x/a"), e.cluster.ip("z/a"), 80, Proto::Tcp));
            load(e)?;
            e.browser.click(&e.browser.wait_for("#tab-matrix", Duration::from_secs(2))?)?;
            let agent = e.cluster.agent();
            let names = e.cluster.topo.names();
            for (port, shot) in [(81, None), (80, Some("ui-matrix.png"))] {
                e.browser.run(&format!(
                    "const f = document.querySelector('#matrix-form'); f.port.value = '{port}'; f.requestSubmit();"
                ))?;
                e.browser.wait_text("#matrix-table caption", &[&format!("TCP/{port}")], Duration::from_secs(3))?;
                let cells = e.browser.run(
                    "return [...document.querySelectorAll('#matrix-table td.cell')]\
                     .map(td => [td.dataset.from, td.dataset.to, td.dataset.allowed, td.dataset.mark])",
                )?;
                let cells = cells.as_array().context("cells")?;
                ensure!(cells.len() == names.len() * names.len(), "{} cells for {} pods", cells.len(), names.len());
                let mut denied = 0;
                for c in cells {
                    let (from, to) = (c[0].as_str().unwrap_or(""), c[1].as_str().unwrap_or(""));
                    let t = agent.trace(from, to, port, "TCP", false)?;
                    let shown = c[2] == "true";
                    ensure!(shown == t.allowed, "{from} -> {to} TCP/{port}: the matrix says {shown}, trace:\n{t}");
                    for side in [&t.egress, &t.ingress] {
                        if let Some(k) = &side.kernel {
                            ensure!(k.differences.is_empty(), "the kernel differs: {t}");
                        }
                    }
                    denied += usize::from(!shown);
                }
                ensure!(denied > 0 && denied < cells.len(), "a matrix all one way proves little");
                let mark = |from: &str, to: &str| {
                    cells.iter().find(|c| c[0] == from && c[1] == to).map(|c| c[3].as_str().unwrap_or("").to_string())
                };
                if port == 80 {
                    ensure!(mark("x/a", "y/b").as_deref() == Some("dropped"), "x/a -> y/b was dropped in practice");
                    ensure!(mark("x/a", "z/a").as_deref() == Some("used"), "x/a -> z/a was allowed and used");
                    ensure!(mark("x/b", "x/a").as_deref() == Some("unused"), "x/b -> x/a is allowed and unused");
                    ensure!(mark("x/b", "z/a").as_deref() == Some("denied"));
                }
                if let Some(name) = shot {
                    e.browser.screenshot(name)?;
                }
            }
            // A cell explains itself with trace.
            e.browser
                .click(&e.browser.wait_for(r#"td.cell[data-from="x/a"][data-to="y/b"]"#, Duration::from_secs(1))?)?;
            e.browser.wait_text("#matrix-trace", &["DENIED", "y/deny-b"], Duration::from_secs(3))?;
            Ok(())
        }),
        ("policies_view_lists_what_selects_a_pod", |e| {
            e.cluster.apply(&policies())?;
            load(e)?;
            e.browser.click(&e.browser.wait_for("#tab-policies", Duration::from_secs(2))?)?;
            e.browser.wait_for(r#"#pod-select option[value="z/b"]"#, Duration::from_secs(3))?;
            e.browser.run(
                "const s = document.querySelector('#pod-select'); s.value = 'z/b'; s.dispatchEvent(new Event('change'));",
            )?;
            let text = e.browser.wait_text("#pod-detail", &["z/from-x-on-80"], Duration::from_secs(3))?;
            for needle in ["Ingress: isolated", "Egress: not isolated", "TCP/80", "admits x/a"] {
                ensure!(text.contains(needle), "the policies view lacks {needle:?}:\n{text}");
            }
            Ok(())
        }),
        ("page_and_data_refuse_foreign_host_names", |_| {
            // A page elsewhere whose name resolves to 127.0.0.1 (DNS
            // rebinding) must not read the flows.
            let get = |host: &str| -> Result<String> {
                let mut s = TcpStream::connect(UI)?;
                write!(s, "GET /api/flows HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            };
            let ok = get("127.0.0.1:19470")?;
            ensure!(ok.starts_with("HTTP/1.1 200"), "{ok}");
            let foreign = get("attacker.example:19470")?;
            ensure!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
            if foreign.contains("x/pod/a") {
                bail!("the refusal leaks flows");
            }
            Ok(())
        }),
    ]
}

fn main() {
    palisade_e2e::suite::run(cases())
}
