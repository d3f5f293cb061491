// Lamplighter switchboard: follows /events (server-sent events) and keeps
// one tile per user; the browser's EventSource reconnects by itself and
// each new connection starts with a full snapshot.
"use strict";

const LABELS = {
  idle: "Idle", ringing: "Ringing", dialing: "Calling", busy: "In a call",
  held: "On hold", dnd: "Do not disturb", offline: "Unavailable",
};
const ACTIVITIES = {
  dnd: "Do not disturb", away: "Away", meeting: "In a meeting", meal: "At lunch",
  vacation: "On vacation", busy: "Busy", "on-the-phone": "On the phone", appointment: "Appointment",
  holiday: "On holiday", travel: "Travelling", "in-transit": "In transit",
};

const users = new Map(); // id → user view from the server
const tiles = new Map(); // id → tile element
let clockSkew = 0; // server clock minus ours, in ms
let auth = load();

const $ = (sel, root = document) => root.querySelector(sel);
const board = $("#board");
const filter = $("#filter");

function load() {
  try { return JSON.parse(sessionStorage.getItem("lamplighter.auth")) || null; } catch { return null; }
}

function save(a) {
  const audience = (x) => x ? (x.admin ? "admin" : x.tenant || "") : "";
  const reconnect = audience(auth) !== audience(a);
  auth = a;
  if (a) sessionStorage.setItem("lamplighter.auth", JSON.stringify(a));
  else sessionStorage.removeItem("lamplighter.auth");
  showSignIn();
  for (const u of users.values()) fill(tiles.get(u.id), u);
  // A tenant's page shows its people only once signed in with its token.
  if (reconnect) connect();
}

function groupOf(u) { return (u.groups && u.groups[0]) || ""; }

function byExtension(a, b) {
  const ea = (a.extensions && a.extensions[0]) || a.id, eb = (b.extensions && b.extensions[0]) || b.id;
  return ea.localeCompare(eb, undefined, { numeric: true }) || a.name.localeCompare(b.name);
}

// render rebuilds the board from users: groups in name order (ungrouped
// last), users by extension. Tiles are reused.
function render() {
  const groups = new Map();
  for (const u of [...users.values()].sort(byExtension)) {
    const g = groupOf(u);
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g).push(u);
  }
  const names = [...groups.keys()].sort((a, b) => (a === "") - (b === "") || a.localeCompare(b));
  const named = names.some((n) => n !== "");
  board.replaceChildren();
  if (users.size === 0) {
    board.innerHTML = '<p class="empty">No users in the directory.</p>';
    return;
  }
  for (const name of names) {
    const section = document.createElement("section");
    section.className = "group";
    section.dataset.group = name;
    if (named) {
      const h = document.createElement("h2");
      h.textContent = name || "Others";
      section.append(h);
    }
    const grid = document.createElement("div");
    grid.className = "grid";
    grid.setAttribute("role", "list");
    for (const u of groups.get(name)) {
      let tile = tiles.get(u.id);
      if (!tile) {
        tile = $("#tile").content.firstElementChild.cloneNode(true);
        wire(tile, u.id);
        tiles.set(u.id, tile);
      }
      fill(tile, u);
      grid.append(tile);
    }
    section.append(grid);
    board.append(section);
  }
  applyFilter();
}

function party(p) {
  if (!p) return "";
  if (p.name && p.number && p.name !== p.number) return `${p.name} (${p.number})`;
  return p.name || p.number || "";
}

function callText(u) {
  const c = u.calls && u.calls[0];
  if (!c) return "";
  const who = party(c.remote) || "unknown";
  if (c.held) return `Held · ${who}`;
  if (c.state !== "confirmed") return c.direction === "incoming" ? `From ${who}` : `To ${who}`;
  return `With ${who}`;
}

