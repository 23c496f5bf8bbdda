// The gateway simulator's shared core: records, behaviour settings, and the one place that decides
// an outcome. The wire files (paystack.ts, flutterwave.ts, stripe.ts) only translate between their
// gateway's shapes and this core. Everything lives in memory on purpose: the simulator stands in
// for external systems, whose state Cowrie never owns; a restart is a fresh gateway.
//
// Deterministic triggers, so that tests need not depend on rates. They are matched exactly against
// the payment method of a charge (Paystack authorization_code, Flutterwave token, Stripe
// payment_method) or the account number of a payout:
//   decline_insufficient_funds   recorded as failed, reason insufficient_funds
//   decline_expired_card         recorded as failed, reason expired_card
//   decline_suspected_fraud      recorded as failed, reason suspected_fraud
//   decline_account_blocked      recorded as failed, reason account_blocked
//   decline_card_declined        recorded as failed, generic decline
//   decline_invalid_account      (payouts) a bank account that does not resolve; Paystack refuses
//                                the transfer recipient, so nothing is recorded there; the others
//                                record a failed transfer
//   ambiguous                    recorded as SUCCEEDED, but the response is held for
//                                `ambiguousHoldMs` and the socket then destroyed: the "timeout
//                                after the charge was made" case
//   pending                      recorded as pending; succeeds after `pendingQueries` reads of it
//                                (a status query, or a list page that includes it)
// Triggers match ignoring case and every character but letters and digits, so an account number
// validated as [A-Za-z0-9] can spell one: DECLINEINVALIDACCOUNT, declineInsufficientFunds.
// Anything else succeeds, unless `declineRate` or `ambiguousRate` say otherwise. Refunds take no
// triggers: one succeeds when its charge succeeded and the refunds never exceed the charged amount.

export const SIMULATED_GATEWAYS = ["paystack", "flutterwave", "stripe"] as const;
export type SimulatedGateway = (typeof SIMULATED_GATEWAYS)[number];
export type SimulatedOperation = "charge" | "payout" | "refund";
const DECLINE_REASONS = [
  "insufficient_funds",
  "expired_card",
  "suspected_fraud",
  "account_blocked",
  "invalid_account",
  "card_declined",
] as const;
export type DeclineReason = (typeof DECLINE_REASONS)[number];
export type RecordStatus = "succeeded" | "failed" | "pending";

export interface GatewaySettings {
  /** Log-normal service time of every API call, in ms. */
  readonly latencyMs: { readonly median: number; readonly p99: number };
  /** Share of API calls answered 500 before any processing (nothing recorded). */
  readonly errorRate: number;
  /** Share of API calls answered 429 with Retry-After (nothing recorded). */
  readonly rateLimitRate: number;
  readonly retryAfterSeconds: number;
  /** Share of charges and payouts recorded as failed (generic decline). */
  readonly declineRate: number;
  /** Share of charges and payouts recorded as succeeded whose response is never sent. */
  readonly ambiguousRate: number;
  /** How long an ambiguous response (or a hung request) is held before the socket is destroyed. */
  readonly ambiguousHoldMs: number;
  /** none; unavailable: 503 at once; hang: never answers. Either way nothing is recorded. */
  readonly outage: "none" | "unavailable" | "hang";
  /** Status queries a "pending" record answers pending before it succeeds. */
  readonly pendingQueries: number;
  /** Where final outcomes are POSTed as signed webhooks; null: no webhooks. */
  readonly webhookUrl: string | null;
}

export type SettingsPatch = Partial<Omit<GatewaySettings, "latencyMs">> & {
  readonly latencyMs?: Partial<GatewaySettings["latencyMs"]>;
};

export const DEFAULT_SETTINGS: GatewaySettings = {
  latencyMs: { median: 5, p99: 30 },
  errorRate: 0,
  rateLimitRate: 0,
  retryAfterSeconds: 1,
  declineRate: 0,
  ambiguousRate: 0,
  ambiguousHoldMs: 60_000,
  outage: "none",
  pendingQueries: 2,
  webhookUrl: null,
};

