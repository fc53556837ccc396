// The Cloudlet dashboard: one page against the controller's JSON API, no dependencies.
// The token lives in sessionStorage (this tab only); every call sends it.
// Live updates: the current view polls every POLL_MS, or less often when a refresh
// takes long (a large fleet). Utilization history is kept here, in the page, for as
// long as it stays open (the controller keeps none).
"use strict";

const POLL_MS = 1500;
// The next poll waits at least this many times what the last refresh took: 10,000
// sites are ten pages of /v1/sites, and the controller has other work.
const POLL_BACKOFF = 4;
const HISTORY = 120; // utilization samples kept per site (3 minutes at POLL_MS)
// Past this many sites the page samples utilization only for the site it shows.
const HISTORY_FLEET = 1000;
const LABELLED_SITES = 60; // more sites than this: dots without names on the map
const MAP_TABLE_ROWS = 100; // the map page's fleet table: those needing attention first
const SITES_TABLE_ROWS = 1000;
const TOKEN_KEY = "cloudlet.token";
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  sites: [],
  partial: false, // state.sites is the first page only, more are coming
  alarms: [],
  history: new Map(), // site name -> [{t, cpu, memory, disk}]
  timer: null,
  generation: 0, // bumped by each refresh: a superseded one neither draws nor reschedules
  view: null, // {route, update(data)}
  filters: { instSite: "", instState: "", evSite: "", evKind: "" },
};

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function request(path, token = state.token) {
  let response;
  try {
    response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  } catch (err) {
    throw new ApiError(0, "the controller is unreachable");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = body.detail || body.title || detail;
    } catch (err) { /* not problem+json */ }
    throw new ApiError(response.status, detail);
  }
  return response;
}

async function api(path, token = state.token) {
  return (await request(path, token)).json();
}

// Every site: /v1/sites answers up to 1000 a page, the next page's cursor in
// X-Next-Cursor. Each page is asked for before the one before it is parsed and
// drawn, so the network and the drawing overlap. onFirst(sites) sees the first
// page when more follow.
async function allSites(onFirst = null) {
  let sites = [];
  let next = request("/v1/sites");
  while (next) {
    const response = await next;
    const cursor = response.headers.get("X-Next-Cursor");
    next = cursor ? request(`/v1/sites?cursor=${encodeURIComponent(cursor)}`) : null;
    next?.catch(() => {}); // a failure is thrown where it is awaited, not reported twice
    sites = sites.concat(await response.json());
    if (onFirst && next) {
      await onFirst(sites);
      onFirst = null;
    }
  }
  return sites;
}

// --- DOM helpers: text goes in as text, never as HTML ---------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function fill(id, ...children) {
  const el = document.getElementById(id);
  if (el) el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

function when(iso) {
  if (!iso) return "never";
  const t = new Date(iso);
  const ago = Math.max(0, (Date.now() - t.getTime()) / 1000);
  const text = ago < 90 ? `${ago.toFixed(0)} s ago` : ago < 5400 ? `${(ago / 60).toFixed(0)} min ago`
    : t.toISOString().replace("T", " ").slice(0, 19);
  return h("span", { title: t.toISOString() }, text);
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let v = n, i = 0;
  while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${units[i]}`;
}

function pct(x) {
  return x === null || x === undefined ? "" : `${Math.round(x * 100)}%`;
}

function badge(cls, text) {
  return h("span", { class: `badge ${cls}` }, text);
}

function siteLink(name) {
  return h("a", { href: `#/sites/${encodeURIComponent(name)}`, "data-site-link": name }, name);
}

function instanceLink(inst) {
  return h("a", { href: `#/instances/${encodeURIComponent(inst.id)}`, "data-instance-link": inst.id },
    inst.name);
}

