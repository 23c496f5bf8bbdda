// The rules as pure functions: thresholds that fire at the documented counts, the decision as the
// strongest action, the score, the statistical rule, and settings with their defaults.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import fc from "fast-check";
import { Action, Decision, RiskSettingsSchema, Severity } from "../../gen/cowrie/risk/v1/risk_pb.js";
import {
  amountZScore,
  decide,
  decideWithoutCounters,
  DEFAULT_SETTINGS,
  RULE_ORDER,
  SCORE_MAX,
  verdictOf,
  type FiredRule,
  type Observation,
  type Payment,
  type Profile,
} from "./rules.js";
import { effectiveSettings, settingsMessage } from "./settings.js";

const NOW = 1_800_000_000_000;
const nobody = { has: () => false };
const payment = (fields: Partial<Payment> = {}): Payment => ({
  userId: "u", amountMinor: 1_000n, currency: "NGN", beneficiaryId: "", deviceId: "", ipAddress: "", ...fields,
});
const seen = (fields: Partial<Observation> = {}): Observation => ({
  nowMs: NOW, paymentsInWindow: 1, amountInWindowMinor: 1_000n, sameAmountInWindow: 1, beneficiaryKnown: false, failedStreak: 0, profile: undefined, ...fields,
});
const reasons = (p: Payment, o: Observation, settings = DEFAULT_SETTINGS) => decide(p, o, settings, nobody).reasons;

describe("decide() with the default settings", () => {
  it("fires each count rule when its count reaches the threshold, not before", () => {
    assert.deepEqual(reasons(payment(), seen({ paymentsInWindow: 4 })), []);
    assert.deepEqual(reasons(payment(), seen({ paymentsInWindow: 5 })), ["VELOCITY"]);
    assert.deepEqual(reasons(payment(), seen({ sameAmountInWindow: 2 })), []);
    assert.deepEqual(reasons(payment(), seen({ sameAmountInWindow: 3 })), ["DUPLICATE_AMOUNT"]);
    assert.deepEqual(reasons(payment(), seen({ failedStreak: 2 })), []);
    assert.deepEqual(reasons(payment(), seen({ failedStreak: 3 })), ["FAILED_STREAK"]);
  });

  it("checks amounts against the currency's thresholds in minor units", () => {
    assert.deepEqual(reasons(payment({ amountMinor: 99_999_999n }), seen()), []);
    assert.deepEqual(reasons(payment({ amountMinor: 100_000_000n }), seen()), ["LARGE_AMOUNT"]);
    assert.deepEqual(reasons(payment({ amountMinor: 1_000_000n, currency: "USD" }), seen()), ["LARGE_AMOUNT"]);
    assert.deepEqual(reasons(payment({ amountMinor: 10n ** 15n, currency: "JPY" }), seen()), [], "no thresholds for JPY by default");
    assert.deepEqual(reasons(payment(), seen({ amountInWindowMinor: 300_000_000n })), ["AMOUNT_VELOCITY"]);
    const toStranger = payment({ amountMinor: 20_000_000n, beneficiaryId: "b" });
    assert.deepEqual(reasons(toStranger, seen()), ["NEW_BENEFICIARY_LARGE_AMOUNT"]);
    assert.deepEqual(reasons(toStranger, seen({ beneficiaryKnown: true })), []);
  });

  it("grades severities: HIGH velocity, MEDIUM then HIGH for amounts and streaks", () => {
    const severity = (p: Payment, o: Observation) => decide(p, o, DEFAULT_SETTINGS, nobody).flags.map((flag) => Severity[flag.severity]);
    assert.deepEqual(severity(payment(), seen({ paymentsInWindow: 5 })), ["HIGH"]);
    assert.deepEqual(severity(payment({ amountMinor: 100_000_000n }), seen()), ["MEDIUM"]);
    assert.deepEqual(severity(payment({ amountMinor: 500_000_000n }), seen({ amountInWindowMinor: 500_000_000n })), ["MEDIUM", "HIGH"]);
    assert.deepEqual(severity(payment(), seen({ failedStreak: 6 })), ["HIGH"]);
  });

  it("matches every blocklist kind the request carries", () => {
    const blocked = new Set(["USER:mallory", "BENEFICIARY:mule", "DEVICE:d1", "IP:10.0.0.1"]);
    const list = { has: (kind: string, value: string) => blocked.has(`${kind}:${value}`) };
    const verdict = decide(payment({ userId: "mallory", beneficiaryId: "mule", deviceId: "d1", ipAddress: "10.0.0.1" }), seen(), DEFAULT_SETTINGS, list);
    assert.deepEqual(verdict.reasons, ["BLOCKLISTED"]);
    assert.equal(verdict.flags[0]?.detail, "blocklisted: user mallory, beneficiary mule, device d1, ip 10.0.0.1");
  });
});

