// The three connectors against a real simulator on an ephemeral port: every outcome, failure and
// webhook the Router relies on, proved the same way for each gateway. The simulator's records
// (its control API) are the evidence that a retried or ambiguous charge never happened twice.
import assert from "node:assert/strict";
import * as http from "node:http";
import * as net from "node:net";
import { after, before, beforeEach, describe, it } from "node:test";
import fc from "fast-check";
import { gatewayConfig, loadConfig } from "../../runtime/config.js";
import { pause } from "../../runtime/pause.js";
import { freePorts } from "../../runtime/testing.js";
import { simulatorControl, type SimulatorControl } from "../../simulator/control.js";
import { startSimulator, type RunningSimulator } from "../../simulator/simulator.js";
import { GATEWAY_NAMES, type BankAccount, type Connector, type GatewayName, type GatewayResult, type Operation } from "./connector.js";
import { MAJOR_EXACT_MAX_MINOR, majorToMinor, minorToMajor } from "./flutterwave/connector.js";
import { parseRetryAfter, transportResult } from "./http.js";
import { CONNECTOR_FACTORIES, createConnectors } from "./index.js";

const DEFAULTS = loadConfig({});
const OPTIONS = { timeoutMs: 2_000 };

const NIGERIAN_ACCOUNT: BankAccount = { bankCode: "058", accountNumber: "0123456789", accountName: "Ada Obi", country: "NG" };
const SETUP: Record<GatewayName, { currency: string; bankAccount: BankAccount }> = {
  paystack: { currency: "NGN", bankAccount: NIGERIAN_ACCOUNT },
  flutterwave: { currency: "NGN", bankAccount: NIGERIAN_ACCOUNT },
  stripe: { currency: "USD", bankAccount: { bankCode: "110000000", accountNumber: "ba_sim_ada", accountName: "Ada Lovelace", country: "US" } },
};

let simulator: RunningSimulator;
let control: SimulatorControl;
let receiver: http.Server;
let receiverUrl: string;
const delivered: { path: string; headers: Record<string, string | undefined>; body: string }[] = [];

function connectorAt(name: GatewayName, baseUrl: string): Connector {
  return CONNECTOR_FACTORIES[name]({ ...gatewayConfig(DEFAULTS, name), baseUrl });
}

let serial = 0;
/** Paystack allows letters, digits, "-", "." and "=" in references. */
const newReference = (label: string) => `t-${label}-${process.pid}-${++serial}`;

function chargeOf(name: GatewayName, reference: string, paymentMethod = "tok_ok", amountMinor = 250_050n) {
  return { reference, amountMinor, currency: SETUP[name].currency, paymentMethod, customerEmail: "ada@example.com", description: "order 1" };
}

function payoutOf(name: GatewayName, reference: string, accountNumber?: string) {
  const bankAccount = { ...SETUP[name].bankAccount, ...(accountNumber ? { accountNumber } : {}) };
  return { reference, amountMinor: 100_000n, currency: SETUP[name].currency, bankAccount, description: "payout 1" };
}

/** What the Router does with a pending or ambiguous answer: ask until it is final (bounded). */
async function settle(connector: Connector, operation: Operation, reference: string, first: GatewayResult): Promise<GatewayResult> {
  let result = first;
  for (let asked = 0; asked < 10 && result.action === "query_status"; asked++) result = await connector.status(operation, reference, OPTIONS);
  return result;
}

function assertResult(result: GatewayResult, outcome: GatewayResult["outcome"], code: GatewayResult["code"], action: GatewayResult["action"]): void {
  assert.deepEqual({ outcome: result.outcome, code: result.code, action: result.action }, { outcome, code, action }, JSON.stringify(result));
}

async function waitForWebhook(path: string, contains: string): Promise<(typeof delivered)[number]> {
  for (let waited = 0; waited < 100; waited++) {
    const hit = delivered.find((item) => item.path === path && item.body.includes(contains));
    if (hit) return hit;
    await pause(20);
  }
  assert.fail(`no webhook at ${path} mentioning ${contains}`);
}