function table(id, headers, rows, empty) {
  const head = h("tr", {}, headers.map((x) => h("th", { class: x.endsWith("#") ? "num" : "" },
    x.replace(/#$/, ""))));
  const body = rows.length ? rows
    : [h("tr", {}, h("td", { colspan: headers.length, class: "empty" }, empty))];
  return h("table", { id }, h("thead", {}, head), h("tbody", {}, body));
}

function alarmsBySite() {
  const counts = new Map();
  for (const a of state.alarms) if (a.site) counts.set(a.site, (counts.get(a.site) || 0) + 1);
  return counts;
}

// --- the map ---------------------------------------------------------------------------

const MAP_W = 800, MAP_H = 460, MARGIN = 60;

// Equirectangular, fitted to the fleet's bounding box (x shrunk by cos(mid-latitude)
// so distances look right at the fleet's latitude), with a margin round it.
function projection(sites) {
  const lats = sites.map((x) => x.latitude), lons = sites.map((x) => x.longitude);
  let [lat0, lat1] = [Math.min(...lats), Math.max(...lats)];
  let [lon0, lon1] = [Math.min(...lons), Math.max(...lons)];
  const k = Math.cos(((lat0 + lat1) / 2) * Math.PI / 180) || 1;
  // At least half a degree across, so one site (or two close ones) is not a zoom to a point.
  const span = Math.max((lon1 - lon0) * k, lat1 - lat0, 0.5);
  const midX = ((lon0 + lon1) / 2) * k, midY = (lat0 + lat1) / 2;
  const scale = Math.min((MAP_W - 2 * MARGIN) / span, (MAP_H - 2 * MARGIN) / span);
  const project = (lat, lon) => [MAP_W / 2 + (lon * k - midX) * scale, MAP_H / 2 - (lat - midY) * scale];
  const unproject = (x, y) => [midY - (y - MAP_H / 2) / scale, (midX + (x - MAP_W / 2) / scale) / k];
  return { project, unproject, scale };
}

function graticule(proj) {
  const [latTop, lonLeft] = proj.unproject(0, 0);
  const [latBottom, lonRight] = proj.unproject(MAP_W, MAP_H);
  const degrees = Math.max(latTop - latBottom, lonRight - lonLeft);
  const step = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30].find((x) => degrees / x <= 12) || 45;
  const lines = [];
  for (let lat = Math.ceil(latBottom / step) * step; lat <= latTop; lat += step) {
    const [, y] = proj.project(lat, 0);
    lines.push(s("line", { class: "graticule", x1: 0, x2: MAP_W, y1: y, y2: y }),
      s("text", { class: "graticule-label", x: 4, y: y - 3 }, `${+lat.toFixed(2)}°`));
  }
  for (let lon = Math.ceil(lonLeft / step) * step; lon <= lonRight; lon += step) {
    const [x] = proj.project(0, lon);
    lines.push(s("line", { class: "graticule", x1: x, x2: x, y1: 0, y2: MAP_H }),
      s("text", { class: "graticule-label", x: x + 3, y: MAP_H - 4 }, `${+lon.toFixed(2)}°`));
  }
  return lines;
}

function describe(site, alarms) {
  return `${site.name}: ${site.availability}, ${alarms.get(site.name) || 0} active alarm(s)`;
}

function goToSite(name) {
  location.hash = `#/sites/${encodeURIComponent(name)}`;
}

// A small fleet: one <g class="site"> per site (data-site, data-availability,
// data-alarms) with its name and a tooltip.
function labelledDots(svg, placed, proj, alarms) {
  for (const site of placed) {
    const [x, y] = proj.project(site.latitude, site.longitude);
    const count = alarms.get(site.name) || 0;
    svg.append(s("g", {
      class: `site ${site.availability}`, "data-site": site.name,
      "data-availability": site.availability, "data-alarms": count,
      onclick: () => goToSite(site.name),
    },
    s("title", {}, describe(site, alarms)),
    count ? s("circle", { class: "ring", cx: x, cy: y, r: 15 }) : null,
    s("circle", { class: "dot", cx: x, cy: y, r: 9 }),
    s("text", { x: x + 14, y: y + 5 }, site.name)));
  }
}

function circles(points, r) {
  return points.map(([x, y]) => `M${(x - r).toFixed(1)} ${y.toFixed(1)}a${r} ${r} 0 1 0 ${2 * r} 0`
    + `a${r} ${r} 0 1 0 ${-2 * r} 0`).join("");
}

// A large fleet: thousands of elements cost seconds of style and layout, so each
// availability is one <path> of dots (and the alarms one of rings); a click or a
// hover finds the nearest site in the page.
function denseDots(svg, placed, proj, alarms) {
  const R = 3;
  const points = placed.map((site) => [...proj.project(site.latitude, site.longitude), site]);
  for (const availability of ["online", "unknown", "offline"]) { // offline drawn on top
    const mine = points.filter((p) => p[2].availability === availability);
    if (mine.length) {
      svg.append(s("path", { class: `dots ${availability}`, d: circles(mine, R),
        "data-sites": mine.length }));
    }
  }
  const ringed = points.filter((p) => alarms.get(p[2].name));
  if (ringed.length) svg.append(s("path", { class: "rings", d: circles(ringed, R * 5 / 3) }));
  const nearest = (ev) => {
    const at = new DOMPoint(ev.clientX, ev.clientY).matrixTransform(svg.getScreenCTM().inverse());
    let best = null, bestD = (3 * R) ** 2;
    for (const [x, y, site] of points) {
      const d = (x - at.x) ** 2 + (y - at.y) ** 2;
      if (d < bestD) [best, bestD] = [site, d];
    }
    return best;
  };
  svg.addEventListener("click", (ev) => { const site = nearest(ev); if (site) goToSite(site.name); });
  svg.addEventListener("mousemove", (ev) => {
    const site = nearest(ev);
    fill("map-hover", site ? describe(site, alarms) : "");
    svg.classList.toggle("pointing", !!site);
  });
}

// data-sites on #map-svg: how many sites are drawn on it.
function drawMap() {
  const placed = state.sites.filter((x) => x.latitude !== null && x.longitude !== null);
  const unplaced = state.sites.filter((x) => x.latitude === null || x.longitude === null);
  const alarms = alarmsBySite();
  const labelled = placed.length <= LABELLED_SITES;
  const svg = s("svg", { id: "map-svg", class: `map${labelled ? "" : " dense"}`,
    viewBox: `0 0 ${MAP_W} ${MAP_H}`, role: "img", "aria-label": "Map of the sites",
    "data-sites": placed.length });
  if (placed.length) {
    const proj = projection(placed);
    svg.append(...graticule(proj));
    (labelled ? labelledDots : denseDots)(svg, placed, proj, alarms);
  } else {
    svg.append(s("text", { x: MAP_W / 2, y: MAP_H / 2, "text-anchor": "middle" },
      "No site has coordinates yet (cloudlet site add --lat --lon)."));
  }
  fill("map", svg,
    h("div", { class: "legend" }, h("span", { class: "online" }, "online"),
      h("span", { class: "offline" }, "offline"), h("span", { class: "unknown" }, "never seen"),
      h("span", { class: "alarm" }, "active alarm"),
      h("span", { id: "map-count", class: "count" }, `${placed.length.toLocaleString()} sites`
        + (state.partial ? " so far, more coming" : "")),
      labelled ? null : h("span", { id: "map-hover", class: "hover" })),
    unplaced.length ? h("p", { class: "empty" },
      `Not on the map (no coordinates): ${unplaced.slice(0, 50).map((x) => x.name).join(", ")}`
      + (unplaced.length > 50 ? ` and ${unplaced.length - 50} more` : "")) : null);
}

// --- tables ----------------------------------------------------------------------------

// Sites with alarms, not online, or behind come first.
function attention(x, alarms) {
  return (alarms.get(x.name) ? 4 : 0) + (x.availability !== "online" ? 2 : 0)
    + (x.sync_status !== "in-sync" ? 1 : 0);
}

// At most ``limit`` rows (a fleet has thousands), and a line saying how many are left out.
function sitesTable(limit, urgentFirst = false) {
  const alarms = alarmsBySite();
  let sites = state.sites;
  if (urgentFirst) {
    sites = sites.map((x) => [attention(x, alarms), x]).filter(([a]) => a > 0)
      .sort((p, q) => q[0] - p[0]).map(([, x]) => x);
    if (sites.length < limit) {
      const shown = new Set(sites.map((x) => x.name));
      sites = sites.concat(state.sites.filter((x) => !shown.has(x.name)).slice(0, limit - sites.length));
    }
  }
  const rows = sites.slice(0, limit).map((x) => h("tr", { "data-site": x.name, "data-availability": x.availability },
    h("td", {}, siteLink(x.name)), h("td", {}, x.region),
    h("td", {}, badge(x.availability, x.availability)), h("td", {}, when(x.last_seen)),
    h("td", {}, x.sync_status, x.revision_lag ? ` (lag ${x.revision_lag})` : ""),
    h("td", { class: "num" }, x.instances),
    h("td", { class: "num" }, pct(x.utilization && x.utilization.cpu)),
    h("td", { class: "num" }, alarms.get(x.name) || "")));
  const more = state.sites.length - rows.length;
  return [table("sites-table",
    ["Site", "Region", "Availability", "Last seen", "Sync", "Instances#", "CPU#", "Alarms#"],
    rows, "No sites yet."),
  more > 0 ? h("p", { class: "empty", id: "sites-more" }, `${rows.length.toLocaleString()} of `
    + `${state.sites.length.toLocaleString()} sites shown`
    + (urgentFirst ? " (those with alarms, not online or behind first)." : ".")
    + (state.partial ? " More are coming." : "")) : null];
}

function alarmsTable(alarms, id = "alarms-table") {
  const rows = alarms.map((a) => h("tr", { "data-alarm": a.alarm_id, "data-site": a.site || "" },
    h("td", {}, badge(a.severity, a.severity)), h("td", {}, h("code", {}, a.alarm_id)),
    h("td", {}, a.site ? siteLink(a.site) : ""),
    h("td", {}, a.instance ? h("a", { href: `#/instances/${encodeURIComponent(a.instance)}` },
      a.instance.slice(0, 8)) : ""),
    h("td", {}, when(a.raised_at)), h("td", {}, a.reason || "")));
  return table(id, ["Severity", "Alarm", "Site", "Instance", "Raised", "Reason"], rows,
    "No active alarms.");
}

function instancesTable(instances, id = "instances-table") {
  const rows = instances.map((i) => h("tr", { "data-instance": i.id, "data-state": i.actual_state },
    h("td", {}, instanceLink(i)), h("td", {}, i.app), h("td", {}, siteLink(i.site)),
    h("td", {}, i.actual_state), h("td", {}, i.desired_state), h("td", {}, i.project),
    h("td", {}, i.endpoint ? h("code", {}, i.endpoint) : ""), h("td", {}, i.reason || "")));
  return table(id, ["Instance", "App", "Site", "State", "Desired", "Project", "Endpoint", "Reason"],
    rows, "No instances.");
}

function eventsTable(events, id = "events-table") {
  const rows = events.map((e) => h("tr", { "data-kind": e.kind },
    h("td", {}, when(e.at)), h("td", {}, e.site === "-" ? "controller" : siteLink(e.site)),
    h("td", {}, h("code", {}, e.kind)),
    h("td", {}, e.instance ? h("a", { href: `#/instances/${encodeURIComponent(e.instance)}` },
      e.instance.slice(0, 8)) : ""),
    h("td", { class: "mono" }, JSON.stringify(e.data))));
  return table(id, ["When", "Site", "Kind", "Instance", "Data"], rows, "No events.");
}

function select(id, label, options, current, onchange) {
  return h("label", {}, label, h("select", { id, onchange: (ev) => onchange(ev.target.value) },
    [h("option", { value: "" }, "any"),
      ...options.map((o) => h("option", { value: o, selected: o === current }, o))]));
}

function siteNames() {
  return state.sites.map((x) => x.name);
}

// --- views: each builds its frame once, then update() refills it on every poll -----------

const views = {
  map() {
    return {
      progressive: true,
      frame: [h("div", { class: "grid" },
        h("section", { class: "panel" }, h("h2", {}, "Sites"), h("div", { id: "map" })),
        h("div", {},
          h("section", { class: "panel" }, h("h2", {}, "Active alarms"), h("div", { id: "alarms" })),
          h("section", { class: "panel" }, h("h2", {}, "Fleet"), h("div", { id: "sites" }))))],
      async update() {
        drawMap();
        fill("alarms", alarmsTable(state.alarms));
        fill("sites", sitesTable(MAP_TABLE_ROWS, true));
      },
    };
  },

  sites() {
    return {
      progressive: true,
      frame: [h("section", { class: "panel" }, h("h2", {}, "Sites"), h("div", { id: "sites" }))],
      async update() { fill("sites", sitesTable(SITES_TABLE_ROWS)); },
    };
  },

  alarms() {
    return {
      frame: [h("section", { class: "panel" }, h("h2", {}, "Active alarms"), h("div", { id: "alarms" })),
        h("section", { class: "panel" }, h("h2", {}, "History (newest 100)"), h("div", { id: "alarm-history" }))],
      async update() {
        fill("alarms", alarmsTable(state.alarms));
        const history = await api("/v1/alarms?active=false&limit=100");
        fill("alarm-history", alarmsTable(history, "alarm-history-table"));
      },
    };
  },

  instances() {
    const f = state.filters;
    const states = ["pending", "fetching", "synthesizing", "starting", "running", "stopping",
      "stopped", "suspending", "suspended", "relocating", "failed"];
    return {
      frame: [h("section", { class: "panel" }, h("h2", {}, "Instances"),
        h("div", { class: "filters", id: "instance-filters" }),
        h("div", { id: "instances" }))],
      async update(first) {
        if (first || !document.getElementById("filter-inst-site")) {
          fill("instance-filters",
            select("filter-inst-site", "Site", siteNames(), f.instSite, (v) => { f.instSite = v; refresh(); }),
            select("filter-inst-state", "State", states, f.instState, (v) => { f.instState = v; refresh(); }));
        }
        const query = f.instSite ? `?site=${encodeURIComponent(f.instSite)}` : "";
        const response = await request(`/v1/instances${query}`);
        const all = await response.json();
        // One page (1000, oldest first) is what a table can show; say when more exist.
        const more = response.headers.get("X-Next-Cursor") ? h("p", { class: "empty", id: "instances-more" },
          `The oldest ${all.length.toLocaleString()} instances only; filter by site to see a site's.`) : null;
        fill("instances", instancesTable(all.filter((i) => !f.instState || i.actual_state === f.instState)), more);
      },
    };
  },

  events() {
    const f = state.filters;
    // Site kinds (schemas EventKind) and the controller's site.* verdicts.
    const kinds = ["instance.state", "instance.created", "usage", "alarm", "handoff",
      "agent.started", "site.enrolled", "site.online", "site.offline", "site.draining",
      "site.decommissioned"];
    return {
      frame: [h("section", { class: "panel" }, h("h2", {}, "Events (newest 200)"),
        h("div", { class: "filters", id: "event-filters" }),
        h("div", { id: "events" }))],
      async update(first) {
        if (first) {
          fill("event-filters",
            select("filter-ev-site", "Site", siteNames(), f.evSite, (v) => { f.evSite = v; refresh(); }),
            h("label", {}, "Kind", h("input", { id: "filter-ev-kind", list: "event-kinds", value: f.evKind,
              placeholder: "any", onchange: (ev) => { f.evKind = ev.target.value.trim(); refresh(); } }),
            h("datalist", { id: "event-kinds" }, kinds.map((k) => h("option", { value: k })))));
        }
        const params = new URLSearchParams({ limit: "200" });
        if (f.evSite) params.set("site", f.evSite);
        if (f.evKind) params.set("kind", f.evKind);
        fill("events", eventsTable(await api(`/v1/events?${params}`)));
      },
    };
  },

  site(name) {
    const path = `/v1/sites/${encodeURIComponent(name)}`;
    return {
      frame: [h("h2", { id: "site-title" }, `Site ${name}`),
        h("div", { class: "grid" },
          h("div", {},
            h("section", { class: "panel" }, h("h2", {}, "State"), h("div", { id: "site-detail" })),
            h("section", { class: "panel" }, h("h2", {}, "Utilization"),
              h("p", { class: "key" }, h("span", { class: "cpu" }, "cpu"),
                h("span", { class: "memory" }, "memory"), h("span", { class: "disk" }, "disk"),
                h("span", { class: "empty" }, "(sampled by this page since sign-in)")),
              h("div", { id: "site-utilization" }))),
          h("div", {},
            h("section", { class: "panel" }, h("h2", {}, "Active alarms"), h("div", { id: "alarms" })),
            h("section", { class: "panel" }, h("h2", {}, "Cache"), h("div", { id: "site-cache" })))),
        h("section", { class: "panel" }, h("h2", {}, "Instances"), h("div", { id: "site-instances" })),
        h("section", { class: "panel" }, h("h2", {}, "Recent events"), h("div", { id: "site-events" }))],
      async update() {
        const [site, cache, instances, events] = await Promise.all([
          api(path), api(`${path}/images`),
          api(`/v1/instances?site=${encodeURIComponent(name)}`),
          api(`/v1/events?site=${encodeURIComponent(name)}&limit=20`),
        ]);
        if (state.sites.length > HISTORY_FLEET) remember([site]);
        fill("site-detail", siteFields(site));
        fill("site-utilization", chart(state.history.get(name) || []));
        fill("alarms", alarmsTable(state.alarms.filter((a) => a.site === name)));
        fill("site-cache", cacheTable(cache));
        fill("site-instances", instancesTable(instances));
        fill("site-events", eventsTable(events));
      },
    };
  },

  instance(ref) {
    const path = `/v1/instances/${encodeURIComponent(ref)}`;
    return {
      frame: [h("h2", { id: "instance-title" }, `Instance ${ref}`),
        h("section", { class: "panel" }, h("div", { id: "instance-detail" })),
        h("section", { class: "panel" }, h("h2", {}, "Recent events"), h("div", { id: "instance-events" }))],
      async update() {
        const inst = await api(path);
        const events = await api(`/v1/events?instance=${encodeURIComponent(inst.id)}&limit=20`);
        fill("instance-title", `Instance ${inst.name}`);
        fill("instance-detail", instanceFields(inst));
        fill("instance-events", eventsTable(events));
      },
    };
  },
};

function fields(pairs, attrs = {}) {
  return h("dl", { class: "fields", ...attrs },
    pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "")]));
}