function personText(u) {
  const p = u.person || {};
  const note = p.note || "";
  // A note that names the activity itself (a calendar's "In a meeting
  // until 13:00") stands for it, and for its end.
  const parts = (p.activities || []).map((a) => ACTIVITIES[a] || a).filter((label) => !note.startsWith(label));
  if (note) parts.push(`“${note}”`);
  const end = p.until || p.expires;
  if (parts.length && end && !note.includes("until")) {
    parts.push("until " + new Date(end).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  }
  return parts.join(" · ");
}

// mayEdit: the API token sets anyone's state, a tenant's token its
// people's (the only ones its page shows), a user their own.
function mayEdit(u) { return !!auth && (auth.admin || auth.user === u.id || (!auth.user && !!auth.tenant)); }

function apiDND(u) { return !!(u.set_by_api && u.set_by_api.activities.includes("dnd")); }

// fill writes a user's state into their tile.
function fill(tile, u) {
  if (!tile) return;
  const state = LABELS[u.state] ? u.state : "offline";
  tile.dataset.user = u.id;
  tile.dataset.state = state;
  tile.dataset.search = [u.name, u.id, ...(u.extensions || [])].join(" ").toLowerCase();
  $(".name", tile).textContent = u.name;
  $(".ext", tile).textContent = (u.extensions || []).join(", ");
  $(".label", tile).textContent = LABELS[state];
  const call = callText(u);
  $(".call", tile).hidden = !call;
  $(".remote", tile).textContent = call;
  tick(tile, u);
  const person = personText(u);
  $(".person", tile).hidden = !person;
  $(".person", tile).textContent = person;
  const controls = $(".controls", tile);
  controls.hidden = !mayEdit(u);
  const dnd = $(".dnd", tile);
  dnd.textContent = apiDND(u) ? "End do not disturb" : "Do not disturb";
  dnd.setAttribute("aria-pressed", String(apiDND(u)));
  tile.setAttribute("aria-label", `${u.name}, ${(u.extensions || []).join(", ")}: ${LABELS[state]}` +
    (call ? `, ${call}` : "") + (person ? `, ${person}` : ""));
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = String(m).padStart(h ? 2 : 1, "0"), ss = String(r).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

// tick updates a tile's call duration (talking time once answered,
// ringing time before).
function tick(tile, u) {
  const c = u.calls && u.calls[0];
  const since = c && (c.answered || c.started);
  $(".duration", tile).textContent = since ? duration(Date.now() + clockSkew - Date.parse(since)) : "";
}

function applyFilter() {
  const q = filter.value.trim().toLowerCase();
  let shown = 0;
  for (const section of board.querySelectorAll(".group")) {
    let any = false;
    for (const tile of section.querySelectorAll(".tile")) {
      const match = !q || tile.dataset.search.includes(q);
      tile.hidden = !match;
      any ||= match;
      shown += match;
    }
    section.hidden = !any;
  }
  $("#nomatch").hidden = shown > 0 || users.size === 0;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  if (auth && auth.token) h.Authorization = "Bearer " + auth.token;
  else if (auth && auth.basic) h.Authorization = "Basic " + auth.basic;
  return h;
}

async function setPresence(id, body) {
  const res = await fetch(`/api/v1/users/${encodeURIComponent(id)}/presence`, {
    method: body ? "PUT" : "DELETE", headers: headers(), body: body ? JSON.stringify(body) : undefined,
  });
  if (res.status === 401) { save(null); alert("Please sign in again."); return; }
  if (!res.ok) {
    const e = await res.json().catch(() => ({}));
    alert(e.error || `Could not set the status (${res.status}).`);
  }
}

function wire(tile, id) {
  $(".dnd", tile).addEventListener("click", () => {
    const u = users.get(id);
    setPresence(id, apiDND(u) ? null : { activity: "dnd" });
  });
  $(".statusform", tile).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const activity = f.activity.value, note = f.note.value.trim(), forTime = f.for.value;
    const body = activity || note ? { note } : null;
    if (body && activity) body.activity = activity;
    if (body && forTime) body.expires_in = forTime;
    setPresence(id, body);
    $(".status", tile).open = false;
  });
}

