// The rules, as pure functions: what one evaluation observed (the Redis script's snapshot of the
// user's windows, streak and profile) plus the tenant's settings and blocklist in, the fired
// rules, the decision and the score out. Nothing here reads a clock or a backend, so a replayed
// evaluation decides exactly as the first one did from the same snapshot.
import { Action, Decision, Severity } from "../../gen/cowrie/risk/v1/risk_pb.js";

export type RuleCode =
  | "BLOCKLISTED"
  | "VELOCITY"
  | "AMOUNT_VELOCITY"
  | "LARGE_AMOUNT"
  | "NEW_BENEFICIARY_LARGE_AMOUNT"
  | "DUPLICATE_AMOUNT"
  | "FAILED_STREAK"
  | "ANOMALY"
  | "RISK_UNAVAILABLE";

/** The order of reasons in a response: identifiers first, then windows, then learned behaviour. */
export const RULE_ORDER: readonly RuleCode[] = [
  "BLOCKLISTED", "VELOCITY", "AMOUNT_VELOCITY", "LARGE_AMOUNT", "NEW_BENEFICIARY_LARGE_AMOUNT",
  "DUPLICATE_AMOUNT", "FAILED_STREAK", "ANOMALY", "RISK_UNAVAILABLE",
];

export interface RuleSwitch {
  enabled: boolean;
  /** FLAG, REVIEW or BLOCK. */
  action: Action;
}

/** Thresholds of one currency in minor units; 0 means the rule does not check this currency. */
export interface CurrencyLimits {
  largeAmountMinor: bigint;
  newBeneficiaryAmountMinor: bigint;
  amountVelocityMinor: bigint;
}

/** A tenant's effective settings: every value filled in. */
export interface Settings {
  velocity: RuleSwitch & { maxPayments: number; windowSeconds: number };
  amountVelocity: RuleSwitch & { windowSeconds: number };
  largeAmount: RuleSwitch;
  failedStreak: RuleSwitch & { maxFailures: number };
  duplicateAmount: RuleSwitch & { maxRepeats: number; windowSeconds: number };
  newBeneficiary: RuleSwitch;
  blocklist: RuleSwitch;
  anomaly: RuleSwitch & { zThresholdCenti: number; minSamples: number };
  currencies: ReadonlyMap<string, CurrencyLimits>;
}

/** Large-amount thresholds per currency in minor units; the other two derive from them. */
const LARGE_AMOUNT_MINOR: Readonly<Record<string, bigint>> = {
  NGN: 100_000_000n, // ₦1,000,000
  USD: 1_000_000n, // $10,000
  EUR: 1_000_000n, // €10,000
  GBP: 800_000n, // £8,000
  KES: 100_000_000n, // KSh 1,000,000
  GHS: 10_000_000n, // GH₵100,000
  ZAR: 15_000_000n, // R150,000
};

/** The built-in thresholds of a currency, or undefined when Cowrie has none for it. */
export function defaultCurrencyLimits(currency: string): CurrencyLimits | undefined {
  const large = LARGE_AMOUNT_MINOR[currency];
  if (large === undefined) return undefined;
  return { largeAmountMinor: large, newBeneficiaryAmountMinor: large / 5n, amountVelocityMinor: large * 3n };
}

const DEFAULT_CURRENCIES: readonly string[] = Object.keys(LARGE_AMOUNT_MINOR);

const FLAG_ONLY: RuleSwitch = { enabled: true, action: Action.FLAG };

export const DEFAULT_SETTINGS: Settings = {
  velocity: { ...FLAG_ONLY, maxPayments: 5, windowSeconds: 60 },
  amountVelocity: { ...FLAG_ONLY, windowSeconds: 3600 },
  largeAmount: { ...FLAG_ONLY },
  failedStreak: { ...FLAG_ONLY, maxFailures: 3 },
  duplicateAmount: { ...FLAG_ONLY, maxRepeats: 3, windowSeconds: 300 },
  newBeneficiary: { ...FLAG_ONLY },
  blocklist: { ...FLAG_ONLY },
  anomaly: { ...FLAG_ONLY, zThresholdCenti: 400, minSamples: 10 },
  currencies: new Map(DEFAULT_CURRENCIES.map((currency) => [currency, defaultCurrencyLimits(currency) as CurrencyLimits])),
};