function siteFields(x) {
  const cap = x.capacity;
  return fields([
    ["availability", badge(x.availability, x.availability)],
    ["state", x.state], ["region", x.region],
    ["coordinates", x.latitude === null ? "none" : `${x.latitude}, ${x.longitude}`],
    ["last seen", when(x.last_seen)],
    ["sync", `${x.sync_status}, revision ${x.applied_revision} of ${x.revision}`],
    ["traffic", `${bytes(x.bytes_in)} in, ${bytes(x.bytes_out)} out`],
    ["capacity", cap ? `${cap.vcpus} vCPU, ${cap.memory_mib} MiB, ${cap.disk_gib} GiB` : "not reported"],
    ["utilization", x.utilization ? `cpu ${pct(x.utilization.cpu)}, memory ${pct(x.utilization.memory)}, disk ${pct(x.utilization.disk)}` : "not reported"],
    ["instances", x.instances], ["agent", x.agent_version || ""],
    ["local API", x.local_api ? h("code", {}, x.local_api) : ""],
    ["labels", Object.entries(x.labels).map(([k, v]) => `${k}=${v}`).join(", ")],
  ], { id: "site-fields", "data-site": x.name, "data-availability": x.availability });
}

function instanceFields(i) {
  return fields([
    ["id", h("code", {}, i.id)], ["name", i.name], ["app", i.app], ["project", i.project],
    ["site", siteLink(i.site)], ["state", i.actual_state], ["desired", i.desired_state],
    ["origin", i.origin], ["endpoint", i.endpoint ? h("code", {}, i.endpoint) : ""],
    ["reason", i.reason || ""], ["epoch", i.epoch], ["restarts", i.restarts],
    ["crash restarts", i.crash_restarts], ["created", when(i.created_at)],
    ["updated", when(i.updated_at)],
    ["timings", Object.entries(i.timings).map(([k, v]) => `${k} ${v.toFixed(2)} s`).join(", ")],
    ["client", i.client_latitude === null ? "" : `${i.client_latitude}, ${i.client_longitude}`],
    ["placement", i.placement ? h("pre", {}, JSON.stringify(i.placement, null, 2)) : ""],
  ], { id: "instance-fields", "data-instance": i.id, "data-state": i.actual_state });
}