function showSignIn() {
  const b = $("#signin");
  b.textContent = auth ? `Sign out (${auth.name || "admin"})` : "Sign in";
}

$("#signin").addEventListener("click", () => {
  if (auth) { save(null); return; }
  $("#loginerror").textContent = "";
  $("#login").showModal();
});

$("#loginform").addEventListener("submit", async (ev) => {
  if (ev.submitter && ev.submitter.value === "cancel") return;
  ev.preventDefault();
  const f = ev.target;
  const token = f.token.value.trim();
  const cand = token ? { token } : { basic: btoa(unescape(encodeURIComponent(`${f.user.value.trim()}:${f.password.value}`))) };
  const h = { Authorization: token ? "Bearer " + token : "Basic " + cand.basic };
  const res = await fetch("/api/v1/whoami", { headers: h }).catch(() => null);
  if (!res || !res.ok) {
    $("#loginerror").textContent = res && res.status === 403 ? "Setting states is switched off on this server."
      : "Wrong name, password or token.";
    return;
  }
  const me = await res.json();
  f.reset();
  $("#login").close();
  save({ ...cand, admin: me.admin, user: me.user, tenant: me.tenant, name: me.name || (me.admin ? "admin" : me.tenant || me.user) });
});

filter.addEventListener("input", applyFilter);

// showPBXs says which PBXs are unreachable: their phones' lamps show
// Unavailable (down) or may be out of date (reconnecting).
function showPBXs(pbxs) {
  const banner = $("#pbxdown");
  const since = (p) => p.since ? " since " + new Date(p.since).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
  const down = pbxs.filter((p) => p.down).map((p) => "PBX " + p.name + " is unreachable" + since(p) + ": its phones show Unavailable.");
  const away = pbxs.filter((p) => !p.down && !p.connected).map((p) => "Reconnecting to PBX " + p.name + "…");
  const text = down.concat(away).join(" ");
  banner.hidden = text === "";
  banner.dataset.state = down.length ? "down" : "reconnecting";
  banner.textContent = text;
}

// stream is the open event stream; a signed-in admin's or tenant's page
// opens it with a stream ticket (EventSource sends no Authorization), and
// asks for a new one when the server ends it.
let stream = null;

async function connect() {
  const link = $("#link");
  if (stream) stream.close();
  let url = "/events";
  if (auth && (auth.admin || auth.tenant)) {
    const res = await fetch("/api/v1/stream-ticket", { method: "POST", headers: headers() }).catch(() => null);
    if (res && res.ok) url += "?ticket=" + encodeURIComponent((await res.json()).ticket);
  }
  const es = new EventSource(url);
  stream = es;
  const receive = (full) => (ev) => {
    const m = JSON.parse(ev.data);
    if (m.now) clockSkew = Date.parse(m.now) - Date.now();
    if (m.title) { $("#title").textContent = m.title; }
    if (m.version) { $("#version").textContent = "Lamplighter " + m.version; }
    if (m.pbxs) showPBXs(m.pbxs);
    if (full) users.clear();
    for (const u of m.users) users.set(u.id, u);
    for (const id of m.removed || []) { users.delete(id); tiles.delete(id); }
    const regroup = full || (m.removed || []).length > 0 ||
      m.users.some((u) => { const t = tiles.get(u.id); return !t || t.closest(".group")?.dataset.group !== groupOf(u); });
    if (regroup) render();
    else { for (const u of m.users) fill(tiles.get(u.id), u); applyFilter(); }
    link.dataset.state = "live";
    link.textContent = "Live";
  };
  es.addEventListener("snapshot", receive(true));
  es.addEventListener("update", receive(false));
  es.onerror = () => {
    link.dataset.state = "connecting"; link.textContent = "Reconnecting…";
    // Refused (a ticket run out, a restart): open a new one.
    if (es.readyState === EventSource.CLOSED && stream === es) setTimeout(connect, 1000);
  };
}

setInterval(() => { for (const u of users.values()) if (u.calls && u.calls.length) tick(tiles.get(u.id), u); }, 1000);
showSignIn();
connect();
