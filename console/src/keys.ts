// Keys (admin and operator keys) and tenants (operator keys): the lists,
// revocation, and creation with the secret shown once.

import type { Key, Role, Tenant } from "../../sdk/js/src/types.js";
import { KeyedList, h, relTime, show, table, td } from "./dom.js";
import { action, onSubmit, section, type Ctx, type View } from "./ui.js";

/** secretBox shows a new secret once, with the warning that goes with it. */
function secretBox(): { el: HTMLElement; set(label: string, secret: string): void } {
  const code = h("code", { class: "secret", id: "new-secret" });
  const label = h("span");
  const el = h("div", { class: "notice ok secret-box", hidden: true }, label, code, h("small", {}, "Copy it now: it is not shown again."));
  return {
    el,
    set(l, secret) {
      label.textContent = l;
      code.textContent = secret;
      el.hidden = false;
    },
  };
}

export function keysView(ctx: Ctx): View {
  const t = table(["Name", "Role", "Prefix", "Created", "Id", ""], "No key.");
  t.body.id = "keys";
  const list = new KeyedList<Key>(
    t.body,
    (k) => k.id,
    (k) => {
      const own = k.id === ctx.me.id;
      const revoke = action(ctx, "Revoke", async () => {
        await ctx.client.deleteKey(k.id);
        ctx.notify.ok(`Key ${k.name} revoked.`);
      }, { confirm: own ? "Revoke your own key?" : "Revoke now?", class: "small warn" });
      const created = h("span");
      const el = h(
        "tr",
        { "data-id": k.id, "data-name": k.name },
        td("Name", k.name, own ? h("span", { class: "badge" }, "this key") : null),
        td("Role", k.role),
        td("Prefix", h("code", {}, `${k.prefix}…`)),
        td("Created", created),
        td("Id", h("code", {}, k.id)),
        td("", revoke),
      );
      return { el, update: (k2) => (created.textContent = relTime(k2.createdAt)) };
    },
  );

  const roles: Role[] = ctx.me.role === "operator" ? ["worker", "admin", "operator"] : ["worker", "admin"];
  const nameInput = h("input", { id: "key-name", required: true, maxlength: "128", placeholder: "e.g. billing workers", autocomplete: "off" });
  const roleSelect = h("select", { id: "key-role" }, ...roles.map((r) => h("option", { value: r }, r)));
  const create = h("button", { type: "submit", class: "primary" }, "Create key");
  const secret = secretBox();
  const form = h("form", { class: "inline", id: "key-form" }, h("label", { for: "key-name" }, "Name"), nameInput, h("label", { for: "key-role" }, "Role"), roleSelect, create);
  onSubmit(ctx, form, async () => {
    const k = await ctx.client.createKey(roleSelect.value as Role, nameInput.value.trim());
    secret.set(`The secret of ${k.name} (${k.role}): `, k.secret ?? "");
    nameInput.value = "";
  });

  return {
    el: h("div", { class: "view" }, section("API keys", t.el), section("New key", form, secret.el)),
    async refresh() {
      const keys = await ctx.client.listKeys();
      list.set(keys);
      show(t.empty, keys.length === 0);
    },
  };
}

export function tenantsView(ctx: Ctx): View {
  const t = table(["Tenant", "Created"], "No tenant.");
  t.body.id = "tenants";
  const list = new KeyedList<Tenant>(
    t.body,
    (x) => x.id,
    (x) => {
      const created = h("span");
      const el = h("tr", { "data-id": x.id }, td("Tenant", x.name, x.id === ctx.me.tenant ? h("span", { class: "badge" }, "yours") : null), td("Created", created));
      return { el, update: (x2) => (created.textContent = relTime(x2.createdAt)) };
    },
  );
  const nameInput = h("input", { id: "tenant-name", required: true, maxlength: "64", placeholder: "e.g. acme", autocomplete: "off" });
  const create = h("button", { type: "submit", class: "primary" }, "Create tenant");
  const secret = secretBox();
  const form = h("form", { class: "inline", id: "tenant-form" }, h("label", { for: "tenant-name" }, "Name"), nameInput, create);
  onSubmit(ctx, form, async () => {
    const r = await ctx.client.createTenant(nameInput.value.trim());
    secret.set(`The admin key of ${r.tenant.name}: `, r.key.secret ?? "");
    nameInput.value = "";
  });
  return {
    el: h("div", { class: "view" }, section("Tenants", t.el), section("New tenant", form, secret.el)),
    async refresh() {
      const tenants = await ctx.client.listTenants();
      list.set(tenants);
      show(t.empty, tenants.length === 0);
    },
  };
}

/** lookupView is a worker key's first screen: it may not list semaphores,
 * so it names the one it wants to see. */
export function lookupView(_ctx: Ctx): View {
  const input = h("input", { id: "lookup-name", required: true, placeholder: "semaphore name", autocomplete: "off" });
  const form = h("form", { class: "inline", id: "lookup-form" }, h("label", { for: "lookup-name" }, "Semaphore"), input, h("button", { type: "submit", class: "primary" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.hash = `#/semaphores/${encodeURIComponent(input.value.trim())}`;
  });
  return {
    el: h(
      "div",
      { class: "view" },
      section("Look up a semaphore", h("p", { class: "hint" }, "A worker key may see the leases and jobs of a semaphore it names, and act on them; listing semaphores, keys and tenants needs an admin key."), form),
    ),
    refresh: async () => {},
  };
}