function cacheTable(entries) {
  const rows = entries.map((c) => h("tr", { "data-digest": c.digest },
    h("td", {}, c.name || ""), h("td", {}, c.kind), h("td", { class: "mono" }, c.digest.slice(0, 12)),
    h("td", { class: "num" }, bytes(c.size)),
    h("td", {}, c.complete ? "cached" : c.cached ? `partial (${bytes(c.fetched)})` : "missing"),
    h("td", {}, c.staged ? "yes" : ""), h("td", {}, c.last_used ? when(c.last_used) : "")));
  return table("cache-table", ["Name", "Kind", "Digest", "Size#", "Held", "Pre-staged", "Last used"],
    rows, "Nothing cached or pre-staged.");
}

function chart(samples) {
  const W = 600, H = 120, PAD = 4;
  const svg = s("svg", { id: "util-chart", class: "chart", viewBox: `0 0 ${W} ${H}`,
    "data-samples": samples.length });
  for (const y of [0.25, 0.5, 0.75]) {
    svg.append(s("line", { x1: 0, x2: W, y1: H * (1 - y), y2: H * (1 - y), stroke: "#dde", "stroke-width": 1 }));
  }
  svg.append(s("text", { class: "axis", x: 3, y: 11 }, "100%"), s("text", { class: "axis", x: 3, y: H - 3 }, "0%"));
  if (samples.length > 1) {
    const t0 = samples[0].t, span = Math.max(samples[samples.length - 1].t - t0, 1);
    svg.append(s("text", { class: "axis", x: W - 3, y: H - 3, "text-anchor": "end" },
      `last ${Math.round(span / 1000)} s`));
    for (const key of ["cpu", "memory", "disk"]) {
      const y = (v) => PAD + (1 - v) * (H - 2 * PAD);
      const points = samples.map((x) => `${((x.t - t0) / span) * W},${y(x[key])}`).join(" ");
      svg.append(s("polyline", { class: key, points }));
    }
  }
  return [svg, samples.length < 2 ? h("p", { class: "empty" }, "Collecting samples…") : null];
}

