//! A headless Chromium (Debian's `chromium`, which `cargo xtask setup` installs) in a lab
//! host's namespace, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ending in a NUL byte, commands on its descriptor 3, answers and events on 4),
//! so no debugging port is opened anywhere. Enough of the protocol for the web view's test:
//! load a page, evaluate an expression, take a screenshot.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::Host;

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A running headless Chromium with one page attached.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    commands: File,
    answers: BufReader<File>,
    next: u64,
    session: String,
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is two ints, which pipe2 fills.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Browser {
    /// Starts Chromium in `host`'s namespace, its profile under `dir`, with a 1440×900 window.
    pub fn launch(host: &Host, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let (their_commands, commands) = pipe().map_err(|e| format!("a pipe: {e}"))?;
        let (answers, their_answers) = pipe().map_err(|e| format!("a pipe: {e}"))?;
        let mut command = host
            .command("chromium")
            .map_err(|e| format!("entering {}: {e}", host.netns))?;
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1440,900",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                File::create(dir.join("chromium.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        let (read_fd, write_fd) = (their_commands.as_raw_fd(), their_answers.as_raw_fd());
        // SAFETY: the closure runs in the forked child before exec and only calls fcntl and
        // dup2 on descriptors that are open there: it moves them out of the way of 3 and 4
        // first, then onto 3 and 4 (dup2 leaves the copies without close-on-exec).
        unsafe {
            command.pre_exec(move || {
                let high_read = libc::fcntl(read_fd, libc::F_DUPFD_CLOEXEC, 100);
                let high_write = libc::fcntl(write_fd, libc::F_DUPFD_CLOEXEC, 100);
                if high_read < 0
                    || high_write < 0
                    || libc::dup2(high_read, 3) < 0
                    || libc::dup2(high_write, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting chromium (cargo xtask setup installs it): {e}"))?;
        drop((their_commands, their_answers));
        let mut browser = Browser {
            child,
            commands: File::from(commands),
            answers: BufReader::new(File::from(answers)),
            next: 0,
            session: String::new(),
        };
        let targets = browser.call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .ok_or_else(|| format!("no page among Chromium's targets: {targets}"))?
            .to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": page, "flatten": true }),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| format!("attaching to the page: {attached}"))?
            .to_owned();
        Ok(browser)
    }

    /// Sends one command (to the page once attached) and waits for its answer.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = Value::from(self.session.clone());
        }
        let mut bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .map_err(|e| format!("sending {method} to Chromium: {e}"))?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(format!("no answer to {method} from Chromium"));
            }
            let mut raw = Vec::new();
            let n = self
                .answers
                .read_until(0, &mut raw)
                .map_err(|e| format!("reading Chromium's answer to {method}: {e}"))?;
            if n == 0 {
                return Err(format!("Chromium exited before answering {method}"));
            }
            raw.pop();
            let answer: Value = serde_json::from_slice(&raw).unwrap_or_default();
            if answer["id"].as_u64() != Some(id) {
                // An event, or the answer to another command.
                continue;
            }
            if let Some(error) = answer.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(answer["result"].clone());
        }
    }

    /// Loads `url` in the page.
    pub fn navigate(&mut self, url: &str) -> Result<(), String> {
        self.call("Page.navigate", json!({ "url": url })).map(drop)
    }

    /// The value of a JavaScript expression in the page (JSON-serialisable values).
    pub fn eval(&mut self, expression: &str) -> Result<Value, String> {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        )?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("{expression}: {exception}"));
        }
        Ok(result["result"]["value"].clone())
    }

    /// A PNG of the page as shown, written to `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .map_err(|e| format!("the screenshot's base64: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium's helpers are in its process group only when the lab spawned it; killing
        // the browser makes them exit (their pipes close).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