before(async () => {
  simulator = await startSimulator({ seed: 11 });
  control = simulatorControl(simulator.url);
  receiver = http.createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => {
      const headers = Object.fromEntries(Object.entries(request.headers).map(([key, value]) => [key, Array.isArray(value) ? value.join(",") : value]));
      delivered.push({ path: request.url ?? "", headers, body: Buffer.concat(chunks).toString() });
      response.end("ok");
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, "127.0.0.1", resolve));
  receiverUrl = `http://127.0.0.1:${(receiver.address() as net.AddressInfo).port}`;
});

beforeEach(() => control.reset());

after(async () => {
  await simulator.close();
  await new Promise((resolve) => receiver.close(resolve));
});

describe("createConnectors()", () => {
  it("builds one connector per gateway, pointed at the simulator by default", () => {
    const connectors = createConnectors(DEFAULTS);
    assert.deepEqual([...connectors.keys()], [...GATEWAY_NAMES]);
    for (const [name, connector] of connectors) {
      assert.equal(connector.name, name);
      for (const currency of connector.capabilities.currencies) {
        assert.ok((connector.capabilities.maxAmountMinor[currency] ?? 0n) > 0n, `${name} has a ceiling for ${currency}`);
      }
    }
    assert.ok(connectors.get("paystack")?.capabilities.currencies.has("NGN"));
    assert.ok(!connectors.get("stripe")?.capabilities.currencies.has("KES"));
  });
});

