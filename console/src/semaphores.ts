// The semaphores screen (admin and operator keys): every semaphore of the
// tenant with its usage, in total and per channel, a page at a time.

import type { ChannelState, Semaphore } from "../../sdk/js/src/types.js";
import { KeyedList, bar, h, show, table, td, text } from "./dom.js";
import { section, type Ctx, type View } from "./ui.js";

const pageSize = 100;

/** A line of the table: a semaphore, or one channel of it. */
interface Line {
  key: string;
  sem: Semaphore;
  channel?: string;
  state: ChannelState;
}

export function semaphoresView(ctx: Ctx): View {
  const t = table(["Semaphore", "In use / max", "Waiting", "Queued", "Inflight", "Rate", "State"], "No semaphores yet. Create one with PUT /v1/semaphores/{name}.");
  t.body.classList.add("semaphores");
  const count = h("span", { class: "count" });
  const prev = h("button", { type: "button" }, "← Previous");
  const next = h("button", { type: "button" }, "Next →");
  const pager = h("div", { class: "pager" }, prev, next);
  const cursors: string[] = [""]; // cursors[i] opens page i
  let page = 0;
  let nextCursor = "";
  prev.addEventListener("click", () => {
    if (page > 0) page--;
    ctx.refresh();
  });
  next.addEventListener("click", () => {
    if (!nextCursor) return;
    cursors[page + 1] = nextCursor;
    page++;
    ctx.refresh();
  });

  const list = new KeyedList<Line>(t.body, (l) => l.key, (l) => (l.channel === undefined ? semaphoreRow(l) : channelRow(l)));
  const el = h("div", { class: "view" }, section("Semaphores", count, t.el, pager));

  return {
    el,
    async refresh() {
      const res = await ctx.client.listSemaphores({ cursor: cursors[page], limit: pageSize, state: true });
      nextCursor = res.nextCursor;
      const lines: Line[] = [];
      for (const sem of res.items) {
        if (!sem.state) continue;
        lines.push({ key: sem.name, sem, state: sem.state });
        const chans = Object.keys(sem.state.channels).sort();
        // A lone default channel says nothing the semaphore's line does not.
        if (chans.length === 1 && chans[0] === "default") continue;
        for (const ch of chans) {
          lines.push({ key: `${sem.name}\u0000${ch}`, sem, channel: ch, state: sem.state.channels[ch] });
        }
      }
      list.set(lines);
      show(t.empty, res.items.length === 0 && page === 0);
      text(count, res.items.length === 0 ? "" : `${page * pageSize + 1}–${page * pageSize + res.items.length}${nextCursor ? "" : ` of ${page * pageSize + res.items.length}`}`);
      show(pager, page > 0 || nextCursor !== "");
      prev.disabled = page === 0;
      next.disabled = nextCursor === "";
    },
  };
}

/** usageCells are the columns a semaphore and a channel share. */
function usageCells(): { cells: HTMLTableCellElement[]; update(l: Line): void } {
  const b = bar();
  const used = h("span", { class: "usage-text" });
  const waiting = h("span");
  const queued = h("span");
  const inflight = h("span");
  const rate = h("span");
  return {
    cells: [
      td("In use / max", h("span", { class: "usage" }, b.el, used)),
      td("Waiting", waiting),
      td("Queued", queued),
      td("Inflight", inflight),
      td("Rate", rate),
    ],
    update(l) {
      const max = l.sem.maxValue;
      // With maxValueScope "channel" the max holds per channel, not in total.
      const perChannel = l.sem.maxValueScope === "channel" && l.channel === undefined;
      b.set(l.state.inUse, max);
      show(b.el, !perChannel);
      text(used, perChannel ? `${l.state.inUse} (≤ ${max} per channel)` : `${l.state.inUse} / ${max}`);
      text(waiting, String(l.state.waiting));
      text(queued, String(l.state.queued));
      text(inflight, String(l.state.inflight));
      text(rate, rateText(l.sem, l.state));
    },
  };
}

/** rateText is the rate window's use, "—" without a rate. */
export function rateText(sem: Semaphore, st: ChannelState): string {
  if (!sem.rate) return "—";
  return `${st.rateUsed} / ${sem.rate.limit} per ${sem.rate.period}`;
}

function semaphoreRow(first: Line): { el: HTMLElement; update(l: Line): void } {
  const link = h("a", { href: `#/semaphores/${encodeURIComponent(first.sem.name)}` }, first.sem.name);
  const u = usageCells();
  const state = h("span", { class: "badge" });
  const el = h("tr", { class: "semaphore", "data-name": first.sem.name }, td("Semaphore", link), ...u.cells, td("State", state));
  return {
    el,
    update(l) {
      u.update(l);
      text(state, l.sem.suspended ? "suspended" : "active");
      state.classList.toggle("warn", l.sem.suspended);
    },
  };
}

function channelRow(first: Line): { el: HTMLElement; update(l: Line): void } {
  const u = usageCells();
  const el = h(
    "tr",
    { class: "channel", "data-name": first.sem.name, "data-channel": first.channel ?? "" },
    td("Channel", h("span", { class: "channel-name" }, `↳ ${first.channel}`)),
    ...u.cells,
    td("State", ""),
  );
  return { el, update: (l) => u.update(l) };
}