describe("the statistical rule", () => {
  const profile = (fields: Partial<Profile> = {}): Profile => ({
    samples: 10, amountMean: 1_000, amountVariance: 10_000, intervalSamples: 9, intervalMean: Math.log(3_600), intervalVariance: 0.25, lastAtMs: NOW - 3_600_000, ...fields,
  });

  it("needs min_samples payments learned", () => {
    assert.deepEqual(reasons(payment({ amountMinor: 100_000n }), seen({ profile: profile({ samples: 9 }) })), []);
    assert.deepEqual(reasons(payment({ amountMinor: 100_000n }), seen({ profile: profile() })), ["ANOMALY"]);
  });

  it("flags amounts z ≥ 4 above the mean, with the deviation at least half the mean", () => {
    assert.equal(amountZScore(profile(), 3_000), 4);
    assert.deepEqual(reasons(payment({ amountMinor: 2_999n }), seen({ profile: profile() })), []);
    assert.deepEqual(reasons(payment({ amountMinor: 3_000n }), seen({ profile: profile() })), ["ANOMALY"]);
  });

  it("flags a payment much sooner after the last one than the user's usual rhythm", () => {
    assert.deepEqual(reasons(payment(), seen({ profile: profile({ lastAtMs: NOW - 3_000 }) })), ["ANOMALY"]);
    assert.deepEqual(reasons(payment(), seen({ profile: profile({ lastAtMs: NOW - 1_800_000 }) })), []);
  });
});

describe("verdictOf()", () => {
  const fired = fc.record({
    rule: fc.constantFrom(...RULE_ORDER),
    severity: fc.constantFrom(Severity.LOW, Severity.MEDIUM, Severity.HIGH),
    action: fc.constantFrom(Action.FLAG, Action.REVIEW, Action.BLOCK),
    detail: fc.string(),
  });

  it("decides by the strongest action, scores within 0..1000 and orders reasons stably (property)", () => {
    fc.assert(fc.property(fc.array(fired, { maxLength: 9 }), (flags: FiredRule[]) => {
      const verdict = verdictOf(flags);
      const strongest = flags.some((f) => f.action === Action.BLOCK) ? Decision.BLOCK : flags.some((f) => f.action === Action.REVIEW) ? Decision.REVIEW : Decision.ALLOW;
      assert.equal(verdict.decision, strongest);
      assert.ok(verdict.score >= 0 && verdict.score <= SCORE_MAX);
      assert.equal(verdict.score === 0, flags.length === 0);
      assert.deepEqual(verdict.reasons, [...verdict.reasons].sort((a, b) => RULE_ORDER.indexOf(a) - RULE_ORDER.indexOf(b)));
      assert.deepEqual(verdictOf([...flags].reverse()).reasons, verdict.reasons);
    }));
  });

  it("without counters adds RISK_UNAVAILABLE with the fallback action to the rules that need no window", () => {
    const verdict = decideWithoutCounters(payment({ amountMinor: 100_000_000n }), DEFAULT_SETTINGS, nobody, Action.REVIEW, "Redis unavailable");
    assert.deepEqual(verdict.reasons, ["LARGE_AMOUNT", "RISK_UNAVAILABLE"]);
    assert.equal(verdict.decision, Decision.REVIEW);
  });
});

describe("settings", () => {
  it("fill every zero with the default and keep what the tenant set", () => {
    const settings = effectiveSettings(create(RiskSettingsSchema, {
      velocity: { maxPayments: 10, rule: { action: Action.REVIEW } },
      failedStreak: { rule: { disabled: true } },
      currencies: { USD: { amountVelocityMinor: 7n }, XOF: { largeAmountMinor: 9n } },
    }));
    assert.deepEqual(settings.velocity, { enabled: true, action: Action.REVIEW, maxPayments: 10, windowSeconds: 60 });
    assert.equal(settings.failedStreak.enabled, false);
    assert.deepEqual(settings.currencies.get("USD"), { largeAmountMinor: 1_000_000n, newBeneficiaryAmountMinor: 200_000n, amountVelocityMinor: 7n });
    assert.deepEqual(settings.currencies.get("XOF"), { largeAmountMinor: 9n, newBeneficiaryAmountMinor: 0n, amountVelocityMinor: 0n });
    assert.deepEqual(effectiveSettings(settingsMessage(settings)), settings, "the effective message reads back to the same settings");
  });

  it("turn a disabled rule off", () => {
    const settings = effectiveSettings(create(RiskSettingsSchema, { velocity: { rule: { disabled: true } } }));
    assert.deepEqual(reasons(payment(), seen({ paymentsInWindow: 100 }), settings), []);
  });
});
