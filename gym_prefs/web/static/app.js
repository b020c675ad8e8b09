// The labelling page: plays two clips in step, sends the person's answer, shows the next pair.
//
// A pair is leased from the server (/api/next) and held in one of two slots: the pair shown and
// the pair fetched ahead (with its images), so that the next pair appears as soon as an answer
// is acknowledged. An answer counts only once the server has committed it; a failed request is
// retried with the same answer, which the server never counts twice.
"use strict";

(() => {
  const token = new URLSearchParams(location.search).get("token") || "";
  const pageId = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");
  const SPEEDS = [1, 0.5, 0.25];
  const LABEL_OF_KEY = { ArrowLeft: "first", ArrowRight: "second", ArrowUp: "equal", ArrowDown: "skip" };
  const TARGET_SIDE = 400; // pixels a clip is scaled up to
  const $ = (id) => document.getElementById(id);

  // Seconds from an acknowledged answer to the next pair's first frame drawn, for browser tests.
  window.gymPrefsTimings = [];
  window.gymPrefsFramesShown = 0;

  const state = {
    person: localStorage.getItem("gymPrefsPerson") || "",
    current: null, // {meta, first, second, slot}
    ahead: null, // a Promise of the next pair (or of {waiting} / {done})
    freeSlot: 0,
    drawn: false,
    sending: false,
    shownAt: 0,
    answeredAt: null,
    playhead: 0,
    lastTick: null,
    paused: false,
    speed: 0,
    renewTimer: null,
    answerTimes: [], // when this page's answers were acknowledged (pace per minute)
  };

  function headers() {
    return { "X-Token": token, "Content-Type": "application/json" };
  }

  async function api(path, body) {
    const options = body === undefined ? { headers: headers() } : { method: "POST", headers: headers(), body: JSON.stringify(body) };
    const response = await fetch(path, options);
    let data = {};
    try {
      data = await response.json();
    } catch (error) {
      data = { error: `the server answered ${response.status} without JSON` };
    }
    return { status: response.status, data };
  }

  function say(text) {
    $("message").textContent = text || "";
  }

  async function bitmap(url) {
    const response = await fetch(url, { headers: { "X-Token": token } });
    if (!response.ok) throw new Error(`clip ${url}: ${response.status}`);
    return createImageBitmap(await response.blob());
  }

  // Lease a pair into a slot and fetch both its images.
  async function fetchPair(slot) {
    const { status, data } = await api("/api/next", { person: state.person, page: pageId, slot });
    if (status !== 200) throw new Error(data.error || `next: ${status}`);
    if (data.done || data.waiting) return data;
    const [first, second] = await Promise.all([bitmap(data.first), bitmap(data.second)]);
    return { meta: data, first, second, slot };
  }

  function fetchAhead() {
    const slot = state.freeSlot;
    state.freeSlot = 1 - slot;
    state.ahead = fetchPair(slot).catch((error) => ({ error, slot }));
  }

  async function showNext() {
    if (!state.ahead) fetchAhead();
    const slow = setTimeout(() => say("Loading the next pair…"), 300);
    const next = await state.ahead;
    clearTimeout(slow);
    state.ahead = null;
    if (next.error || next.waiting || next.done) {
      state.freeSlot = next.slot !== undefined ? next.slot : state.freeSlot; // the slot holds nothing
      state.current = null;
      $("pair").hidden = true;
      if (next.done) {
        say("All labels are in. Thank you!");
        return;
      }
      say(next.waiting ? "Waiting for the training to ask for more labels…" : `Cannot reach the server (${next.error.message}); retrying…`);
      setTimeout(showNext, 2000);
      return;
    }
    state.current = next;
    if (state.renewTimer === null) {
      // Renew three times a lease: a page that looks at a pair for long keeps it.
      state.renewTimer = setInterval(renewLeases, Math.max(1000, (next.meta.expires_in * 1000) / 3));
    }
    state.drawn = false;
    state.playhead = 0;
    say("");
    $("pair").hidden = false;
    sizeCanvases(next.meta);
    fetchAhead(); // while the person looks at this pair
  }

  function sizeCanvases(meta) {
    const scale = TARGET_SIDE / Math.max(meta.width, meta.height);
    for (const id of ["left", "right"]) {
      const canvas = $(id);
      canvas.width = Math.round(meta.width * scale);
      canvas.height = Math.round(meta.height * scale);
      const context = canvas.getContext("2d");
      // Small frames (Atari screens) stay sharp; large rendered ones are smoothed.
      context.imageSmoothingEnabled = scale < 2;
    }
  }

  function drawFrame(now) {
    const pair = state.current;
    if (pair) {
      const meta = pair.meta;
      if (state.lastTick !== null && !state.paused) {
        state.playhead += ((now - state.lastTick) / 1000) * meta.fps * SPEEDS[state.speed];
      }
      const index = Math.floor(state.playhead) % meta.frames;
      if (index !== state.lastIndex) {
        // Clip frames put on screen, for measuring the frame rate a person sees.
        window.gymPrefsFramesShown += 1;
        state.lastIndex = index;
      }
      for (const [id, image] of [["left", pair.first], ["right", pair.second]]) {
        const canvas = $(id);
        canvas.getContext("2d").drawImage(image, 0, index * meta.height, meta.width, meta.height, 0, 0, canvas.width, canvas.height);
      }
      if (!state.drawn) {
        state.drawn = true;
        state.shownAt = now;
        if (state.answeredAt !== null) {
          window.gymPrefsTimings.push({ query_id: meta.query_id, seconds: (now - state.answeredAt) / 1000 });
          state.answeredAt = null;
        }
      }
    }
    state.lastTick = now;
    requestAnimationFrame(drawFrame);
  }

  // Send one answer until the server acknowledges it (a retry is never counted twice).
  async function send(body) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        const result = await api("/api/answer", body);
        if (result.status < 500) return result;
      } catch (error) {
        // the network failed: the same answer again
      }
      say("Cannot reach the server; sending your answer again…");
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * 2 ** attempt)));
    }
  }

  async function answer(label) {
    const pair = state.current;
    if (!pair || !state.drawn || state.sending) return; // only a pair the person has seen
    state.sending = true;
    setAnswerButtons(false);
    const seconds = (performance.now() - state.shownAt) / 1000;
    const { status, data } = await send({
      query_id: pair.meta.query_id,
      label,
      lease: pair.meta.lease,
      person: state.person,
      seconds,
    });
    state.freeSlot = pair.slot; // the answer gave the lease back
    // The answered pair stays on screen until the next one is ready, but is no longer answerable:
    // a key pressed meanwhile must not send a second answer for it.
    state.current = null;
    if (status === 200) state.answerTimes.push(performance.now());
    state.answeredAt = performance.now();
    await showNext();
    if (status !== 200) say(status === 409 ? `Not counted: ${data.error}` : `The server refused the answer: ${data.error}`);
    state.sending = false;
    setAnswerButtons(true);
    refreshStatus();
  }

  function setAnswerButtons(enabled) {
    for (const button of document.querySelectorAll(".answers button")) button.disabled = !enabled;
  }

  async function refreshStatus() {
    try {
      const { status, data } = await api(`/api/status?person=${encodeURIComponent(state.person)}`);
      if (status !== 200) return;
      if (data.instruction) $("instruction").textContent = data.instruction;
      const counts = data.counts;
      const budget = data.budget ? ` / ${data.budget}` : "";
      const recent = state.answerTimes.filter((t) => performance.now() - t < 300000);
      const minutes = recent.length ? Math.max(1 / 60, (performance.now() - recent[0]) / 60000) : 0;
      const pace = minutes ? (recent.length / minutes).toFixed(1) : "–";
      const agreement = data.agreement === null ? "" : ` · agreement ${(100 * data.agreement).toFixed(0)}%`;
      $("progress").textContent =
        `labels ${counts.labels}${budget} · waiting ${counts.pending} · ${data.person}: ${data.person_count} (${pace}/min)${agreement}`;
    } catch (error) {
      $("progress").textContent = "cannot reach the server";
    }
  }

  // Keep the leases of the pair shown and the pair ahead alive while the person looks.
  async function renewLeases() {
    const held = [state.current];
    const ahead = state.ahead;
    if (ahead) held.push(await Promise.race([ahead, Promise.resolve(null)]));
    for (const pair of held) {
      if (!pair || !pair.meta) continue;
      const body = { query_id: pair.meta.query_id, lease: pair.meta.lease, person: state.person, page: pageId, slot: pair.slot };
      api("/api/renew", body).catch(() => {});
    }
  }

  function onKey(event) {
    if (!$("who").hidden) return;
    if (event.key in LABEL_OF_KEY) {
      event.preventDefault();
      answer(LABEL_OF_KEY[event.key]);
    } else if (event.key === " ") {
      event.preventDefault();
      togglePause();
    } else if (event.key === "r") {
      state.playhead = 0;
    } else if (event.key === "s") {
      cycleSpeed();
    }
  }

  function togglePause() {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "play" : "pause";
  }

  function cycleSpeed() {
    state.speed = (state.speed + 1) % SPEEDS.length;
    $("speed").textContent = `speed ${SPEEDS[state.speed]}×`;
  }

  function start() {
    $("who").hidden = true;
    refreshStatus();
    setInterval(refreshStatus, 3000);
    showNext();
    requestAnimationFrame(drawFrame);
  }

  $("who").addEventListener("submit", (event) => {
    event.preventDefault();
    state.person = $("person").value.trim().slice(0, 64);
    if (!state.person) return;
    localStorage.setItem("gymPrefsPerson", state.person);
    start();
  });
  $("rename").addEventListener("click", (event) => {
    event.preventDefault();
    localStorage.removeItem("gymPrefsPerson");
    location.reload();
  });
  for (const button of document.querySelectorAll(".answers button")) {
    button.addEventListener("click", () => answer(button.dataset.label));
  }
  $("pause").addEventListener("click", togglePause);
  $("replay").addEventListener("click", () => (state.playhead = 0));
  $("speed").addEventListener("click", cycleSpeed);
  document.addEventListener("keydown", onKey);
  window.addEventListener("pagehide", () => {
    // Give this page's leases back at once, so that others get its pairs without waiting.
    fetch("/api/release", { method: "POST", keepalive: true, headers: headers(), body: JSON.stringify({ person: state.person, page: pageId }) });
  });

  if (!token) {
    say("This page needs its access token: open the address the labelling server printed (…/?token=…).");
  } else if (state.person) {
    start();
  } else {
    $("who").hidden = false;
    $("person").focus();
  }
})();