// ---------------------------------------------------------------------------------------------
// What an evaluation observed

/** A user's learned behaviour in one currency (exponentially weighted), as stored in Redis. */
export interface Profile {
  /** Successful payments learned. */
  samples: number;
  amountMean: number;
  amountVariance: number;
  /** Intervals learned (one fewer than samples), on ln(seconds). */
  intervalSamples: number;
  intervalMean: number;
  intervalVariance: number;
  /** Evaluation time of the latest successful payment learned, ms since the epoch. */
  lastAtMs: number;
}

export interface Observation {
  /** The backend's time of the evaluation, ms since the epoch. */
  nowMs: number;
  /** The user's payments within the velocity window, this one included. */
  paymentsInWindow: number;
  /** The sum of the user's payments in this currency within the amount-velocity window, this one included. */
  amountInWindowMinor: bigint;
  /** The user's payments of this exact amount and currency within the duplicate window, this one included. */
  sameAmountInWindow: number;
  /** True when the user has paid this beneficiary successfully before. */
  beneficiaryKnown: boolean;
  failedStreak: number;
  /** Undefined before the user's first successful payment in this currency. */
  profile: Profile | undefined;
}

export interface Payment {
  userId: string;
  amountMinor: bigint;
  currency: string;
  /** "" when unknown, as are deviceId and ipAddress. */
  beneficiaryId: string;
  deviceId: string;
  ipAddress: string;
}

export type BlockKind = "USER" | "BENEFICIARY" | "DEVICE" | "IP";

export interface Blocklist {
  has(kind: BlockKind, value: string): boolean;
}

export interface FiredRule {
  rule: RuleCode;
  severity: Severity;
  action: Action;
  detail: string;
}

export interface Verdict {
  decision: Decision;
  score: number;
  reasons: RuleCode[];
  flags: FiredRule[];
}

// ---------------------------------------------------------------------------------------------
// Learning

/** How much one new sample weighs in the exponentially weighted statistics (about the last 20 count). */
export const EWMA_ALPHA = 0.1;
/** Intervals shorter than this count as this (ln of 0.1 s), so bursts do not reach -infinity. */
export const INTERVAL_FLOOR_SECONDS = 0.1;

export interface Moments {
  mean: number;
  variance: number;
}

/**
 * One step of the exponentially weighted mean and variance (West 1979 / Finch 2009): the first
 * sample is the mean with no variance. counters.ts does the same arithmetic in Lua, in the
 * same order, so both backends learn identical figures.
 */
export function ewmaStep(previous: Moments | undefined, sample: number, alpha = EWMA_ALPHA): Moments {
  if (previous === undefined) return { mean: sample, variance: 0 };
  const difference = sample - previous.mean;
  const increment = alpha * difference;
  return { mean: previous.mean + increment, variance: (1 - alpha) * (previous.variance + difference * increment) };
}

/** ln of the time between two payments in seconds, floored at INTERVAL_FLOOR_SECONDS. */
export function intervalSample(fromMs: number, toMs: number): number {
  return Math.log(Math.max((toMs - fromMs) / 1000, INTERVAL_FLOOR_SECONDS));
}

/**
 * How unusual an amount is for the profile, in standard deviations above the mean. The deviation
 * is at least half the mean (and 1 minor unit): a user who always pays the same amount is not
 * flagged for paying a little more, only for several times the usual.
 */
export function amountZScore(profile: Profile, amountMinor: number): number {
  const deviation = Math.max(Math.sqrt(profile.amountVariance), profile.amountMean / 2, 1);
  return (amountMinor - profile.amountMean) / deviation;
}

/** How unusual the time since the last payment is, in deviations of ln(seconds) (negative: faster). */
function intervalZScore(profile: Profile, nowMs: number): number {
  const deviation = Math.max(Math.sqrt(profile.intervalVariance), 0.5);
  return (intervalSample(profile.lastAtMs, nowMs) - profile.intervalMean) / deviation;
}