// --- routing, polling, sign-in ---------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "sites" && parts[1]) return ["site", parts[1]];
  if (parts[0] === "instances" && parts[1]) return ["instance", parts[1]];
  if (["sites", "instances", "events", "alarms"].includes(parts[0])) return [parts[0]];
  return ["map"];
}

function remember(sites) {
  const t = Date.now();
  for (const site of sites) {
    if (!site.utilization) continue;
    const samples = state.history.get(site.name) || [];
    samples.push({ t, ...site.utilization });
    if (samples.length > HISTORY) samples.shift();
    state.history.set(site.name, samples);
  }
}

function showStatus(text, stale) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.classList.toggle("stale", !!stale);
}

async function refresh(first = false) {
  clearTimeout(state.timer);
  const generation = ++state.generation;
  const view = state.view;
  const current = () => generation === state.generation && view === state.view;
  const started = performance.now();
  try {
    const alarmsCall = api("/v1/alarms?active=true");
    alarmsCall.catch(() => {});
    // Nothing drawn yet: the map and the sites table show the first page at once.
    const early = first && !state.sites.length && view.progressive ? async (some) => {
      const alarms = await alarmsCall;
      if (!current()) return;
      [state.sites, state.alarms, state.partial] = [some, alarms, true];
      await view.update(first);
      showStatus(`loading sites: ${some.length.toLocaleString()} so far`);
    } : null;
    const [sites, alarms] = await Promise.all([allSites(early), alarmsCall]);
    if (!current()) return;
    [state.sites, state.alarms, state.partial] = [sites, alarms, false];
    if (sites.length <= HISTORY_FLEET) remember(sites);
    await view.update(first);
    if (!current()) return;
    showStatus(`updated ${new Date().toLocaleTimeString()}`);
    document.getElementById("status").dataset.updated = String(Date.now());
  } catch (err) {
    if (err.status === 401) {
      signOut("The token was refused (it may have been revoked); sign in again.");
      return;
    }
    if (!current()) return;
    if (err.status === 404) {
      fill("view", h("p", { class: "error", id: "not-found" }, err.message));
    }
    showStatus(`not updated: ${err.message}`, true);
  }
  const took = performance.now() - started;
  if (state.token) state.timer = setTimeout(() => refresh(), Math.max(POLL_MS, POLL_BACKOFF * took));
}

