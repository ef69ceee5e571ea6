// A semaphore's live leases, oldest first, each with a release button.

import type { Lease } from "../../sdk/js/src/types.js";
import { KeyedList, h, relTime, short, show, table, td, text } from "./dom.js";
import { action, section, type Ctx } from "./ui.js";

const limit = 100;

export function leasesPanel(ctx: Ctx, semaphore: string): { el: HTMLElement; refresh(): Promise<void> } {
  const t = table(["Lease", "Channel", "Weight", "Fencing token", "Acquired", "Expires", ""], "No lease is held.");
  t.body.id = "leases";
  const more = h("p", { class: "hint" }, `Showing the oldest ${limit}.`);
  const list = new KeyedList<Lease>(
    t.body,
    (l) => l.id,
    (first) => {
      const acquired = h("span");
      const expires = h("span");
      const release = action(ctx, "Release", async () => {
        await ctx.client.release(first.id);
        ctx.notify.ok(`Lease ${short(first.id)} released.`);
      }, { confirm: "Release now?", class: "small" });
      const el = h(
        "tr",
        { "data-id": first.id },
        td("Lease", h("code", { title: first.id }, short(first.id))),
        td("Channel", first.channel || "—"),
        td("Weight", String(first.weight)),
        td("Fencing token", String(first.fencingToken)),
        td("Acquired", acquired),
        td("Expires", expires),
        td("", release),
      );
      return {
        el,
        update(l) {
          text(acquired, relTime(l.acquiredAt));
          text(expires, relTime(l.expiresAt));
        },
      };
    },
  );
  return {
    el: section("Leases held", t.el, more),
    async refresh() {
      const page = await ctx.client.listLeases(semaphore, { limit });
      list.set(page.items);
      show(t.empty, page.items.length === 0);
      show(more, page.nextCursor !== "");
    },
  };
}
