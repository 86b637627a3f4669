"""End-to-end chat test with a WebSocket client written outside this project.

Starts the real `botserver` binary on a loopback port with a fresh data
directory, sets up a tenant, a user and the counter bot through the HTTP
API, then chats with Python's `websockets` library: three messages give
1, 2, 3 and a new connection continues with 4. It also checks that a
foreign origin and a reused ticket are rejected before the upgrade.

    python3 scripts/e2e_chat.py --botserver target/debug/botserver \
        --plugins target/plugins

`scripts/test` installs `websockets` into a virtual environment and runs
this script after the Rust tests.
"""

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import websockets

ADMIN_PASSWORD = "e2e admin password 1"
USER_PASSWORD = "e2e user password 1"
STARTUP_TIMEOUT_SECONDS = 60
FRAME_TIMEOUT_SECONDS = 30


class Server:
    """A botserver process and a small HTTP client for its API."""

    def __init__(self, binary, data_dir):
        self.binary = binary
        self.data_dir = data_dir
        self.process = None
        self.base = None

    def bootstrap(self, tenant, username, password):
        subprocess.run(
            [self.binary, "admin", "bootstrap", "--data-dir", self.data_dir,
             "--tenant", tenant, "--username", username],
            input=password + "\n", text=True, check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "serve", "--data-dir", self.data_dir,
             "--listen", "127.0.0.1:0"],
            stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            match = re.search(r"listening on (http://\S+)", line)
            if match:
                self.base = match.group(1)
                # Keep reading stderr, so a full pipe never blocks the server.
                threading.Thread(target=self.process.stderr.read, daemon=True).start()
                return
        raise RuntimeError("botserver did not report its listen address")

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def call(self, method, path, token=None, body=None, raw=None):
        headers = {}
        data = None
        if token is not None:
            headers["authorization"] = "Bearer " + token
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        if raw is not None:
            data = raw
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request) as response:
                text = response.read()
                return response.status, json.loads(text) if text else None
        except urllib.error.HTTPError as error:
            return error.code, None

    def login(self, tenant, username, password):
        status, body = self.call(
            "POST", "/api/v1/auth/login",
            body={"tenant": tenant, "username": username, "password": password})
        check(status == 200, f"login of {username} gave {status}")
        return body["access_token"]

    def ticket(self, token):
        status, body = self.call("POST", "/api/v1/auth/ws-ticket", token=token)
        check(status == 200, f"ws-ticket gave {status}")
        return body["ticket"]

    def ws_url(self, ticket, bot):
        return self.base.replace("http://", "ws://") + f"/ws?ticket={ticket}&bot={bot}"


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def set_up_counter(server, plugins):
    root = server.login("e2e", "root", ADMIN_PASSWORD)
    with open(os.path.join(plugins, "counter.wasm"), "rb") as component:
        status, plugin = server.call(
            "POST", "/api/v1/tenants/e2e/plugins?name=counter&version=1.0.0",
            token=root, raw=component.read())
    check(status in (200, 201), f"upload gave {status}")
    digest = plugin["digest"]
    status, _ = server.call(
        "PUT", f"/api/v1/tenants/e2e/plugins/{digest}/grants", token=root,
        body={"kv": {"quota_bytes": 65536}})
    check(status == 200, f"grant gave {status}")
    status, _ = server.call(
        "POST", "/api/v1/tenants/e2e/bots", token=root,
        body={"name": "counter", "plugin_digest": digest, "enabled": True})
    check(status == 201, f"bot creation gave {status}")
    status, _ = server.call(
        "POST", "/api/v1/tenants/e2e/users", token=root,
        body={"username": "alice", "password": USER_PASSWORD, "role": "user"})
    check(status == 201, f"user creation gave {status}")


async def receive(socket):
    return json.loads(await asyncio.wait_for(socket.recv(), FRAME_TIMEOUT_SECONDS))


async def count_three_then_one_more(server, token):
    origin = server.base
    async with websockets.connect(
            server.ws_url(server.ticket(token), "counter"), origin=origin) as socket:
        connected = await receive(socket)
        check(connected["type"] == "connected", f"first frame was {connected}")
        greeting = await receive(socket)
        check(greeting["message_type"] == 2, f"greeting was {greeting}")
        for expected in ("1", "2", "3"):
            await socket.send(json.dumps({"content": "count", "message_type": 1}))
            reply = await receive(socket)
            check(reply["content"] == expected, f"expected {expected}, got {reply}")
            check(reply["is_complete"] is True, f"reply not complete: {reply}")

    async with websockets.connect(
            server.ws_url(server.ticket(token), "counter"), origin=origin) as socket:
        await receive(socket)
        await receive(socket)
        await socket.send(json.dumps({"content": "count", "message_type": 1}))
        reply = await receive(socket)
        check(reply["content"] == "4", f"expected 4 after reconnecting, got {reply}")


async def expect_rejected(url, origin, status):
    try:
        async with websockets.connect(url, origin=origin):
            pass
    except websockets.exceptions.InvalidStatus as error:
        got = error.response.status_code
        check(got == status, f"expected {status} for {url} from {origin}, got {got}")
        return
    raise AssertionError(f"the upgrade from {origin} was accepted")


async def rejections(server, token):
    ticket = server.ticket(token)
    url = server.ws_url(ticket, "counter")
    await expect_rejected(url, "https://evil.test", 403)
    async with websockets.connect(url, origin=server.base) as socket:
        await receive(socket)
    await expect_rejected(url, server.base, 401)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--botserver", required=True)
    parser.add_argument("--plugins", required=True)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as data_dir:
        server = Server(os.path.abspath(args.botserver), os.path.join(data_dir, "data"))
        server.bootstrap("e2e", "root", ADMIN_PASSWORD)
        server.start()
        try:
            set_up_counter(server, args.plugins)
            token = server.login("e2e", "alice", USER_PASSWORD)
            asyncio.run(count_three_then_one_more(server, token))
            asyncio.run(rejections(server, token))
        finally:
            server.stop()
    print("e2e chat: counter answered 1, 2, 3, then 4 after reconnecting; "
          "foreign origin and reused ticket rejected")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"e2e chat failed: {error}", file=sys.stderr)
        sys.exit(1)