// ---------------------------------------------------------------------------------------------
// Deciding

const SEVERITY_POINTS: Readonly<Record<Severity, number>> = {
  [Severity.UNSPECIFIED]: 0,
  [Severity.LOW]: 100,
  [Severity.MEDIUM]: 300,
  [Severity.HIGH]: 600,
};
export const SCORE_MAX = 1000;

const ACTION_DECISION: Readonly<Record<Action, Decision>> = {
  [Action.UNSPECIFIED]: Decision.ALLOW,
  [Action.FLAG]: Decision.ALLOW,
  [Action.REVIEW]: Decision.REVIEW,
  [Action.BLOCK]: Decision.BLOCK,
};

/** The strongest action among the fired rules decides; the score adds their severities, capped. */
export function verdictOf(flags: FiredRule[]): Verdict {
  const sorted = [...flags].sort((a, b) => RULE_ORDER.indexOf(a.rule) - RULE_ORDER.indexOf(b.rule));
  const decision = sorted.reduce((strongest, flag) => Math.max(strongest, ACTION_DECISION[flag.action]), Decision.ALLOW as number);
  const score = Math.min(SCORE_MAX, sorted.reduce((sum, flag) => sum + SEVERITY_POINTS[flag.severity], 0));
  return { decision: decision as Decision, score, reasons: sorted.map((flag) => flag.rule), flags: sorted };
}

function money(amountMinor: bigint, currency: string): string {
  return `${amountMinor} ${currency} minor units`;
}

/** Rules that need nothing but the request and the settings: they still run when Redis is unreachable. */
function statelessRules(payment: Payment, settings: Settings, blocklist: Blocklist): FiredRule[] {
  const fired: FiredRule[] = [];
  const limits = settings.currencies.get(payment.currency);
  if (settings.blocklist.enabled) {
    const hits: string[] = [];
    if (blocklist.has("USER", payment.userId)) hits.push(`user ${payment.userId}`);
    if (payment.beneficiaryId !== "" && blocklist.has("BENEFICIARY", payment.beneficiaryId)) hits.push(`beneficiary ${payment.beneficiaryId}`);
    if (payment.deviceId !== "" && blocklist.has("DEVICE", payment.deviceId)) hits.push(`device ${payment.deviceId}`);
    if (payment.ipAddress !== "" && blocklist.has("IP", payment.ipAddress)) hits.push(`ip ${payment.ipAddress}`);
    if (hits.length > 0) fired.push({ rule: "BLOCKLISTED", severity: Severity.HIGH, action: settings.blocklist.action, detail: `blocklisted: ${hits.join(", ")}` });
  }
  if (settings.largeAmount.enabled && limits && limits.largeAmountMinor > 0n && payment.amountMinor >= limits.largeAmountMinor) {
    fired.push({
      rule: "LARGE_AMOUNT",
      severity: payment.amountMinor >= limits.largeAmountMinor * 5n ? Severity.HIGH : Severity.MEDIUM,
      action: settings.largeAmount.action,
      detail: `${money(payment.amountMinor, payment.currency)} (threshold ${limits.largeAmountMinor})`,
    });
  }
  return fired;
}