export interface SimulatedRecord {
  readonly gateway: SimulatedGateway;
  readonly operation: SimulatedOperation;
  /** The merchant's reference (for refunds: the note the merchant sent, or the gateway id). */
  readonly reference: string;
  /** Unique per gateway; the contracts build their ids from it. */
  readonly serial: number;
  readonly gatewayId: string;
  readonly amountMinor: bigint;
  readonly currency: string;
  status: RecordStatus;
  declineCode: DeclineReason | undefined;
  readonly createdAt: Date;
  /** Charges: the total refunded so far. */
  refundedMinor: bigint;
  /** Refunds: the charge they return money from. */
  readonly parent: SimulatedRecord | undefined;
  /** Queries left before a pending record succeeds. */
  pendingQueriesLeft: number;
  /** Gateway-specific request fields a contract wants back (email, account, metadata...). */
  readonly details: Readonly<Record<string, string>>;
}

/** A record added through import(): its outcome is given, not decided. */
export interface ImportedRecord {
  readonly gateway: SimulatedGateway;
  readonly operation: SimulatedOperation;
  readonly reference: string;
  readonly amountMinor: bigint;
  readonly currency: string;
  readonly status: RecordStatus;
  /** Refunds: the reference of the charge refunded. */
  readonly parentReference?: string;
  readonly details?: Record<string, string>;
}

export interface RecordFilter {
  readonly gateway?: SimulatedGateway;
  readonly operation?: SimulatedOperation;
  readonly reference?: string;
}

export class SettingsError extends Error {
  constructor(
    readonly field: string,
    problem: string,
  ) {
    super(`${field}: ${problem}`);
    this.name = "SettingsError";
  }
}

/** What the gateway does with one API call before any processing. */
export type Gate = "unavailable" | "hang" | "rate_limited" | "server_error" | "proceed";

export interface CreateInput {
  readonly gateway: SimulatedGateway;
  readonly operation: "charge" | "payout";
  /** The merchant's reference; when absent (Stripe without metadata) the gateway id stands in. */
  readonly reference: string | undefined;
  readonly amountMinor: bigint;
  readonly currency: string;
  /** The payment method or account number, matched against the triggers above. */
  readonly trigger: string;
  readonly gatewayId: (serial: number) => string;
  readonly details?: Record<string, string>;
}

export type RefundRefusal = "charge_not_found" | "charge_not_successful" | "exceeds_charge";

/** Records beyond this are refused: a bound on memory for long benchmark runs. */
const RECORDS_MAX = 1_000_000;

export class SimulatorCore {
  private settingsByGateway = new Map<SimulatedGateway, GatewaySettings>();
  private records = new Map<string, SimulatedRecord>();
  private recordsById = new Map<string, SimulatedRecord>();
  private ordered: SimulatedRecord[] = [];
  /** The same records per gateway and operation, in the same order: a gateway's list reads only its own. */
  private streams = new Map<string, SimulatedRecord[]>();
  private serial = 0;
  private readonly random: () => number;

  /** Called once for every record that reaches a final status (webhooks hang off it). */
  onFinal: (record: SimulatedRecord) => void = () => {};

  constructor(
    private readonly defaults: Partial<Record<SimulatedGateway, SettingsPatch>> = {},
    seed?: number,
  ) {
    for (const patch of Object.values(defaults)) validatePatch(patch);
    this.random = seed === undefined ? Math.random : seededRandom(seed);
    this.reset();
  }

  reset(): void {
    this.records.clear();
    this.recordsById.clear();
    this.ordered = [];
    this.streams = new Map();
    for (const gateway of SIMULATED_GATEWAYS) {
      this.settingsByGateway.set(gateway, mergeSettings(DEFAULT_SETTINGS, this.defaults[gateway] ?? {}));
    }
  }

  settings(gateway: SimulatedGateway): GatewaySettings {
    return this.settingsByGateway.get(gateway) ?? DEFAULT_SETTINGS;
  }

  /** Validates a partial update (throwing SettingsError naming the field) and merges it. */
  configure(gateway: SimulatedGateway, patch: unknown): GatewaySettings {
    const merged = mergeSettings(this.settings(gateway), validatePatch(patch));
    if (merged.latencyMs.p99 < merged.latencyMs.median) {
      throw new SettingsError("latencyMs.p99", "must be at least latencyMs.median");
    }
    this.settingsByGateway.set(gateway, merged);
    return merged;
  }

