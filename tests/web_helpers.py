"""What the labelling page's tests share: a small store with frame clips, the server program, Chromium."""

import contextlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gymnasium import spaces

from gym_prefs import PreferenceStore
from gym_prefs.clips import ClipInfo
from gym_prefs.records import SegmentPairs

TOKEN = "s3cret-token"
AUTH = {"X-Token": TOKEN}
LENGTH, HEIGHT, WIDTH, FPS = 6, 7, 9, 50.0  # 50 fps clips play every 2nd step: 3 frames
FRAMES = 3
QUERIES = 4

#: Flags for Chromium as root on a machine with no network but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def random_pairs(queries, seed=0):
    """``queries`` pairs of random frame clips, as a training run would record them."""
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (queries, 2, LENGTH, HEIGHT, WIDTH, 3), dtype=np.uint8)
    obs = np.zeros((queries, 2, LENGTH, 3), np.float32)
    return SegmentPairs(obs, np.zeros((queries, 2, LENGTH, 1), np.float32), obs[..., 0], clips)


def make_store(path, queries=QUERIES, total_labels=10):
    """A store of ``queries`` pending queries with frame clips; returns their ids and the clips."""
    store = PreferenceStore(path, spaces.Box(-1, 1, (3,)), spaces.Box(-2, 2, (1,)), LENGTH, env_id="Test-v0")
    store.set_meta("clips", ClipInfo("frame", (HEIGHT, WIDTH, 3), "uint8", fps=FPS).to_json())
    store.set_meta("instruction", "balance the pole")
    store.set_meta("total_labels", str(total_labels))
    pairs = random_pairs(queries)
    ids = store.add_queries(pairs, source="web") if queries else []
    store.close()
    return ids, pairs.clips


def make_mujoco_store(path, length=LENGTH, queries=1, instruction="run forward"):
    """A HalfCheetah store of ``queries`` pending queries whose clips are simulator states."""
    import gymnasium as gym

    from gym_prefs.clips import capture_clip, clip_info_for

    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    env.action_space.seed(0)
    info = clip_info_for(env)
    states = []
    for _ in range(2 * length * queries):
        env.step(env.action_space.sample())
        states.append(capture_clip(env, info))
    env.close()
    store = PreferenceStore(path, env.observation_space, env.action_space, length, env_id="HalfCheetah-v5")
    store.set_meta("clips", info.to_json())
    store.set_meta("instruction", instruction)
    store.set_meta("total_labels", "700")
    obs = np.zeros((queries, 2, length, *env.observation_space.shape), np.float32)
    clips = np.asarray(states).reshape(queries, 2, length, -1)
    ids = store.add_queries(SegmentPairs(obs, np.zeros((queries, 2, length, 6), np.float32), obs[..., 0], clips), "web")
    store.close()
    return ids


@contextlib.contextmanager
def serving(store_path, *options):
    """The server program on a free port; yields the page's address."""
    server = subprocess.Popen(
        [sys.executable, "-m", "gym_prefs.web", str(store_path), "--port", "0", "--token", TOKEN, *options],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        assert " at " in line, f"the server printed no address: {line!r}"
        yield line.split(" at ")[1].strip()
    finally:
        server.terminate()
        server.wait(timeout=20)


@contextlib.contextmanager
def chromium():
    """A headless Chromium (the system's, when installed); skips the test when there is none."""
    playwright = pytest.importorskip("playwright.sync_api")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    manager = playwright.sync_playwright().start()
    try:
        try:
            # The system's browser: the registry's own downloads are often unreachable.
            browser = manager.chromium.launch(executable_path=path, args=CHROMIUM_ARGS) if path else None
            browser = browser or manager.chromium.launch()
        except Exception as error:
            pytest.skip(f"no Chromium for the browser test ({error})")
        try:
            yield browser
        finally:
            browser.close()
    finally:
        manager.stop()


def leased_ids(page):
    """Query ids the server leases to ``page`` (from /api/next responses)."""
    ids = []

    def note(response):
        if response.url.endswith("/api/next") and response.ok and "query_id" in response.json():
            ids.append(response.json()["query_id"])

    page.on("response", note)
    return ids


def sign_in(page, url, person="ann"):
    """Open the page and give ``person``'s name (the page then asks for its first pair)."""
    page.goto(url)
    page.fill("#person", person)
    page.click("#who button")


def start_labelling(page, url, person="ann", timeout=30000):
    """Open the page as ``person`` and wait up to ``timeout`` ms for the first pair."""
    sign_in(page, url, person)
    page.wait_for_function("document.getElementById('pair').hidden === false", timeout=timeout)