function render() {
  if (!state.token) return;
  const [name, arg] = route();
  state.view = views[name](arg);
  const root = document.getElementById("view");
  root.dataset.view = name;
  root.replaceChildren(...state.view.frame);
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.getAttribute("href").replace(/^#\/?/, "") || "map";
    a.classList.toggle("active", target === (name === "site" ? "sites" : name === "instance" ? "instances" : name));
  }
  refresh(true);
}

function showSignedIn(signedIn) {
  document.getElementById("sign-in").hidden = signedIn;
  document.getElementById("view").hidden = !signedIn;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("sign-out").hidden = !signedIn;
  document.body.dataset.signedIn = String(signedIn);
}

function signOut(message = "") {
  clearTimeout(state.timer);
  state.token = null;
  state.view = null;
  state.sites = []; // another token may see other sites
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("view").replaceChildren();
  document.getElementById("sign-in-error").textContent = message;
  showStatus("");
  showSignedIn(false);
  document.getElementById("token").focus();
}

async function signIn(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const token = input.value.trim();
  const error = document.getElementById("sign-in-error");
  error.textContent = "";
  try {
    await api("/v1/sites?limit=1", token);
  } catch (err) {
    error.textContent = err.status === 401 || err.status === 403
      ? `Sign-in refused: ${err.message}.` : `Cannot sign in: ${err.message}.`;
    return;
  }
  input.value = "";
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  showSignedIn(true);
  render();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("sign-in").addEventListener("submit", signIn);
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", render);
  showSignedIn(!!state.token);
  if (state.token) render();
  else document.getElementById("token").focus();
});