  /** A log-normal draw with the configured median and 99th percentile, capped at 10 × p99. */
  latencyMs(gateway: SimulatedGateway): number {
    const { median, p99 } = this.settings(gateway).latencyMs;
    if (median <= 0) return 0;
    const sigma = Math.log(p99 / median) / 2.326_347_9; // z of the 99th percentile
    const normal = Math.sqrt(-2 * Math.log(1 - this.random())) * Math.cos(2 * Math.PI * this.random());
    return Math.min(median * Math.exp(sigma * normal), 10 * p99);
  }

  gate(gateway: SimulatedGateway): Gate {
    const settings = this.settings(gateway);
    if (settings.outage !== "none") return settings.outage;
    if (this.random() < settings.rateLimitRate) return "rate_limited";
    if (this.random() < settings.errorRate) return "server_error";
    return "proceed";
  }

  find(gateway: SimulatedGateway, operation: SimulatedOperation, reference: string): SimulatedRecord | undefined {
    return this.records.get(key(gateway, operation, reference));
  }

  findById(gateway: SimulatedGateway, operation: SimulatedOperation, gatewayId: string): SimulatedRecord | undefined {
    return this.recordsById.get(key(gateway, operation, gatewayId));
  }

  /**
   * Records a charge or payout and decides its outcome. `ambiguous` means the caller must not
   * answer. The caller has already checked that the reference is new.
   */
  create(input: CreateInput): { record: SimulatedRecord; ambiguous: boolean } {
    const settings = this.settings(input.gateway);
    const declined = DECLINE_REASONS.find((reason) => isTrigger(input.trigger, `decline_${reason}`));
    let status: RecordStatus = "succeeded";
    let declineCode: DeclineReason | undefined;
    let ambiguous = false;
    if (declined) {
      status = "failed";
      declineCode = declined;
    } else if (isTrigger(input.trigger, "pending")) {
      status = "pending";
    } else if (isTrigger(input.trigger, "ambiguous")) {
      ambiguous = true;
    } else if (this.random() < settings.declineRate) {
      status = "failed";
      declineCode = input.operation === "charge" ? "card_declined" : "invalid_account";
    } else if (this.random() < settings.ambiguousRate) {
      ambiguous = true;
    }
    const record = this.add({
      gateway: input.gateway,
      operation: input.operation,
      reference: input.reference,
      gatewayId: input.gatewayId,
      amountMinor: input.amountMinor,
      currency: input.currency,
      status,
      declineCode,
      parent: undefined,
      pendingQueriesLeft: status === "pending" ? settings.pendingQueries : 0,
      details: input.details ?? {},
    });
    return { record, ambiguous };
  }

  /** Refunds part or all of a successful charge; never more than was charged in total. */
  refund(
    charge: SimulatedRecord | undefined,
    amountMinor: bigint,
    reference: string | undefined,
    gatewayId: (serial: number) => string,
    details: Record<string, string> = {},
  ): SimulatedRecord | RefundRefusal {
    if (!charge || charge.operation !== "charge") return "charge_not_found";
    if (charge.status !== "succeeded") return "charge_not_successful";
    if (amountMinor <= 0n || amountMinor > refundableMinor(charge)) return "exceeds_charge";
    charge.refundedMinor += amountMinor;
    return this.add({
      gateway: charge.gateway,
      operation: "refund",
      reference,
      gatewayId,
      amountMinor,
      currency: charge.currency,
      status: "succeeded",
      declineCode: undefined,
      parent: charge,
      pendingQueriesLeft: 0,
      details,
    });
  }

  /** A status query: a pending record moves one query closer to success. */
  query(record: SimulatedRecord): SimulatedRecord {
    if (record.status === "pending") {
      record.pendingQueriesLeft -= 1;
      if (record.pendingQueriesLeft <= 0) {
        record.status = "succeeded";
        this.onFinal(record);
      }
    }
    return record;
  }