for (const name of GATEWAY_NAMES) {
  describe(`${name} connector`, () => {
    const connector = () => connectorAt(name, `${simulator.url}/${name}`);
    const records = (reference: string, operation: Operation = "charge") => control.records({ gateway: name, operation, reference });

    it("charges, and status finds the charge", async () => {
      const reference = newReference("ok");
      const charged = await connector().charge(chargeOf(name, reference), OPTIONS);
      assertResult(charged, "succeeded", "approved", "none");
      assert.ok(charged.gatewayId);
      const status = await connector().status("charge", reference, OPTIONS);
      assertResult(status, "succeeded", "approved", "none");
      assert.equal(status.gatewayId, charged.gatewayId);
      assert.deepEqual((await records(reference)).map((record) => [record.status, record.amountMinor]), [["succeeded", "250050"]]);
    });

    it("declines each deterministic trigger with its unified code, recorded once", async () => {
      for (const reason of ["insufficient_funds", "expired_card", "suspected_fraud", "account_blocked", "card_declined"] as const) {
        const reference = newReference(reason);
        const declined = await connector().charge(chargeOf(name, reference, `decline_${reason}`), OPTIONS);
        assertResult(declined, "declined", reason, "stop");
        assertResult(await connector().status("charge", reference, OPTIONS), "declined", reason, "stop");
        assert.deepEqual((await records(reference)).map((record) => [record.status, record.declineCode]), [["failed", reason]]);
      }
    });

    it("never records a second charge for a retried reference", async () => {
      const reference = newReference("retry");
      const first = await connector().charge(chargeOf(name, reference), OPTIONS);
      const second = await connector().charge(chargeOf(name, reference), OPTIONS);
      if (name === "stripe") {
        assertResult(second, "succeeded", "approved", "none"); // the Idempotency-Key replays the first answer
        assert.equal(second.gatewayId, first.gatewayId);
      } else {
        assertResult(second, "error", "duplicate_reference", "query_status");
        assertResult(await settle(connector(), "charge", reference, second), "succeeded", "approved", "none");
      }
      assert.equal((await records(reference)).length, 1);
    });

    it("times out an ambiguous charge at timeoutMs, and status then finds it succeeded", async () => {
      const reference = newReference("ambiguous");
      const startedMs = performance.now();
      const result = await connector().charge(chargeOf(name, reference, "ambiguous"), { timeoutMs: 300 });
      const elapsedMs = performance.now() - startedMs;
      assertResult(result, "error", "gateway_timeout", "query_status");
      assert.ok(elapsedMs >= 250 && elapsedMs < 1_500, `took ${elapsedMs} ms`);
      assertResult(await connector().status("charge", reference, OPTIONS), "succeeded", "approved", "none");
      const retried = await connector().charge(chargeOf(name, reference, "ambiguous"), OPTIONS);
      assert.equal(retried.code, name === "stripe" ? "approved" : "duplicate_reference");
      assert.deepEqual((await records(reference)).map((record) => record.status), ["succeeded"]);
    });

    it("fails over from an unavailable gateway, which records nothing", async () => {
      await control.configure(name, { outage: "unavailable" });
      const reference = newReference("down");
      const result = await connector().charge(chargeOf(name, reference), OPTIONS);
      assertResult(result, "error", "gateway_unavailable", "failover");
      assert.equal(result.httpStatus, 503);
      assert.equal((await connector().status("charge", reference, OPTIONS)).code, "gateway_unavailable");
      assert.deepEqual(await control.records({ gateway: name }), []);
    });

    it("gives up on a hung gateway within timeoutMs, as an ambiguous timeout", async () => {
      await control.configure(name, { outage: "hang" });
      const startedMs = performance.now();
      const result = await connector().charge(chargeOf(name, newReference("hang")), { timeoutMs: 200 });
      assertResult(result, "error", "gateway_timeout", "query_status");
      assert.ok(performance.now() - startedMs < 700);
      assert.deepEqual(await control.records({ gateway: name }), []);
    });

    it("fails over when the connection is refused", async () => {
      const result = await connectorAt(name, `http://127.0.0.1:${(await freePorts(1))[0]}/${name}`).charge(chargeOf(name, newReference("refused")), OPTIONS);
      assertResult(result, "error", "gateway_unreachable", "failover");
      assert.equal(result.gatewayCode, "ECONNREFUSED");
    });

    it("treats a socket closed mid-answer as ambiguous", async () => {
      const server = net.createServer((socket) => socket.once("data", () => socket.destroy()));
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      try {
        const { port } = server.address() as net.AddressInfo;
        const result = await connectorAt(name, `http://127.0.0.1:${port}/${name}`).charge(chargeOf(name, newReference("reset")), OPTIONS);
        assertResult(result, "error", "gateway_timeout", "query_status");
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
    });

    it("retries a 500, which recorded nothing, with the same reference", async () => {
      await control.configure(name, { errorRate: 1 });
      const reference = newReference("500");
      const failed = await connector().charge(chargeOf(name, reference), OPTIONS);
      assertResult(failed, "error", "gateway_error", "retry");
      assert.equal(failed.httpStatus, 500);
      assert.deepEqual(await records(reference), []);
      await control.configure(name, { errorRate: 0 });
      assertResult(await connector().charge(chargeOf(name, reference), OPTIONS), "succeeded", "approved", "none");
    });

    it("retries a 429 after Retry-After", async () => {
      await control.configure(name, { rateLimitRate: 1, retryAfterSeconds: 3 });
      const result = await connector().charge(chargeOf(name, newReference("429")), OPTIONS);
      assertResult(result, "error", "rate_limited", "retry");
      assert.equal(result.retryAfterMs, 3_000);
    });

    it("answers not_found for a reference the gateway never saw", async () => {
      for (const operation of ["charge", "payout", "refund"] as const) {
        assertResult(await connector().status(operation, newReference("unknown"), OPTIONS), "not_found", "not_found", "failover");
      }
    });

    it("settles a pending charge through status", async () => {
      const reference = newReference("pending");
      const first = await connector().charge(chargeOf(name, reference, "pending"), OPTIONS);
      assertResult(first, "pending", "processing", "query_status");
      assertResult(await settle(connector(), "charge", reference, first), "succeeded", "approved", "none");
    });

    it("pays out, and declines an account that does not resolve", async () => {
      const reference = newReference("payout");
      const paid = await settle(connector(), "payout", reference, await connector().payout(payoutOf(name, reference), OPTIONS));
      assertResult(paid, "succeeded", "approved", "none");
      assert.deepEqual((await records(reference, "payout")).map((record) => [record.status, record.amountMinor]), [["succeeded", "100000"]]);

      const bad = newReference("badaccount");
      const first = await connector().payout(payoutOf(name, bad, "decline_invalid_account"), OPTIONS);
      assertResult(await settle(connector(), "payout", bad, first), "declined", "invalid_account", "stop");
      // Spelled as an account number must be where only [A-Za-z0-9] is allowed.
      const blocked = newReference("blocked");
      const frozen = await connector().payout(payoutOf(name, blocked, "DECLINEACCOUNTBLOCKED"), OPTIONS);
      assertResult(await settle(connector(), "payout", blocked, frozen), "declined", "account_blocked", "stop");
    });

    it("refunds a charge in parts, never beyond what was charged", async () => {
      const chargeReference = newReference("refundable");
      const charged = await connector().charge(chargeOf(name, chargeReference, "tok_ok", 10_000n), OPTIONS);
      const refund = (reference: string, amountMinor: bigint, chargeGatewayId?: string) =>
        connector().refund({ reference, chargeReference, chargeGatewayId, amountMinor, currency: SETUP[name].currency }, OPTIONS);
      const first = newReference("refund");
      assertResult(await refund(first, 4_000n, charged.gatewayId), "succeeded", "approved", "none");
      assertResult(await refund(newReference("refund"), 7_000n), "declined", "invalid_request", "stop");
      assertResult(await refund(newReference("refund"), 6_000n), "succeeded", "approved", "none");
      assertResult(await connector().status("refund", first, OPTIONS), "succeeded", "approved", "none");
      const refunds = await control.records({ gateway: name, operation: "refund" });
      assert.deepEqual(refunds.map((record) => [record.amountMinor, record.parentReference]), [["4000", chargeReference], ["6000", chargeReference]]);
      assertResult(await refund(newReference("refund"), 1n), "declined", "invalid_request", "stop");
    });

    it("verifies the simulator's signed webhooks and refuses altered ones", async () => {
      const path = `/${name}-${++serial}`;
      await control.configure(name, { webhookUrl: `${receiverUrl}${path}` });
      const reference = newReference("hooked");
      const charged = await connector().charge(chargeOf(name, reference, "tok_ok", 10_000n), OPTIONS);
      const hook = await waitForWebhook(path, reference);
      const event = connector().verifyWebhook(hook.headers, hook.body);
      assert.equal(event?.operation, "charge");
      assert.equal(event?.reference, reference);
      assertResult(event?.result as GatewayResult, "succeeded", "approved", "none");
      const signatureHeader = { paystack: "x-paystack-signature", flutterwave: "verif-hash", stripe: "stripe-signature" }[name];
      const forged = { ...hook.headers, [signatureHeader]: `${hook.headers[signatureHeader]}0` };
      assert.equal(connector().verifyWebhook(forged, hook.body), undefined);
      assert.equal(connector().verifyWebhook({}, hook.body), undefined);
      // Paystack and Stripe sign the body; Flutterwave's verif-hash only proves the sender knows the
      // secret, so an altered body passes there (its events are hints to verify by API).
      const altered = hook.body.replace(reference, `${reference}x`);
      assert.equal(connector().verifyWebhook(hook.headers, altered)?.reference, name === "flutterwave" ? `${reference}x` : undefined);
      if (name === "stripe") assert.equal(connector().verifyWebhook(hook.headers, hook.body, Date.now() + 301_000), undefined);

      const payout = newReference("hookedpayout");
      await connector().payout(payoutOf(name, payout, "decline_account_blocked"), OPTIONS);
      const payoutHook = await waitForWebhook(path, payout);
      const payoutEvent = connector().verifyWebhook(payoutHook.headers, payoutHook.body);
      assert.equal(payoutEvent?.operation, "payout");
      assertResult(payoutEvent?.result as GatewayResult, "declined", "account_blocked", "stop");

      if (name === "flutterwave") return; // Flutterwave v3 sends no refund events
      const refundReference = newReference("hookedrefund");
      await connector().refund({ reference: refundReference, chargeReference: reference, chargeGatewayId: charged.gatewayId, amountMinor: 500n, currency: SETUP[name].currency }, OPTIONS);
      const refundHook = await waitForWebhook(path, refundReference);
      const refundEvent = connector().verifyWebhook(refundHook.headers, refundHook.body);
      assert.deepEqual([refundEvent?.operation, refundEvent?.reference, refundEvent?.result.code], ["refund", refundReference, "approved"]);
    });
  });
}

describe("Flutterwave amounts", () => {
  it("converts minor units to major-unit decimals and back, exactly", () => {
    assert.equal(minorToMajor(250_050n, 2), "2500.50");
    assert.equal(JSON.stringify({ amount: Number(minorToMajor(250_050n, 2)) }), '{"amount":2500.5}');
    assert.equal(majorToMinor(2500.5, 2), 250_050n);
    assert.equal(majorToMinor("2500.50", 2), 250_050n);
    assert.equal(minorToMajor(5_000n, 0), "5000"); // JPY-like: no minor unit
    assert.equal(majorToMinor(5000, 0), 5_000n);
    assert.equal(minorToMajor(1_234n, 3), "1.234"); // KWD-like: three decimals
    assert.equal(minorToMajor(5n, 3), "0.005");
    assert.equal(majorToMinor(0.005, 3), 5n);
    assert.equal(majorToMinor(1.2345, 3), undefined, "a fraction of the minor unit is refused");
    assert.equal(majorToMinor(0.5, 0), undefined);
    assert.equal(majorToMinor(1e21, 2), undefined, "exponent notation is not a plain decimal");
  });

  it("round-trips every amount up to 10^15 - 1 minor units through a JSON number", () => {
    // 15 significant digits is what a double always carries exactly; 2^53 (16 digits) is not safe
    // for a decimal fraction: see the counterexample below.
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: MAJOR_EXACT_MAX_MINOR }), fc.constantFrom(0, 2, 3), (amountMinor, exponent) => {
        const wire = JSON.parse(JSON.stringify({ amount: Number(minorToMajor(amountMinor, exponent)) })) as { amount: number };
        return majorToMinor(wire.amount, exponent) === amountMinor;
      }),
      { numRuns: 2_000 },
    );
    const beyond = 9_007_199_254_740_993n; // 2^53 + 1 kobo: the double cannot hold the last digit
    assert.notEqual(majorToMinor(Number(minorToMajor(beyond, 2)), 2), beyond);
  });
});

