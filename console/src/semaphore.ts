// One semaphore's screen: its usage and settings (admin and operator keys),
// its leases and its jobs (every role).

import type { ChannelState, Semaphore, SemaphoreConfig } from "../../sdk/js/src/types.js";
import { KeyedList, bar, h, show, table, td, text } from "./dom.js";
import { jobsPanel } from "./jobs.js";
import { leasesPanel } from "./leases.js";
import { rateText } from "./semaphores.js";
import { action, onSubmit, section, type Ctx, type View } from "./ui.js";

export function semaphoreView(ctx: Ctx, name: string): View {
  const admin = ctx.me.role !== "worker";
  const leases = leasesPanel(ctx, name);
  const jobs = jobsPanel(ctx, name);
  const back = admin ? h("a", { href: "#/semaphores", class: "back" }, "← Semaphores") : h("a", { href: "#/", class: "back" }, "← Look up another semaphore");
  const title = h("h1", {}, name, " ");
  const parts: HTMLElement[] = [back, title];
  let refreshUsage: (() => Promise<void>) | null = null;
  if (admin) {
    const usage = usagePanel(ctx, name);
    const badge = h("span", { class: "badge", id: "semaphore-state" });
    title.append(badge);
    parts.push(usage.el);
    refreshUsage = async () => {
      const sem = await ctx.client.getSemaphore(name);
      text(badge, sem.suspended ? "suspended" : "active");
      badge.classList.toggle("warn", sem.suspended);
      usage.update(sem);
    };
  } else {
    parts.push(h("p", { class: "hint" }, "A worker key sees this semaphore's leases and jobs; its usage and settings need an admin key."));
  }
  parts.push(leases.el, jobs.el);
  return {
    el: h("div", { class: "view" }, ...parts),
    async refresh() {
      await Promise.all([refreshUsage?.(), leases.refresh(), jobs.refresh()]);
    },
  };
}

interface ChannelLine {
  name: string;
  state: ChannelState;
  sem: Semaphore;
}

/** usagePanel shows the totals and channels, and the settings an admin may change. */
function usagePanel(ctx: Ctx, name: string): { el: HTMLElement; update(sem: Semaphore): void } {
  const b = bar();
  const nums: Record<string, HTMLElement> = {};
  const rateLabel = h("span");
  const stat = (key: string, label: string): HTMLElement => {
    nums[key] = h("strong", { id: `stat-${key}` });
    return h("div", { class: "stat" }, nums[key], key === "rate" ? rateLabel : h("span", {}, label));
  };
  const stats = h(
    "div",
    { class: "stats" },
    stat("inUse", "in use"),
    stat("available", "available"),
    stat("waiting", "waiting"),
    stat("queued", "queued"),
    stat("inflight", "inflight"),
    stat("rate", "rate used"),
  );

  const t = table(["Channel", "In use", "Available", "Waiting", "Queued", "Inflight", "Rate"], "No channel in use.");
  const channels = new KeyedList<ChannelLine>(
    t.body,
    (l) => l.name,
    (first) => {
      const cells = ["inUse", "available", "waiting", "queued", "inflight"].map(() => h("span"));
      const rate = h("span");
      const labels = ["In use", "Available", "Waiting", "Queued", "Inflight"];
      const el = h("tr", { "data-channel": first.name }, td("Channel", first.name), ...cells.map((c, i) => td(labels[i], c)), td("Rate", rate));
      return {
        el,
        update(l) {
          const st = l.state;
          [st.inUse, st.available, st.waiting, st.queued, st.inflight].forEach((v, i) => text(cells[i], String(v)));
          text(rate, rateText(l.sem, st));
        },
      };
    },
  );

  // Settings: maxValue and suspend/resume. The field is not overwritten
  // while the user edits it.
  const maxInput = h("input", { type: "number", min: "1", max: "1000000000", step: "1", id: "max-value", required: true, inputmode: "numeric" });
  let editing = false;
  maxInput.addEventListener("input", () => (editing = true));
  const save = h("button", { type: "submit", class: "primary" }, "Save");
  const form = h("form", { class: "inline", id: "max-value-form" }, h("label", { for: "max-value" }, "maxValue"), maxInput, save);
  onSubmit(ctx, form, async () => {
    const v = Number(maxInput.value);
    if (!Number.isInteger(v) || v < 1) throw new Error("maxValue must be a whole number of at least 1.");
    // PUT replaces the whole config: start from the config as it is now,
    // not as the last refresh saw it, so that a change made meanwhile
    // elsewhere is kept (the window left is one round trip).
    const now = await ctx.client.getSemaphore(name);
    const s = await ctx.client.putSemaphore(name, { ...configOf(now), maxValue: v });
    editing = false;
    ctx.notify.ok(`maxValue of ${name} is now ${s.maxValue}.`);
  });
  const suspend = action(ctx, "Suspend", () => ctx.client.suspend(name), { class: "warn", title: "Stop dispatching queued jobs (jobs are still accepted)" });
  suspend.id = "suspend";
  const resume = action(ctx, "Resume", () => ctx.client.resume(name), { class: "primary", title: "Dispatch queued jobs again" });
  resume.id = "resume";
  const settings = h("div", { class: "settings" }, form, suspend, resume);

  const el = section("Usage", h("div", { class: "usage big" }, b.el, h("span", { class: "usage-text", id: "usage-text" })), stats, t.el, settings);
  return {
    el,
    update(sem) {
      const st = sem.state!;
      const perChannel = sem.maxValueScope === "channel";
      b.set(st.inUse, sem.maxValue);
      show(b.el, !perChannel);
      text(el.querySelector("#usage-text")!, perChannel ? `${st.inUse} in use, at most ${sem.maxValue} per channel` : `${st.inUse} / ${sem.maxValue} in use`);
      for (const k of ["inUse", "available", "waiting", "queued", "inflight"] as const) text(nums[k], String(st[k]));
      text(nums.rate, sem.rate ? `${st.rateUsed} / ${sem.rate.limit}` : "—");
      text(rateLabel, sem.rate ? `rate used per ${sem.rate.period}` : "no rate");
      channels.set(
        Object.keys(st.channels)
          .sort()
          .map((ch) => ({ name: ch, state: st.channels[ch], sem })),
      );
      show(t.empty, channels.size === 0);
      if (!editing && document.activeElement !== maxInput) maxInput.value = String(sem.maxValue);
      show(suspend, !sem.suspended);
      show(resume, sem.suspended);
    },
  };
}

/** configOf is the config of a semaphore as PUT takes it back, so that a
 * change of maxValue keeps everything else. */
function configOf(s: Semaphore): SemaphoreConfig {
  return {
    maxValue: s.maxValue,
    maxValueScope: s.maxValueScope as SemaphoreConfig["maxValueScope"],
    leaseTimeout: s.leaseTimeout,
    maxAttempts: s.maxAttempts,
    onSessionLost: s.onSessionLost as SemaphoreConfig["onSessionLost"],
    onDeliveryError: s.onDeliveryError as SemaphoreConfig["onDeliveryError"],
    routes: s.routes,
    mapping: s.mapping ?? undefined,
    rate: s.rate,
  };
}
