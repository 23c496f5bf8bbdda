// The simulator on the wire: its control API, each gateway's own shapes (auth, duplicates,
// idempotent replays, lists with time filters and paging), webhook delivery that never breaks a
// call, a close() that drops held sockets, and main.ts as a real process.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import * as path from "node:path";
import { Writable } from "node:stream";
import { after, before, beforeEach, describe, it } from "node:test";
import { pino } from "pino";
import { pause } from "../runtime/pause.js";
import { freePorts } from "../runtime/testing.js";
import { simulatorControl, type SimulatorControl } from "./control.js";
import { DEFAULT_SETTINGS, SimulatorCore } from "./core.js";
import { startSimulator, type RunningSimulator } from "./simulator.js";

const PAYSTACK_KEY = "sk_test_cowrie_simulator_paystack";
const FLUTTERWAVE_KEY = "FLWSECK_TEST-cowrie-simulator";
const STRIPE_KEY = "sk_test_cowrie_simulator_stripe";

let simulator: RunningSimulator;
let control: SimulatorControl;
const logged: string[] = [];

async function call(method: string, url: string, options: { key?: string; json?: unknown; form?: Record<string, string>; headers?: Record<string, string> } = {}) {
  const headers: Record<string, string> = { ...options.headers };
  if (options.key) headers.authorization = `Bearer ${options.key}`;
  let body: string | undefined;
  if (options.json !== undefined) {
    headers["content-type"] = "application/json";
    body = typeof options.json === "string" ? options.json : JSON.stringify(options.json);
  }
  if (options.form) {
    headers["content-type"] = "application/x-www-form-urlencoded";
    body = new URLSearchParams(options.form).toString();
  }
  const response = await fetch(`${simulator.url}${url}`, { method, headers, body, signal: AbortSignal.timeout(5_000) });
  const text = await response.text();
  let json: Record<string, any> = {};
  try {
    json = JSON.parse(text) as Record<string, any>;
  } catch {
    // not JSON (a 503 page)
  }
  return { status: response.status, headers: response.headers, json, text };
}

before(async () => {
  const sink = new Writable({
    write(chunk, _encoding, done) {
      logged.push(String(chunk));
      done();
    },
  });
  simulator = await startSimulator({ seed: 3, settings: { stripe: { pendingQueries: 1 } }, log: pino({ level: "warn" }, sink) });
  control = simulatorControl(simulator.url);
});

beforeEach(() => control.reset());

after(() => simulator.close());

describe("control API", () => {
  it("shows every gateway's settings and merges a partial update", async () => {
    const all = await control.gateways();
    assert.deepEqual(Object.keys(all), ["paystack", "flutterwave", "stripe"]);
    assert.deepEqual(all.paystack, DEFAULT_SETTINGS);
    assert.equal(all.stripe.pendingQueries, 1, "starting settings from the options");
    const updated = await control.configure("paystack", { errorRate: 0.5, latencyMs: { p99: 50 } });
    assert.deepEqual(updated, { ...DEFAULT_SETTINGS, errorRate: 0.5, latencyMs: { median: 5, p99: 50 } });
  });

  it("refuses a bad setting with 400 naming the field", async () => {
    const cases: [unknown, string][] = [
      [{ errorRate: 2 }, "errorRate"],
      [{ declineRate: "often" }, "declineRate"],
      [{ outage: "down" }, "outage"],
      [{ bogus: true }, "bogus"],
      [{ latencyMs: { median: "fast" } }, "latencyMs.median"],
      [{ latencyMs: { mean: 3 } }, "latencyMs.mean"],
      [{ latencyMs: { median: 50, p99: 10 } }, "latencyMs.p99"],
      [{ pendingQueries: 1.5 }, "pendingQueries"],
      [{ webhookUrl: "not a url" }, "webhookUrl"],
      [[], "body"],
      ["{not json", "body"],
    ];
    for (const [patch, field] of cases) {
      const answer = await call("PUT", "/_sim/gateways/stripe", { json: patch });
      assert.equal(answer.status, 400, JSON.stringify(patch));
      assert.equal(answer.json.field, field);
      assert.match(answer.json.error, new RegExp(`^${field.replace(".", "\\.")}: `));
    }
    assert.equal((await call("PUT", "/_sim/gateways/visa", { json: {} })).status, 404);
    assert.equal((await call("GET", "/_sim/records?gateway=visa")).json.field, "gateway");
    assert.equal((await call("GET", "/_sim/records?operation=capture")).json.field, "operation");
    assert.deepEqual((await control.gateways()).stripe.latencyMs, DEFAULT_SETTINGS.latencyMs, "nothing was applied");
  });

  it("reset clears records and returns to the starting settings", async () => {
    await control.configure("stripe", { pendingQueries: 7 });
    await call("POST", "/paystack/transaction/charge_authorization", {
      key: PAYSTACK_KEY,
      json: { email: "a@b.co", amount: 5000, authorization_code: "AUTH_ok", reference: "reset-1" },
    });
    assert.equal((await control.records()).length, 1);
    await control.reset();
    assert.deepEqual(await control.records(), []);
    assert.equal((await control.gateways()).stripe.pendingQueries, 1);
  });
});