  /**
   * Matching records, oldest first. Records are kept in creation order with non-decreasing times,
   * so a time filter reads only its slice: listing a short window of a long benchmark run stays cheap.
   */
  list(filter: RecordFilter & { fromMs?: number; toMs?: number } = {}): SimulatedRecord[] {
    const inWindow = (record: SimulatedRecord) =>
      (filter.fromMs === undefined || record.createdAt.getTime() >= filter.fromMs) && (filter.toMs === undefined || record.createdAt.getTime() <= filter.toMs);
    if (filter.gateway !== undefined && filter.operation !== undefined) {
      if (filter.reference !== undefined) {
        const record = this.records.get(key(filter.gateway, filter.operation, filter.reference));
        return record && inWindow(record) ? [record] : [];
      }
      // A gateway's own list: a slice of its stream, whatever the other gateways hold.
      const stream = this.streams.get(streamKey(filter.gateway, filter.operation)) ?? [];
      const start = filter.fromMs === undefined ? 0 : firstAtOrAfter(stream, filter.fromMs);
      const end = filter.toMs === undefined ? stream.length : firstAtOrAfter(stream, filter.toMs + 1);
      return stream.slice(start, end);
    }
    const start = filter.fromMs === undefined ? 0 : firstAtOrAfter(this.ordered, filter.fromMs);
    const end = filter.toMs === undefined ? this.ordered.length : firstAtOrAfter(this.ordered, filter.toMs + 1);
    const matches: SimulatedRecord[] = [];
    for (let index = start; index < end; index++) {
      const record = this.ordered[index] as SimulatedRecord;
      if (
        (filter.gateway === undefined || record.gateway === filter.gateway) &&
        (filter.operation === undefined || record.operation === filter.operation) &&
        (filter.reference === undefined || record.reference === filter.reference)
      ) {
        matches.push(record);
      }
    }
    return matches;
  }

  /**
   * Adds records as they are, outcome and all, for tests and benchmarks that need a gateway with
   * history (reconciliation over many payments) or with a mismatch to find. Nothing is decided
   * and no webhook is sent. A refund names its charge by the charge's reference.
   */
  import(items: readonly ImportedRecord[], gatewayIdFor: (gateway: SimulatedGateway, operation: SimulatedOperation) => (serial: number) => string): SimulatedRecord[] {
    return items.map((item) => {
      const parent = item.parentReference === undefined ? undefined : this.find(item.gateway, "charge", item.parentReference);
      if (item.parentReference !== undefined && !parent) throw new SettingsError("parentReference", `no ${item.gateway} charge ${item.parentReference}`);
      if (parent) parent.refundedMinor += item.amountMinor;
      const record = this.add({
        gateway: item.gateway,
        operation: item.operation,
        reference: item.reference,
        gatewayId: gatewayIdFor(item.gateway, item.operation),
        amountMinor: item.amountMinor,
        currency: item.currency,
        status: item.status,
        declineCode: item.status === "failed" ? "card_declined" : undefined,
        parent,
        pendingQueriesLeft: item.status === "pending" ? this.settings(item.gateway).pendingQueries : 0,
        details: item.details ?? {},
      }, false);
      return record;
    });
  }

  private add(
    fields: Omit<SimulatedRecord, "serial" | "gatewayId" | "createdAt" | "refundedMinor" | "reference"> & {
      reference: string | undefined;
      gatewayId: (serial: number) => string;
    },
    notify = true,
  ): SimulatedRecord {
    if (this.ordered.length >= RECORDS_MAX) throw new Error(`the simulator holds ${RECORDS_MAX} records; reset it`);
    this.serial += 1;
    const gatewayId = fields.gatewayId(this.serial);
    // Never earlier than the newest record, even if the clock steps back: list() relies on it.
    const newestMs = this.ordered.at(-1)?.createdAt.getTime() ?? 0;
    const record: SimulatedRecord = {
      ...fields,
      reference: fields.reference ?? gatewayId,
      serial: this.serial,
      gatewayId,
      createdAt: new Date(Math.max(Date.now(), newestMs)),
      refundedMinor: 0n,
    };
    this.records.set(key(record.gateway, record.operation, record.reference), record);
    this.recordsById.set(key(record.gateway, record.operation, record.gatewayId), record);
    this.ordered.push(record);
    const stream = this.streams.get(streamKey(record.gateway, record.operation));
    if (stream) stream.push(record);
    else this.streams.set(streamKey(record.gateway, record.operation), [record]);
    if (notify && record.status !== "pending") this.onFinal(record);
    return record;
  }
}