function windowRules(payment: Payment, seen: Observation, settings: Settings): FiredRule[] {
  const fired: FiredRule[] = [];
  const limits = settings.currencies.get(payment.currency);
  const { velocity, amountVelocity, duplicateAmount, newBeneficiary, failedStreak } = settings;
  if (velocity.enabled && seen.paymentsInWindow >= velocity.maxPayments) {
    fired.push({
      rule: "VELOCITY",
      severity: Severity.HIGH,
      action: velocity.action,
      detail: `${seen.paymentsInWindow} payments in ${velocity.windowSeconds} s (limit ${velocity.maxPayments})`,
    });
  }
  if (amountVelocity.enabled && limits && limits.amountVelocityMinor > 0n && seen.amountInWindowMinor >= limits.amountVelocityMinor) {
    fired.push({
      rule: "AMOUNT_VELOCITY",
      severity: seen.amountInWindowMinor >= limits.amountVelocityMinor * 2n ? Severity.HIGH : Severity.MEDIUM,
      action: amountVelocity.action,
      detail: `${money(seen.amountInWindowMinor, payment.currency)} in ${amountVelocity.windowSeconds} s (limit ${limits.amountVelocityMinor})`,
    });
  }
  if (newBeneficiary.enabled && limits && payment.beneficiaryId !== "" && !seen.beneficiaryKnown
    && limits.newBeneficiaryAmountMinor > 0n && payment.amountMinor >= limits.newBeneficiaryAmountMinor) {
    fired.push({
      rule: "NEW_BENEFICIARY_LARGE_AMOUNT",
      severity: Severity.MEDIUM,
      action: newBeneficiary.action,
      detail: `${money(payment.amountMinor, payment.currency)} to beneficiary ${payment.beneficiaryId}, never paid before (threshold ${limits.newBeneficiaryAmountMinor})`,
    });
  }
  if (duplicateAmount.enabled && seen.sameAmountInWindow >= duplicateAmount.maxRepeats) {
    fired.push({
      rule: "DUPLICATE_AMOUNT",
      severity: Severity.MEDIUM,
      action: duplicateAmount.action,
      detail: `${money(payment.amountMinor, payment.currency)} ${seen.sameAmountInWindow} times in ${duplicateAmount.windowSeconds} s (limit ${duplicateAmount.maxRepeats})`,
    });
  }
  if (failedStreak.enabled && seen.failedStreak >= failedStreak.maxFailures) {
    fired.push({
      rule: "FAILED_STREAK",
      severity: seen.failedStreak >= failedStreak.maxFailures * 2 ? Severity.HIGH : Severity.MEDIUM,
      action: failedStreak.action,
      detail: `${seen.failedStreak} consecutive failed payments (limit ${failedStreak.maxFailures})`,
    });
  }
  const anomaly = anomalyRule(payment, seen, settings);
  if (anomaly) fired.push(anomaly);
  return fired;
}

function anomalyRule(payment: Payment, seen: Observation, settings: Settings): FiredRule | undefined {
  const { anomaly } = settings;
  const profile = seen.profile;
  if (!anomaly.enabled || !profile || profile.samples < anomaly.minSamples) return undefined;
  const threshold = anomaly.zThresholdCenti / 100;
  const amountZ = amountZScore(profile, Number(payment.amountMinor));
  // Intervals need as many samples, less the first payment, which has no interval.
  const intervalZ = profile.intervalSamples >= anomaly.minSamples - 1 ? intervalZScore(profile, seen.nowMs) : 0;
  const unusual: string[] = [];
  if (amountZ >= threshold) unusual.push(`amount ${payment.amountMinor} is ${amountZ.toFixed(1)} deviations above the usual ${Math.round(profile.amountMean)}`);
  if (intervalZ <= -threshold) unusual.push(`${((seen.nowMs - profile.lastAtMs) / 1000).toFixed(1)} s since the last payment is ${(-intervalZ).toFixed(1)} deviations faster than usual`);
  if (unusual.length === 0) return undefined;
  const strongest = Math.max(amountZ, -intervalZ);
  return {
    rule: "ANOMALY",
    severity: strongest >= threshold * 2 ? Severity.HIGH : Severity.MEDIUM,
    action: anomaly.action,
    detail: `${unusual.join("; ")} (threshold ${threshold}, ${profile.samples} payments learned)`,
  };
}

/** Every rule over what the evaluation observed. */
export function decide(payment: Payment, seen: Observation, settings: Settings, blocklist: Blocklist): Verdict {
  return verdictOf([...statelessRules(payment, settings, blocklist), ...windowRules(payment, seen, settings)]);
}

/**
 * The decision without Redis: the rules that need no window still run, and RISK_UNAVAILABLE
 * carries the configured fallback (allow: a flag only).
 */
export function decideWithoutCounters(payment: Payment, settings: Settings, blocklist: Blocklist, fallback: Action, why: string): Verdict {
  return verdictOf([
    ...statelessRules(payment, settings, blocklist),
    { rule: "RISK_UNAVAILABLE", severity: Severity.LOW, action: fallback, detail: `windowed rules skipped: ${why}` },
  ]);
}
