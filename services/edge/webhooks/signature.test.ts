// The merchants' verification helper against forgeries, tampering and replays, and the retry
// schedule's shape. No backends.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { retryDelayMs } from "./dispatcher.js";
import { matchesEventType, requireEventTypes } from "./filters.js";
import { signWebhook, verifyWebhook } from "./signature.js";

const SECRET = "whsec_test_secret_of_some_length";
const BODY = '{"id":"evt_1","type":"payment.succeeded"}';
const T = 1_800_000_000;

describe("verifyWebhook", () => {
  it("accepts what signWebhook signed, as a string or as bytes", () => {
    const header = signWebhook(SECRET, BODY, T);
    assert.match(header, /^t=1800000000,v1=[0-9a-f]{64}$/);
    assert.deepEqual(verifyWebhook({ secret: SECRET, signatureHeader: header, body: BODY, nowSeconds: T }), { ok: true, timestampSeconds: T });
    assert.equal(verifyWebhook({ secret: SECRET, signatureHeader: header, body: Buffer.from(BODY), nowSeconds: T + 10 }).ok, true);
  });

  it("rejects a tampered body, a re-signed timestamp and another secret", () => {
    const header = signWebhook(SECRET, BODY, T);
    const tampered = BODY.replace("succeeded", "failed");
    assert.deepEqual(verifyWebhook({ secret: SECRET, signatureHeader: header, body: tampered, nowSeconds: T }), { ok: false, reason: "no_matching_signature" });
    // A replay with a fresh timestamp and the old signature.
    const moved = header.replace(`t=${T}`, `t=${T + 1000}`);
    assert.deepEqual(verifyWebhook({ secret: SECRET, signatureHeader: moved, body: BODY, nowSeconds: T + 1000 }), { ok: false, reason: "no_matching_signature" });
    assert.deepEqual(verifyWebhook({ secret: "whsec_another", signatureHeader: header, body: BODY, nowSeconds: T }), { ok: false, reason: "no_matching_signature" });
  });

  it("rejects a stale timestamp, and one too far in the future, outside the tolerance", () => {
    const header = signWebhook(SECRET, BODY, T);
    assert.deepEqual(verifyWebhook({ secret: SECRET, signatureHeader: header, body: BODY, nowSeconds: T + 301 }), { ok: false, reason: "stale_timestamp" });
    assert.deepEqual(verifyWebhook({ secret: SECRET, signatureHeader: header, body: BODY, nowSeconds: T - 301 }), { ok: false, reason: "stale_timestamp" });
    assert.equal(verifyWebhook({ secret: SECRET, signatureHeader: header, body: BODY, nowSeconds: T + 300 }).ok, true);
    assert.equal(verifyWebhook({ secret: SECRET, signatureHeader: header, body: BODY, nowSeconds: T + 3600, toleranceSeconds: 3600 }).ok, true);
  });

  it("rejects malformed headers", () => {
    const good = signWebhook(SECRET, BODY, T);
    for (const header of [null, undefined, "", "garbage", `t=${T}`, good.replace(/^t=\d+,/, ""), `t=abc,${good.split(",")[1]}`, `t=${T},t=${T},${good.split(",")[1]}`, `t=${T},v1=zz`]) {
      assert.deepEqual(verifyWebhook({ secret: SECRET, signatureHeader: header, body: BODY, nowSeconds: T }), { ok: false, reason: "malformed_header" }, String(header));
    }
  });

  it("accepts any of several v1 entries, and any of several secrets (a rotation)", () => {
    const both = signWebhook(["whsec_new", "whsec_old"], BODY, T);
    assert.equal(both.split(",").length, 3);
    assert.equal(verifyWebhook({ secret: "whsec_new", signatureHeader: both, body: BODY, nowSeconds: T }).ok, true);
    assert.equal(verifyWebhook({ secret: "whsec_old", signatureHeader: both, body: BODY, nowSeconds: T }).ok, true);
    const onlyNew = signWebhook("whsec_new", BODY, T);
    assert.equal(verifyWebhook({ secrets: ["whsec_old", "whsec_new"], signatureHeader: onlyNew, body: BODY, nowSeconds: T }).ok, true);
    // Unknown schemes beside v1 are ignored.
    assert.equal(verifyWebhook({ secret: "whsec_new", signatureHeader: `${onlyNew},v0=abc`, body: BODY, nowSeconds: T }).ok, true);
  });
});

describe("event type filters", () => {
  it("match exact types, prefixes and everything", () => {
    assert.equal(matchesEventType(["payment.succeeded"], "payment.succeeded"), true);
    assert.equal(matchesEventType(["payment.succeeded"], "payment.failed"), false);
    assert.equal(matchesEventType(["payment.*"], "payment.failed"), true);
    assert.equal(matchesEventType(["payment.*"], "payments.failed"), false);
    assert.equal(matchesEventType(["payment.*"], "payment"), false);
    assert.equal(matchesEventType(["risk.*", "ledger.batch.committed"], "ledger.batch.committed"), true);
    assert.equal(matchesEventType(["*"], "anything.at.all"), true);
  });

  it("are refused naming the entry when malformed, and deduplicated", () => {
    assert.deepEqual(requireEventTypes(["payment.*", "payment.*", "*"], "event_types"), ["payment.*", "*"]);
    for (const [bad, index] of [[["Payment.Succeeded"], 0], [["payment.*", "payment.*.x"], 1], [["."], 0], [["*.*"], 0], [[""], 0]] as const) {
      assert.throws(() => requireEventTypes(bad, "event_types"), new RegExp(`^.*event_types\\[${index}\\]: `));
    }
    assert.throws(() => requireEventTypes([], "event_types"), /event_types: must hold 1 to 32/);
  });
});

describe("retry delays", () => {
  it("double from the base up to the cap, with jitter between half and all of it", () => {
    const top = () => 1;
    const bottom = () => 0;
    assert.deepEqual([1, 2, 3, 4, 5].map((n) => retryDelayMs(n, 1000, 60_000, top)), [1000, 2000, 4000, 8000, 16000]);
    assert.deepEqual([1, 2, 3].map((n) => retryDelayMs(n, 1000, 60_000, bottom)), [500, 1000, 2000]);
    assert.equal(retryDelayMs(40, 1000, 60_000, top), 60_000);
    // The default schedule (30 s base, 1 h cap) reaches a day in a few dozen attempts, not hundreds.
    let total = 0;
    let attempts = 0;
    while (total < 86_400_000) total += retryDelayMs(++attempts, 30_000, 3_600_000, top);
    assert.ok(attempts > 10 && attempts < 40, String(attempts));
  });
});