describe("transport classification", () => {
  const failure = (code: string) => new TypeError("fetch failed", { cause: Object.assign(new Error(code), { code }) });

  it("fails over only when the request certainly never left", () => {
    for (const code of ["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT"]) {
      assertResult(transportResult(failure(code)), "error", "gateway_unreachable", "failover");
    }
    const aggregate = new TypeError("fetch failed", { cause: new AggregateError([Object.assign(new Error("x"), { code: "ECONNREFUSED" })]) });
    assertResult(transportResult(aggregate), "error", "gateway_unreachable", "failover");
  });

  it("asks for status after anything that may have been processed", () => {
    for (const code of ["UND_ERR_SOCKET", "ECONNRESET", "UND_ERR_HEADERS_TIMEOUT", "SOMETHING_NEW"]) {
      assertResult(transportResult(failure(code)), "error", "gateway_timeout", "query_status");
    }
    assertResult(transportResult(new DOMException("timed out", "TimeoutError")), "error", "gateway_timeout", "query_status");
    assertResult(transportResult(new DOMException("aborted", "AbortError")), "error", "gateway_timeout", "query_status");
  });

  it("reads Retry-After as seconds or an HTTP date", () => {
    const nowMs = Date.parse("2026-01-01T00:00:00Z");
    assert.equal(parseRetryAfter("2", nowMs), 2_000);
    assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", nowMs), 5_000);
    assert.equal(parseRetryAfter("Wed, 31 Dec 2025 00:00:00 GMT", nowMs), 0);
    assert.equal(parseRetryAfter("soon", nowMs), undefined);
    assert.equal(parseRetryAfter(null, nowMs), undefined);
  });
});
