#!/usr/bin/env python3
"""The login-then-chat journey as a bare WebDriver script: figure 6's baseline.

It makes the WebDriver calls of `journeys/movie-guru.yaml`, and nothing else, against
chromedriver's W3C HTTP API: no DevTools instrumentation, no browser or performance
logs, no page-state reads. The steps and waits are those of `bare_login_then_chat` in
tests/tests/browser.rs. Each run gets a new session with a fresh, empty profile and the
agent's Chromium flags (agent/src/probes/browser/driver.rs). It times what the agent
reports:

- `login`: from before the new-session request until the chat box is there (the agent's
  first step includes its session start too);
- `chat`: from typing the message until the answer (or the error) is shown;
- `total`: the whole run, up to chromedriver's answer to the session's DELETE.

Removing the profile afterwards is timed on its own (`profile_rm`) and is not part of
`total`.

    bench/bare_webdriver.py --app http://127.0.0.1:8080 [--webdriver URL] [--runs N]
    bench/bare_webdriver.py --app URL --parallel 2 --duration 60 [--warmup 5]

Without --webdriver it starts its own chromedriver (--chromedriver, default
/usr/bin/chromedriver) on a free loopback port and stops it at the end. It prints one
JSON object per run, or, with --parallel, one summary: K sessions at a time, each
starting its next run as soon as the last one ended, counted over --duration seconds
once each of the K has been through a run and --warmup seconds have passed. Only the
standard library is used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

# The flags the agent starts Chromium with, so the comparison is like for like.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-quic",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--window-size=1280,900",
]

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
USER = "probe@example.com"
MESSAGE = "a fantasy movie"
ENTER = "\ue007"
# The waits of the Rust test's bare script: poll every 50 ms, give up after 15 s.
POLL = 0.05
WAIT = 15.0
# No WebDriver call may hang a run: the page load and the waits are far shorter.
HTTP_TIMEOUT = 60.0


class WebDriverError(Exception):
    def __init__(self, status: int, error: str, message: str):
        super().__init__(f"{status} {error}: {message[:300]}")
        self.error = error


class Client:
    """One keep-alive HTTP connection to the WebDriver server."""

    def __init__(self, base: str):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"} if data is not None else {}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT)
            try:
                self.conn.request(method, self.prefix + path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A keep-alive connection the server closed while idle: once more, fresh.
                self.close()
                if attempt:
                    raise
        value = json.loads(raw or b"null")
        value = value.get("value") if isinstance(value, dict) else value
        if r.status >= 400:
            v = value if isinstance(value, dict) else {}
            raise WebDriverError(r.status, v.get("error", ""), v.get("message", str(value)))
        return value

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Session:
    def __init__(self, client: Client, chromium: str | None, profile: str):
        chrome: dict = {"args": CHROMIUM_ARGS + [f"--user-data-dir={profile}"]}
        if chromium:
            chrome["binary"] = chromium
        caps = {"browserName": "chrome", "goog:chromeOptions": chrome}
        v = client.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.c, self.id = client, v["sessionId"]

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self.c.call(method, f"/session/{self.id}{path}", body)

    def find(self, using: str, value: str) -> str:
        return self.cmd("POST", "/element", {"using": using, "value": value})[ELEMENT]

    def find_all(self, css: str) -> list:
        return self.cmd("POST", "/elements", {"using": "css selector", "value": css})

    def wait_css(self, css: str) -> str:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return self.find("css selector", css)
            except WebDriverError as e:
                if e.error != "no such element" or time.monotonic() >= deadline:
                    raise
            time.sleep(POLL)

    def clear(self, el: str) -> None:
        self.cmd("POST", f"/element/{el}/clear", {})

    def send_keys(self, el: str, text: str) -> None:
        self.cmd("POST", f"/element/{el}/value", {"text": text})

    def click(self, el: str) -> None:
        self.cmd("POST", f"/element/{el}/click", {})

    def delete(self) -> None:
        self.c.call("DELETE", f"/session/{self.id}")


def kill_profile_processes(profile: str) -> int:
    """Kills what still names this profile (a Chromium tree whose session was cut short);
    returns how many were alive. Only processes started for this profile match."""
    alive = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if profile in cmd:
            alive += 1
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
    return alive


def remove_profile(profile: str) -> None:
    for _ in range(30):
        if kill_profile_processes(profile) == 0:
            break
        time.sleep(0.1)
    for _ in range(20):
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def login_then_chat(client: Client, app: str, chromium: str | None, profiles: str) -> dict:
    """One run: {login, chat, total, profile_rm} in seconds, or {error}."""
    profile = tempfile.mkdtemp(prefix="bare-chromium-", dir=profiles)
    out: dict = {}
    s = None
    try:
        start = time.perf_counter()
        s = Session(client, chromium, profile)
        s.cmd("POST", "/url", {"url": f"{app}/"})
        email = s.wait_css('input[type="text"]')
        s.clear(email)
        s.send_keys(email, USER)
        s.click(s.find("xpath", "//button[normalize-space()='Sign in']"))
        chat = s.wait_css('input[placeholder^="Type your message"]')
        out["login"] = time.perf_counter() - start
        t = time.perf_counter()
        s.clear(chat)
        s.send_keys(chat, MESSAGE + ENTER)
        s.wait_css("#chat-container > div.flex-col > div.self-start, #error_message")
        out["chat"] = time.perf_counter() - t
        if s.find_all("#error_message"):
            out["error"] = "the chat failed (#error_message is shown)"
        sess, s = s, None
        sess.delete()
        out["total"] = time.perf_counter() - start
    except (OSError, WebDriverError, KeyError, TypeError, ValueError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        if s is not None:
            try:
                s.delete()
            except (OSError, WebDriverError, ValueError):
                client.close()
        t = time.perf_counter()
        remove_profile(profile)
        out["profile_rm"] = time.perf_counter() - t
    out["ended"] = time.monotonic()
    return out


def parallel(args, base: str) -> dict:
    """K sessions at a time, back to back. The measured window starts once K runs have
    ended (every session slot has been through a whole run) and at least --warmup
    seconds have passed, and lasts --duration seconds; a line {"window": "start"} on
    stdout marks its start. Counts the runs that ended inside it. No run starts after the
    window; the ones under way then still finish and close their sessions."""
    t0 = time.monotonic()
    window = {"w0": float("inf"), "w1": float("inf")}
    runs: list[dict] = []
    lock = threading.Lock()
    changed = threading.Condition(lock)

    def worker():
        client = Client(base)
        try:
            while time.monotonic() < window["w1"]:
                r = login_then_chat(client, args.app, args.chromium, args.profiles)
                with changed:
                    runs.append(r)
                    changed.notify_all()
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.parallel)]
    for t in threads:
        t.start()
    # A run is bounded by its waits and HTTP_TIMEOUT, so the warm-up is bounded too.
    give_up = t0 + args.warmup + 120
    with changed:
        while (len(runs) < args.parallel or time.monotonic() < t0 + args.warmup) \
                and time.monotonic() < give_up:
            changed.wait(timeout=0.1)
        now = time.monotonic()
        window["w0"], window["w1"] = now, now + args.duration
    print(json.dumps({"window": "start"}), flush=True)
    for t in threads:
        t.join(timeout=args.duration + 120)
    w0, w1 = window["w0"], window["w1"]
    inside = [r for r in runs if w0 <= r["ended"] < w1]
    ok = [r for r in inside if "error" not in r]
    return {"parallel": args.parallel, "window": args.duration, "completed": len(ok),
            "failed": len(inside) - len(ok), "per_minute": len(ok) * 60 / args.duration,
            "mean_total": sum(r["total"] for r in ok) / len(ok) if ok else None,
            "warmup": w0 - t0, "runs": runs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chromedriver(path: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    p = subprocess.Popen([path, f"--port={port}"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if Client(base).call("GET", "/status").get("ready"):
                return p, base
        except (OSError, ValueError, WebDriverError):
            pass
        time.sleep(0.05)
    p.kill()
    p.wait()
    raise SystemExit(f"{path} did not become ready within 15 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--app", required=True, help="the frontend's base URL")
    ap.add_argument("--webdriver", help="a running chromedriver (default: start one)")
    ap.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    ap.add_argument("--chromium", default="/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    ap.add_argument("--profiles", default=None, help="where the fresh profiles go (default: the temp dir)")
    ap.add_argument("--runs", type=int, default=1, help="sequential runs (default 1)")
    ap.add_argument("--parallel", type=int, default=0, help="sessions at a time, for --duration")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="least seconds before the window")
    args = ap.parse_args()
    args.app = args.app.rstrip("/")
    args.profiles = args.profiles or tempfile.gettempdir()
    own = None
    if args.webdriver:
        base = args.webdriver.rstrip("/")
    else:
        own, base = start_chromedriver(args.chromedriver)
    failed = 0
    try:
        if args.parallel:
            r = parallel(args, base)
            failed = r["failed"]
            print(json.dumps(r), flush=True)
        else:
            client = Client(base)
            for _ in range(max(1, args.runs)):
                r = login_then_chat(client, args.app, args.chromium, args.profiles)
                failed += "error" in r
                print(json.dumps(r), flush=True)
            client.close()
    finally:
        if own is not None:
            own.terminate()
            try:
                own.wait(timeout=5)
            except subprocess.TimeoutExpired:
                own.kill()
                own.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