describe("each gateway's contract", () => {
  it("refuses a wrong secret key in the gateway's own shape, recording nothing", async () => {
    const paystack = await call("POST", "/paystack/transaction/charge_authorization", { key: "sk_wrong", json: {} });
    assert.deepEqual([paystack.status, paystack.json.status], [401, false]);
    const flutterwave = await call("POST", "/flutterwave/v3/tokenized-charges", { key: "wrong", json: {} });
    assert.deepEqual([flutterwave.status, flutterwave.json.status], [401, "error"]);
    const stripe = await call("POST", "/stripe/v1/payment_intents", { form: {} });
    assert.deepEqual([stripe.status, stripe.json.error?.type], [401, "invalid_request_error"]);
    assert.deepEqual(await control.records(), []);
  });

  it("Paystack: refuses a reused reference, and lists with from/to and paging", async () => {
    const charge = (reference: string) =>
      call("POST", "/paystack/transaction/charge_authorization", {
        key: PAYSTACK_KEY,
        json: { email: "a@b.co", amount: "5000", authorization_code: "AUTH_ok", reference, currency: "NGN" },
      });
    const first = await charge("ps-1");
    assert.deepEqual([first.status, first.json.data.status, first.json.data.amount], [200, "success", 5000]);
    const again = await charge("ps-1");
    assert.deepEqual([again.status, again.json.message], [400, "Duplicate Transaction Reference"]);
    for (const reference of ["ps-2", "ps-3"]) await charge(reference);
    const unknown = await call("GET", "/paystack/transaction/verify/ps-404", { key: PAYSTACK_KEY });
    assert.deepEqual([unknown.status, unknown.json.message], [400, "Transaction reference not found"]);

    const page = await call("GET", "/paystack/transaction?perPage=2&page=1", { key: PAYSTACK_KEY });
    assert.deepEqual(page.json.data.map((item: { reference: string }) => item.reference), ["ps-3", "ps-2"]);
    assert.deepEqual(page.json.meta, { total: 3, skipped: 0, perPage: 2, page: 1, pageCount: 2 });
    const future = new Date(Date.now() + 60_000).toISOString();
    assert.equal((await call("GET", `/paystack/transaction?from=${future}`, { key: PAYSTACK_KEY })).json.data.length, 0);
    assert.equal((await call("GET", `/paystack/transaction?to=${future}`, { key: PAYSTACK_KEY })).json.data.length, 3);
    assert.equal((await control.records({ reference: "ps-1" })).length, 1);
  });

  it("Flutterwave: reads major-unit amounts exactly and pages its lists by 10", async () => {
    const charge = (txRef: string, amount: unknown, currency = "NGN") =>
      call("POST", "/flutterwave/v3/tokenized-charges", { key: FLUTTERWAVE_KEY, json: { token: "flw-t1", currency, amount, email: "a@b.co", tx_ref: txRef } });
    assert.equal((await charge("fw-ngn", 2500.5)).json.data.amount, 2500.5);
    assert.equal((await charge("fw-kwd", 1.234, "KWD")).status, 200);
    assert.equal((await charge("fw-ugx", 5000, "UGX")).status, 200);
    assert.equal((await charge("fw-bad", 2500.505)).status, 400, "a fraction of a kobo is refused");
    assert.equal((await charge("fw-ngn", 2500.5)).json.message.startsWith("Duplicate"), true);
    const amounts = (await control.records({ gateway: "flutterwave" })).map((record) => [record.reference, record.amountMinor]);
    assert.deepEqual(amounts, [["fw-ngn", "250050"], ["fw-kwd", "1234"], ["fw-ugx", "5000"]]);

    for (let index = 0; index < 11; index++) await charge(`fw-page-${index}`, 10);
    const second = await call("GET", "/flutterwave/v3/transactions?page=2", { key: FLUTTERWAVE_KEY });
    assert.deepEqual(second.json.meta.page_info, { total: 14, current_page: 2, total_pages: 2 });
    assert.equal(second.json.data.length, 4);
    const tomorrow = new Date(Date.now() + 86_400_000).toISOString().slice(0, 10);
    assert.equal((await call("GET", `/flutterwave/v3/transactions?from=${tomorrow}`, { key: FLUTTERWAVE_KEY })).json.data.length, 0);
    const missing = await call("GET", "/flutterwave/v3/transactions/verify_by_reference?tx_ref=nope", { key: FLUTTERWAVE_KEY });
    assert.match(missing.json.message, /No transaction was found/);
  });

  it("Stripe: replays a reused Idempotency-Key, refuses it with other parameters, and creates twice without one", async () => {
    const form = { amount: "2000", currency: "usd", payment_method: "pm_card_visa", confirm: "true", "metadata[cowrie_reference]": "st-1" };
    const first = await call("POST", "/stripe/v1/payment_intents", { key: STRIPE_KEY, form, headers: { "idempotency-key": "st-1" } });
    const replay = await call("POST", "/stripe/v1/payment_intents", { key: STRIPE_KEY, form, headers: { "idempotency-key": "st-1" } });
    assert.deepEqual([first.status, first.json.status], [200, "succeeded"]);
    assert.deepEqual([replay.json.id, replay.headers.get("idempotent-replayed")], [first.json.id, "true"]);
    const changed = await call("POST", "/stripe/v1/payment_intents", { key: STRIPE_KEY, form: { ...form, amount: "2001" }, headers: { "idempotency-key": "st-1" } });
    assert.deepEqual([changed.status, changed.json.error.type], [400, "idempotency_error"]);
    assert.equal((await control.records({ reference: "st-1" })).length, 1);

    const unkeyed = { ...form, "metadata[cowrie_reference]": "st-2" };
    await call("POST", "/stripe/v1/payment_intents", { key: STRIPE_KEY, form: unkeyed });
    await call("POST", "/stripe/v1/payment_intents", { key: STRIPE_KEY, form: unkeyed });
    assert.equal((await control.records({ reference: "st-2" })).length, 2, "Stripe without a key charges twice: connectors must send one");

    const declined = await call("POST", "/stripe/v1/payment_intents", { key: STRIPE_KEY, form: { ...form, payment_method: "decline_insufficient_funds", "metadata[cowrie_reference]": "st-3" } });
    assert.deepEqual([declined.status, declined.json.error.type, declined.json.error.decline_code], [402, "card_error", "insufficient_funds"]);

    const page = await call("GET", "/stripe/v1/payment_intents?limit=2", { key: STRIPE_KEY });
    assert.deepEqual([page.json.object, page.json.has_more, page.json.data.length], ["list", true, 2]);
    const rest = await call("GET", `/stripe/v1/payment_intents?limit=2&starting_after=${page.json.data[1].id}`, { key: STRIPE_KEY });
    assert.deepEqual([rest.json.has_more, rest.json.data.length], [false, 2]);
    const later = Math.floor(Date.now() / 1000) + 60;
    assert.equal((await call("GET", `/stripe/v1/payment_intents?created[gte]=${later}`, { key: STRIPE_KEY })).json.data.length, 0);
    const found = await call("GET", `/stripe/v1/payment_intents/search?query=${encodeURIComponent("metadata['cowrie_reference']:'st-3'")}`, { key: STRIPE_KEY });
    assert.deepEqual(found.json.data.map((item: { status: string }) => item.status), ["requires_payment_method"]);
  });
});

