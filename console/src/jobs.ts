// A semaphore's jobs, filtered by status, with their attempts and error,
// and the actions each status allows: requeue a finished job, cancel a
// scheduled or inflight one, purge every scheduled job.

import type { Job } from "../../sdk/js/src/types.js";
import { KeyedList, h, relTime, short, show, table, td, text } from "./dom.js";
import { action, section, type Ctx } from "./ui.js";

const limit = 100;
const statuses = ["", "scheduled", "inflight", "done", "error", "cancelled", "timeout"];
const finished = new Set(["done", "error", "cancelled", "timeout"]);

export function jobsPanel(ctx: Ctx, semaphore: string): { el: HTMLElement; refresh(): Promise<void> } {
  const filter = h("select", { id: "job-status", "aria-label": "Status" }, ...statuses.map((s) => h("option", { value: s }, s || "every status")));
  const purge = action(ctx, "Purge scheduled", async () => {
    const n = await ctx.client.purgeJobs(semaphore, "scheduled");
    ctx.notify.ok(`${n} scheduled job${n === 1 ? "" : "s"} purged.`);
  }, { confirm: "Purge every scheduled job?", class: "warn" });
  purge.id = "purge";
  const t = table(["Job", "Channel", "Status", "Attempts", "Route", "Error", "Updated", "Runs", ""], "No job with this status.");
  t.body.id = "jobs";
  const more = h("p", { class: "hint" }, `Showing the first ${limit}.`);
  const list = new KeyedList<Job>(t.body, (j) => j.id, (first) => jobRow(ctx, first));
  filter.addEventListener("change", () => ctx.refresh());
  return {
    el: section("Jobs", h("div", { class: "toolbar" }, h("label", { for: "job-status" }, "Status"), filter, purge), t.el, more),
    async refresh() {
      const status = filter.value;
      const page = await ctx.client.listJobs(semaphore, { status: status || undefined, limit });
      if (filter.value !== status) return; // changed meanwhile: the next refresh shows it
      list.set(page.items);
      show(t.empty, page.items.length === 0);
      show(more, page.nextCursor !== "");
    },
  };
}

function jobRow(ctx: Ctx, first: Job): { el: HTMLElement; update(j: Job): void } {
  const status = h("span", { class: "badge status" });
  const attempts = h("span");
  const route = h("span");
  const error = h("span", { class: "error-text" });
  const updated = h("span");
  const runAt = h("span", { class: "run-at" });
  const requeue = action(ctx, "Requeue", async () => {
    await ctx.client.requeueJob(first.id);
    ctx.notify.ok(`Job ${short(first.id)} requeued.`);
  }, { class: "small primary" });
  const cancel = action(ctx, "Cancel", async () => {
    await ctx.client.cancelJob(first.id);
    ctx.notify.ok(`Job ${short(first.id)} cancelled.`);
  }, { class: "small warn", confirm: "Cancel it?" });
  const el = h(
    "tr",
    { "data-id": first.id },
    td("Job", h("code", { title: first.id }, short(first.id))),
    td("Channel", first.channel || "—"),
    td("Status", status),
    td("Attempts", attempts),
    td("Route", route),
    td("Error", error),
    td("Updated", updated),
    td("Runs", runAt),
    td("", h("span", { class: "actions" }, requeue, cancel)),
  );
  return {
    el,
    update(j) {
      el.dataset.status = j.status;
      text(status, j.status);
      status.dataset.status = j.status;
      text(attempts, String(j.attempts));
      text(route, j.route ?? "—");
      text(error, j.error ?? "");
      error.title = j.error ?? "";
      text(updated, relTime(j.updatedAt));
      // a scheduled job waiting for its time (a delay, or its retry backoff)
      text(runAt, j.runAt ? relTime(j.runAt) : "");
      runAt.title = j.runAt ?? "";
      show(requeue, finished.has(j.status));
      show(cancel, j.status === "scheduled" || j.status === "inflight");
    },
  };
}
