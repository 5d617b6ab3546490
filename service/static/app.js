// The jobs page: lists the caller's jobs, polls their progress, shows a report, cancels a job.
// The API key lives in this tab's sessionStorage and travels only in the Authorization header.
"use strict";

(function () {
  const KEY_NAME = "nacs.apiKey";
  const ACTIVE_POLL_MS = 1000;
  const IDLE_POLL_MS = 5000;
  const PAGE_SIZE = 50;
  const PHASES = ["loading", "selecting", "denoising", "auditing", "writing"];
  let pollTimer = null;
  // True when the service answers without a key (nacs up with no keys configured).
  let keyless = false;

  const element = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function apiKey() {
    return window.sessionStorage.getItem(KEY_NAME);
  }

  async function request(method, path, accept) {
    const headers = { Accept: accept || "application/json" };
    if (apiKey()) headers.Authorization = "Bearer " + apiKey();
    const response = await fetch(path, {
      method: method,
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok) {
      let code = "http_" + response.status;
      let message = "the service answered HTTP " + response.status;
      try {
        const body = await response.json();
        code = body.error.code;
        message = body.error.message;
      } catch (ignored) {
        // Not the service's error body: keep the status line.
      }
      throw new ApiError(response.status, code, message);
    }
    return response;
  }

  function say(text, isError) {
    const message = element("message");
    message.textContent = text;
    message.classList.toggle("error", Boolean(isError));
  }

  function budget(job) {
    const request = job.request || {};
    if (request.size !== undefined && request.size !== null) return request.size + " rows";
    if (request.ratio !== undefined && request.ratio !== null) {
      return (request.ratio * 100).toFixed(2).replace(/\.?0+$/, "") + "%";
    }
    return "-";
  }

  function shortTime(value) {
    return value ? value.replace("T", " ").replace(/\.\d+Z$/, " UTC") : "-";
  }

  function cell(row, index) {
    while (row.cells.length <= index) row.insertCell();
    return row.cells[index];
  }

  function button(text, className, action) {
    const made = document.createElement("button");
    made.type = "button";
    made.textContent = text;
    made.className = className;
    made.addEventListener("click", action);
    return made;
  }

  function renderProgress(target, job) {
    let bar = target.querySelector("progress");
    let text = target.querySelector(".progress-text");
    if (!bar) {
      target.textContent = "";
      bar = document.createElement("progress");
      bar.max = 1;
      text = document.createElement("span");
      text.className = "progress-text";
      target.append(bar, text);
    }
    const progress = job.progress || { fraction: 0, phase: "" };
    const fraction = job.status === "succeeded" ? 1 : Math.max(0, Math.min(1, progress.fraction));
    // The bar spans the whole job: each phase takes an equal part of it.
    const phase = PHASES.indexOf(progress.phase);
    const active = job.status === "running" || job.status === "queued";
    bar.value = job.status === "succeeded" ? 1
      : !active || phase < 0 ? 0 : (phase + fraction) / PHASES.length;
    bar.setAttribute("aria-label", "progress of job " + job.id);
    let label = job.status === "succeeded" ? "done" : active
      ? (progress.phase || "") + " " + Math.round(fraction * 100) + "%" : "stopped";
    if (job.status === "running" && progress.message) {
      label += " · " + progress.message.slice(0, 60);
    }
    text.textContent = label;
    text.title = progress.message || "";
  }

  function renderActions(target, job) {
    const wanted = job.status === "succeeded" ? "report"
      : (job.status === "queued" || job.status === "running") && !job.cancel_requested
        ? "cancel" : "none";
    if (target.dataset.action === wanted) return;
    target.dataset.action = wanted;
    target.textContent = "";
    if (wanted === "report") {
      target.append(button("Report", "report", () => showReport(job.id)));
    } else if (wanted === "cancel") {
      target.append(button("Cancel", "cancel", () => cancelJob(job.id)));
    }
    if (job.error) {
      const error = document.createElement("div");
      error.className = "error-text";
      error.textContent = job.error.code + ": " + job.error.message;
      target.append(error);
    }
  }

  function render(jobs) {
    const table = element("jobs");
    const body = table.tBodies[0];
    const seen = new Set();
    jobs.forEach((job, position) => {
      seen.add(job.id);
      let row = body.querySelector('tr[data-job="' + CSS.escape(job.id) + '"]');
      if (!row) {
        row = document.createElement("tr");
        row.dataset.job = job.id;
      }
      if (body.rows[position] !== row) body.insertBefore(row, body.rows[position] || null);
      row.dataset.status = job.status;
      const id = document.createElement("code");
      id.textContent = job.id;
      const idCell = cell(row, 0);
      if (idCell.textContent !== job.id) idCell.replaceChildren(id);
      const status = document.createElement("span");
      status.className = "status " + job.status;
      status.textContent = job.cancel_requested && job.status === "running"
        ? "cancelling" : job.status;
      cell(row, 1).replaceChildren(status);
      cell(row, 2).textContent = (job.request && job.request.method) || "-";
      cell(row, 3).textContent = budget(job);
      cell(row, 4).textContent = shortTime(job.created_at);
      renderProgress(cell(row, 5), job);
      renderActions(cell(row, 6), job);
    });
    Array.from(body.rows).forEach((row) => {
      if (!seen.has(row.dataset.job)) row.remove();
    });
    table.hidden = jobs.length === 0;
  }

  async function refresh() {
    window.clearTimeout(pollTimer);
    pollTimer = null;
    if (!apiKey() && !keyless) return;
    try {
      const response = await request("GET", "/jobs?limit=" + PAGE_SIZE);
      const page = await response.json();
      render(page.jobs);
      const active = page.jobs.some((job) => job.status === "queued" || job.status === "running");
      const none = keyless && !apiKey() ? "No jobs yet (this service needs no key)."
        : "No jobs yet for this key.";
      say(page.jobs.length === 0 ? none
        : page.jobs.length + " most recent job(s)" + (active ? "; updating every second." : "."));
      pollTimer = window.setTimeout(refresh, active ? ACTIVE_POLL_MS : IDLE_POLL_MS);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        keyless = false;
        window.sessionStorage.removeItem(KEY_NAME);
        render([]);
        say("That key was refused (" + error.message + "): paste a valid one.", true);
        return;
      }
      say("Could not list the jobs: " + error.message + "; retrying.", true);
      pollTimer = window.setTimeout(refresh, IDLE_POLL_MS);
    }
  }

  async function showReport(jobId) {
    try {
      const response = await request("GET", "/jobs/" + encodeURIComponent(jobId) + "/report",
        "text/html");
      const page = await response.text();
      element("report-title").textContent = "Report of job " + jobId;
      element("report").hidden = false;
      // A new frame for each report: sandboxed with no permission at all (no script, no form,
      // no navigation of this page), its document given inline.
      const frame = document.createElement("iframe");
      frame.id = "report-frame";
      frame.title = "Report of job " + jobId;
      frame.setAttribute("sandbox", "");
      frame.srcdoc = page;
      element("report-holder").replaceChildren(frame);
      element("report").scrollIntoView();
    } catch (error) {
      say("No report for job " + jobId + ": " + error.message, true);
    }
  }

  function closeReport() {
    element("report-holder").replaceChildren();
    element("report").hidden = true;
  }

  async function cancelJob(jobId) {
    try {
      await request("POST", "/jobs/" + encodeURIComponent(jobId) + "/cancel");
      say("Cancel requested for job " + jobId + ".");
    } catch (error) {
      say("Could not cancel job " + jobId + ": " + error.message, true);
    }
    refresh();
  }

  function useKey(event) {
    event.preventDefault();
    const input = element("api-key");
    const key = input.value.trim();
    input.value = "";
    if (!key) {
      say("Paste an API key first.", true);
      return;
    }
    window.sessionStorage.setItem(KEY_NAME, key);
    closeReport();
    render([]);
    say("Loading your jobs…");
    refresh();
  }

  function forgetKey() {
    window.sessionStorage.removeItem(KEY_NAME);
    window.clearTimeout(pollTimer);
    closeReport();
    render([]);
    say("The key is forgotten.");
  }

  document.addEventListener("DOMContentLoaded", () => {
    element("app").hidden = false;
    element("key-form").addEventListener("submit", useKey);
    element("forget-key").addEventListener("click", forgetKey);
    element("close-report").addEventListener("click", closeReport);
    if (apiKey()) {
      refresh();
    } else {
      openWithoutKey();
    }
  });

  // A service without keys lists its one tenant's jobs to anyone who can reach it: show them.
  async function openWithoutKey() {
    try {
      await request("GET", "/jobs?limit=1");
      keyless = true;
      refresh();
    } catch (error) {
      say("Paste an API key to see your jobs.");
    }
  }
})();