describe("behaviour", () => {
  it("answers 503 at once during an unavailable outage, status endpoints included", async () => {
    await control.configure("paystack", { outage: "unavailable" });
    const answer = await call("GET", "/paystack/transaction/verify/x", { key: PAYSTACK_KEY });
    assert.equal(answer.status, 503);
    assert.match(answer.text, /503/);
  });

  it("drops a webhook it cannot deliver, logs it, and still answers the call", async () => {
    await control.configure("paystack", { webhookUrl: `http://127.0.0.1:${(await freePorts(1))[0]}/hooks` });
    const answer = await call("POST", "/paystack/transaction/charge_authorization", {
      key: PAYSTACK_KEY,
      json: { email: "a@b.co", amount: 5000, authorization_code: "AUTH_ok", reference: "hook-lost" },
    });
    assert.equal(answer.status, 200);
    for (let waited = 0; waited < 100 && !logged.some((line) => line.includes("webhook not delivered")); waited++) {
      await pause(20);
    }
    assert.ok(logged.some((line) => line.includes("webhook not delivered")));
  });

  it("draws latency from a seeded log-normal with the configured median and p99", () => {
    const draw = (seed: number) => {
      const core = new SimulatorCore({ paystack: { latencyMs: { median: 20, p99: 100 } } }, seed);
      return Array.from({ length: 4_000 }, () => core.latencyMs("paystack")).sort((a, b) => a - b);
    };
    const samples = draw(42);
    assert.deepEqual(samples, draw(42), "the same seed gives the same run");
    const median = samples[2_000] ?? 0;
    const p99 = samples[3_960] ?? 0;
    assert.ok(median > 17 && median < 23, `median ${median}`);
    assert.ok(p99 > 75 && p99 < 130, `p99 ${p99}`);
  });

  it("close() destroys a held ambiguous answer instead of waiting for it", async () => {
    const own = await startSimulator();
    const pending = fetch(`${own.url}/paystack/transaction/charge_authorization`, {
      method: "POST",
      headers: { authorization: `Bearer ${PAYSTACK_KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ email: "a@b.co", amount: 5000, authorization_code: "ambiguous", reference: "held" }),
    });
    const outcome = pending.then(() => "answered", () => "destroyed");
    await pause(100);
    const startedMs = performance.now();
    await own.close();
    assert.ok(performance.now() - startedMs < 1_000);
    assert.equal(await outcome, "destroyed");
  });
});

describe("main.ts", () => {
  it("starts as a process on COWRIE_SIMULATOR_PORT, answers, and stops on SIGTERM", async () => {
    const [port] = await freePorts(1);
    const root = path.resolve(import.meta.dirname, "../..");
    const child = spawn(process.execPath, ["--import", "tsx", "services/simulator/main.ts"], {
      cwd: root,
      env: { ...process.env, COWRIE_SIMULATOR_PORT: String(port), COWRIE_LOG_LEVEL: "warn" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    try {
      let stderr = "";
      child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
      for (let waited = 0; waited < 200 && !stderr.includes("listening on"); waited++) await pause(50);
      assert.match(stderr, new RegExp(`listening on http://127\\.0\\.0\\.1:${port}`));
      const settings = await fetch(`http://127.0.0.1:${port}/_sim/gateways`);
      assert.equal(settings.status, 200);
      const verify = await fetch(`http://127.0.0.1:${port}/paystack/transaction/verify/none`, { headers: { authorization: `Bearer ${PAYSTACK_KEY}` } });
      assert.equal(verify.status, 400);
      child.kill("SIGTERM");
      const [code] = (await once(child, "exit")) as [number | null];
      assert.equal(code, 0);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
    }
  });
});
