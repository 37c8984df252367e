"""Load a page in a real headless Chromium over the DevTools protocol (aiohttp websocket, no extra
dependency): console errors, uncaught exceptions, failed loads, every network request, a screenshot.

CI installs Chromium (``.ci/run``); elsewhere tests using it skip when no Chromium binary exists.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
    "--window-size=1280,1600", "--remote-debugging-port=0", "--remote-allow-origins=*",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    console: list[dict[str, Any]] = field(default_factory=list)  # {"level", "text"}
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    evaluated: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""

    @property
    def errors(self) -> list[str]:
        return [c["text"] for c in self.console if c["level"] == "error"] + self.exceptions + self.failed


class _Session:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()

    async def reader(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.loaded.set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(future, timeout=30)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})


async def _drive(port: int, url: str, expressions: dict[str, str], settle_s: float) -> PageLoad:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            session = _Session(ws)
            reader = asyncio.create_task(session.reader())
            for domain in ("Page", "Runtime", "Log", "Network"):
                await session.call(f"{domain}.enable")
            await session.call("Page.navigate", url=url)
            await asyncio.wait_for(session.loaded.wait(), timeout=30)
            await asyncio.sleep(settle_s)
            out = PageLoad()
            for name, expression in expressions.items():
                result = await session.call("Runtime.evaluate", expression=expression, returnByValue=True)
                out.evaluated[name] = result.get("result", {}).get("value")
            shot = await session.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
            out.screenshot = base64.b64decode(shot["data"])
            reader.cancel()
    for event in session.events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            out.console.append({"level": "error" if params.get("type") in ("error", "assert") else params.get("type"), "text": text})
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            out.console.append({"level": entry.get("level"), "text": entry.get("text", "")})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            out.exceptions.append(details.get("exception", {}).get("description") or details.get("text", "exception"))
        elif method == "Network.requestWillBeSent":
            out.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            out.failed.append(f"load failed: {params.get('errorText')} ({params.get('type')})")
    return out


def load_page(path: Path, expressions: dict[str, str] | None = None, settle_s: float = 1.0, timeout: float = 60) -> PageLoad:
    """Open ``path`` in a fresh headless Chromium (own profile dir), return what happened."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError("no Chromium binary (apt-get install chromium)")
    profile = tempfile.mkdtemp(prefix="rdg-chromium-")
    process = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        active = Path(profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not (active.exists() and active.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit {process.poll()})")
            time.sleep(0.2)
        port = int(active.read_text().splitlines()[0])
        return asyncio.run(_drive(port, Path(path).resolve().as_uri(), expressions or {}, settle_s))
    finally:
        import os
        import signal

        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(profile, ignore_errors=True)


def blank_fraction(png: bytes) -> float:
    """Fraction of the screenshot's pixels equal to its most common colour (1.0 = blank)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    return float(counts.max() / len(pixels))