/** What is left to refund of a charge, none of one that does not exist: a refund's amount when it names none. */
export function refundableMinor(charge: SimulatedRecord | undefined): bigint {
  return charge ? charge.amountMinor - charge.refundedMinor : 0n;
}

/** True when a payment method or account number spells the trigger (see the top of this file). */
export function isTrigger(text: string, trigger: string): boolean {
  const normalized = (value: string) => value.toLowerCase().replace(/[^a-z0-9]/g, "");
  return normalized(text) === normalized(trigger);
}

function key(gateway: SimulatedGateway, operation: SimulatedOperation, reference: string): string {
  return `${gateway}|${operation}|${reference}`;
}

function mergeSettings(base: GatewaySettings, patch: SettingsPatch): GatewaySettings {
  return { ...base, ...patch, latencyMs: { ...base.latencyMs, ...patch.latencyMs } };
}

const SETTINGS_FIELDS = new Set(Object.keys(DEFAULT_SETTINGS));

function validatePatch(patch: unknown): SettingsPatch {
  if (typeof patch !== "object" || patch === null || Array.isArray(patch)) {
    throw new SettingsError("body", "must be a JSON object of settings");
  }
  const fields = patch as Record<string, unknown>;
  for (const field of Object.keys(fields)) {
    if (!SETTINGS_FIELDS.has(field)) throw new SettingsError(field, "is not a setting");
  }
  for (const field of ["errorRate", "rateLimitRate", "declineRate", "ambiguousRate"] as const) {
    if (field in fields) requireNumber(fields[field], field, 0, 1);
  }
  if ("retryAfterSeconds" in fields) requireNumber(fields.retryAfterSeconds, "retryAfterSeconds", 0, 3600, true);
  if ("ambiguousHoldMs" in fields) requireNumber(fields.ambiguousHoldMs, "ambiguousHoldMs", 0, 600_000, true);
  if ("pendingQueries" in fields) requireNumber(fields.pendingQueries, "pendingQueries", 0, 1000, true);
  if ("outage" in fields && !["none", "unavailable", "hang"].includes(fields.outage as string)) {
    throw new SettingsError("outage", "must be one of none, unavailable, hang");
  }
  if ("webhookUrl" in fields && fields.webhookUrl !== null) {
    if (typeof fields.webhookUrl !== "string" || !URL.canParse(fields.webhookUrl)) {
      throw new SettingsError("webhookUrl", "must be an http(s) URL or null");
    }
  }
  if ("latencyMs" in fields) {
    const latency = fields.latencyMs as Record<string, unknown> | null;
    if (typeof latency !== "object" || latency === null) throw new SettingsError("latencyMs", "must be {median, p99}");
    for (const field of Object.keys(latency)) {
      if (field !== "median" && field !== "p99") throw new SettingsError(`latencyMs.${field}`, "is not a setting");
    }
    if ("median" in latency) requireNumber(latency.median, "latencyMs.median", 0, 60_000);
    if ("p99" in latency) requireNumber(latency.p99, "latencyMs.p99", 0, 60_000);
  }
  return fields as SettingsPatch;
}

function requireNumber(value: unknown, field: string, min: number, max: number, integer = false): void {
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max || (integer && !Number.isInteger(value))) {
    throw new SettingsError(field, `must be ${integer ? "an integer" : "a number"} from ${min} to ${max}`);
  }
}

/** A small seeded PRNG (mulberry32): the same seed gives the same run. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

function streamKey(gateway: string, operation: string): string {
  return `${gateway}\u0000${operation}`;
}

/** The index of the first record created at or after `ms` (binary search over creation order). */
function firstAtOrAfter(records: readonly SimulatedRecord[], ms: number): number {
  let low = 0;
  let high = records.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((records[middle] as SimulatedRecord).createdAt.getTime() < ms) low = middle + 1;
    else high = middle;
  }
  return low;
}
