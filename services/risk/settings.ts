// A tenant's rule settings: validation of what a tenant sends, the effective values (defaults
// filled in) the rules use, and the in-process cache that keeps settings and blocklist off the
// hot path while still seeing every change within `maxAgeMs`, whichever Risk process made it.
import { create, fromJson, toJson, type JsonValue } from "@bufbuild/protobuf";
import {
  Action,
  BlocklistKind,
  CurrencyThresholdsSchema,
  RiskSettingsSchema,
  type RiskSettings,
  type RuleSettings,
} from "../../gen/cowrie/risk/v1/risk_pb.js";
import { invalidArgument } from "../runtime/errors.js";
import { INT64_MAX, requireCurrency } from "../runtime/validate.js";
import { DEFAULT_SETTINGS, defaultCurrencyLimits, type BlockKind, type Blocklist, type CurrencyLimits, type RuleSwitch, type Settings } from "./rules.js";

const ACTIONS = new Set<number>([Action.UNSPECIFIED, Action.FLAG, Action.REVIEW, Action.BLOCK]);
const CURRENCIES_MAX = 200;
const DAY_SECONDS = 86_400;

const BLOCK_KINDS: Readonly<Record<BlockKind, BlocklistKind>> = {
  USER: BlocklistKind.USER,
  BENEFICIARY: BlocklistKind.BENEFICIARY,
  DEVICE: BlocklistKind.DEVICE,
  IP: BlocklistKind.IP,
};

// ---------------------------------------------------------------------------------------------
// Validation: ranges per field; 0 always means "the default".

function requireRange(value: number, field: string, min: number, max: number): void {
  if (value !== 0 && (value < min || value > max)) throw invalidArgument(field, `must be 0 (the default) or ${min} to ${max}`);
}

function requireRule(rule: RuleSettings | undefined, field: string): void {
  if (rule && !ACTIONS.has(rule.action)) throw invalidArgument(`${field}.action`, "must be ACTION_FLAG, ACTION_REVIEW or ACTION_BLOCK");
}

function requireMinor(value: bigint, field: string): void {
  if (value < 0n || value > INT64_MAX) throw invalidArgument(field, "must be 0 (the default) to 2^63-1 minor units");
}

/** Checks every field of an UpdateRiskSettings, naming the first bad one; returns the message as given. */
export function validateSettings(settings: RiskSettings | undefined): RiskSettings {
  if (!settings) throw invalidArgument("settings", "is required");
  const s = settings;
  requireRule(s.velocity?.rule, "settings.velocity.rule");
  requireRange(s.velocity?.maxPayments ?? 0, "settings.velocity.max_payments", 1, 100_000);
  requireRange(s.velocity?.windowSeconds ?? 0, "settings.velocity.window_seconds", 1, DAY_SECONDS);
  requireRule(s.amountVelocity?.rule, "settings.amount_velocity.rule");
  requireRange(s.amountVelocity?.windowSeconds ?? 0, "settings.amount_velocity.window_seconds", 1, DAY_SECONDS);
  requireRule(s.largeAmount?.rule, "settings.large_amount.rule");
  requireRule(s.failedStreak?.rule, "settings.failed_streak.rule");
  requireRange(s.failedStreak?.maxFailures ?? 0, "settings.failed_streak.max_failures", 1, 1000);
  requireRule(s.duplicateAmount?.rule, "settings.duplicate_amount.rule");
  requireRange(s.duplicateAmount?.maxRepeats ?? 0, "settings.duplicate_amount.max_repeats", 2, 100_000);
  requireRange(s.duplicateAmount?.windowSeconds ?? 0, "settings.duplicate_amount.window_seconds", 1, DAY_SECONDS);
  requireRule(s.newBeneficiary?.rule, "settings.new_beneficiary.rule");
  requireRule(s.blocklist?.rule, "settings.blocklist.rule");
  requireRule(s.anomaly?.rule, "settings.anomaly.rule");
  requireRange(s.anomaly?.zThresholdCenti ?? 0, "settings.anomaly.z_threshold_centi", 100, 10_000);
  requireRange(s.anomaly?.minSamples ?? 0, "settings.anomaly.min_samples", 2, 10_000);
  const currencies = Object.entries(s.currencies);
  if (currencies.length > CURRENCIES_MAX) throw invalidArgument("settings.currencies", `must hold at most ${CURRENCIES_MAX} currencies`);
  for (const [currency, thresholds] of currencies) {
    const field = `settings.currencies[${currency}]`;
    requireCurrency(currency, field);
    requireMinor(thresholds.largeAmountMinor, `${field}.large_amount_minor`);
    requireMinor(thresholds.newBeneficiaryAmountMinor, `${field}.new_beneficiary_amount_minor`);
    requireMinor(thresholds.amountVelocityMinor, `${field}.amount_velocity_minor`);
  }
  return settings;
}

// ---------------------------------------------------------------------------------------------
// Stored form (what the tenant set) to effective settings, and back to a message.

export function settingsToJson(settings: RiskSettings): JsonValue {
  return toJson(RiskSettingsSchema, settings);
}

export function settingsFromJson(json: unknown): RiskSettings {
  return fromJson(RiskSettingsSchema, (json ?? {}) as JsonValue, { ignoreUnknownFields: true });
}

function ruleSwitch(rule: RuleSettings | undefined, fallback: RuleSwitch): RuleSwitch {
  if (!rule) return { ...fallback };
  return { enabled: !rule.disabled, action: rule.action === Action.UNSPECIFIED ? fallback.action : rule.action };
}

const orDefault = <T extends number | bigint>(value: T | undefined, fallback: T): T => (value ? value : fallback);

/** The values the rules use: the tenant's where it set one, the defaults elsewhere. */
export function effectiveSettings(stored: RiskSettings): Settings {
  const d = DEFAULT_SETTINGS;
  const currencies = new Map<string, CurrencyLimits>(d.currencies);
  for (const [currency, thresholds] of Object.entries(stored.currencies)) {
    const fallback = defaultCurrencyLimits(currency);
    currencies.set(currency, {
      largeAmountMinor: orDefault(thresholds.largeAmountMinor, fallback?.largeAmountMinor ?? 0n),
      newBeneficiaryAmountMinor: orDefault(thresholds.newBeneficiaryAmountMinor, fallback?.newBeneficiaryAmountMinor ?? 0n),
      amountVelocityMinor: orDefault(thresholds.amountVelocityMinor, fallback?.amountVelocityMinor ?? 0n),
    });
  }
  return {
    velocity: {
      ...ruleSwitch(stored.velocity?.rule, d.velocity),
      maxPayments: orDefault(stored.velocity?.maxPayments, d.velocity.maxPayments),
      windowSeconds: orDefault(stored.velocity?.windowSeconds, d.velocity.windowSeconds),
    },
    amountVelocity: {
      ...ruleSwitch(stored.amountVelocity?.rule, d.amountVelocity),
      windowSeconds: orDefault(stored.amountVelocity?.windowSeconds, d.amountVelocity.windowSeconds),
    },
    largeAmount: ruleSwitch(stored.largeAmount?.rule, d.largeAmount),
    failedStreak: {
      ...ruleSwitch(stored.failedStreak?.rule, d.failedStreak),
      maxFailures: orDefault(stored.failedStreak?.maxFailures, d.failedStreak.maxFailures),
    },
    duplicateAmount: {
      ...ruleSwitch(stored.duplicateAmount?.rule, d.duplicateAmount),
      maxRepeats: orDefault(stored.duplicateAmount?.maxRepeats, d.duplicateAmount.maxRepeats),
      windowSeconds: orDefault(stored.duplicateAmount?.windowSeconds, d.duplicateAmount.windowSeconds),
    },
    newBeneficiary: ruleSwitch(stored.newBeneficiary?.rule, d.newBeneficiary),
    blocklist: ruleSwitch(stored.blocklist?.rule, d.blocklist),
    anomaly: {
      ...ruleSwitch(stored.anomaly?.rule, d.anomaly),
      zThresholdCenti: orDefault(stored.anomaly?.zThresholdCenti, d.anomaly.zThresholdCenti),
      minSamples: orDefault(stored.anomaly?.minSamples, d.anomaly.minSamples),
    },
    currencies,
  };
}

const ruleMessage = (rule: RuleSwitch) => ({ disabled: !rule.enabled, action: rule.action });

/** Effective settings as a message, every value filled in. */
export function settingsMessage(s: Settings): RiskSettings {
  return create(RiskSettingsSchema, {
    velocity: { rule: ruleMessage(s.velocity), maxPayments: s.velocity.maxPayments, windowSeconds: s.velocity.windowSeconds },
    amountVelocity: { rule: ruleMessage(s.amountVelocity), windowSeconds: s.amountVelocity.windowSeconds },
    largeAmount: { rule: ruleMessage(s.largeAmount) },
    failedStreak: { rule: ruleMessage(s.failedStreak), maxFailures: s.failedStreak.maxFailures },
    duplicateAmount: { rule: ruleMessage(s.duplicateAmount), maxRepeats: s.duplicateAmount.maxRepeats, windowSeconds: s.duplicateAmount.windowSeconds },
    newBeneficiary: { rule: ruleMessage(s.newBeneficiary) },
    blocklist: { rule: ruleMessage(s.blocklist) },
    anomaly: { rule: ruleMessage(s.anomaly), zThresholdCenti: s.anomaly.zThresholdCenti, minSamples: s.anomaly.minSamples },
    currencies: Object.fromEntries([...s.currencies].sort(([a], [b]) => (a < b ? -1 : 1)).map(([currency, limits]) => [currency, create(CurrencyThresholdsSchema, limits)])),
  });
}

// ---------------------------------------------------------------------------------------------
// The per-process cache of each tenant's settings and blocklist

export interface TenantRules {
  readonly settings: Settings;
  readonly version: number;
  readonly blocklist: Blocklist;
}

export interface TenantSource {
  /** The stored settings and version; undefined when the tenant never stored any. */
  readVersioned(tenantId: string): Promise<{ settings: unknown; version: number } | undefined>;
  readBlocklist(tenantId: string): Promise<{ kind: number; value: string }[]>;
}

const TENANTS_CACHED_MAX = 10_000;
const KIND_NAMES = new Map<number, BlockKind>(Object.entries(BLOCK_KINDS).map(([name, kind]) => [kind, name as BlockKind]));

function blocklistOf(rows: { kind: number; value: string }[]): Blocklist {
  const entries = new Set(rows.map((row) => `${KIND_NAMES.get(row.kind)}\u0000${row.value}`));
  return { has: (kind, value) => entries.has(`${kind}\u0000${value}`) };
}

const EMPTY: TenantRules = { settings: DEFAULT_SETTINGS, version: 0, blocklist: blocklistOf([]) };

/**
 * Each tenant's rules, never older than `maxAgeMs` in this process: one small version read per
 * tenant and about half that interval, and the blocklist again only when its version moved.
 * Concurrent evaluations of a stale tenant share one read.
 */
export class TenantRulesCache {
  readonly #entries = new Map<string, { rules: TenantRules; loadedAtMs: number }>();
  readonly #loading = new Map<string, Promise<TenantRules>>();
  /** Bumped by invalidate(): a read that started before it must not be cached after it. */
  #generation = 0;

  constructor(
    private readonly source: TenantSource,
    private readonly maxAgeMs: number,
    /** A failed read of a tenant that was loaded before: the last rules stay in use meanwhile. */
    private readonly onStale: (tenantId: string, error: unknown) => void,
  ) {}

  get(tenantId: string): Promise<TenantRules> {
    const entry = this.#entries.get(tenantId);
    const ageMs = entry ? performance.now() - entry.loadedAtMs : Infinity;
    if (entry && ageMs < this.maxAgeMs) {
      // Past half its age a busy tenant is read again in the background, so that no evaluation
      // waits for PostgreSQL while the rules in use stay younger than maxAgeMs.
      if (ageMs >= this.maxAgeMs / 2) void this.#refresh(tenantId, entry);
      return Promise.resolve(entry.rules);
    }
    return this.#refresh(tenantId, entry);
  }

  /** One read at a time per tenant; a failed read keeps the last rules in use. */
  #refresh(tenantId: string, entry: { rules: TenantRules } | undefined): Promise<TenantRules> {
    let loading = this.#loading.get(tenantId);
    if (!loading) {
      const started = this.#load(tenantId, entry?.rules).catch((error: unknown) => {
        if (!entry) throw error;
        this.onStale(tenantId, error);
        return entry.rules;
      }).finally(() => {
        if (this.#loading.get(tenantId) === started) this.#loading.delete(tenantId);
      });
      loading = started;
      this.#loading.set(tenantId, loading);
    }
    return loading;
  }

  /** Forgets a tenant, so that this process's next evaluation reads its change at once. */
  invalidate(tenantId: string): void {
    this.#generation++;
    this.#entries.delete(tenantId);
    this.#loading.delete(tenantId);
  }

  async #load(tenantId: string, previous: TenantRules | undefined): Promise<TenantRules> {
    const startedAtMs = performance.now();
    const generation = this.#generation;
    const stored = await this.source.readVersioned(tenantId);
    let rules: TenantRules;
    if (!stored) rules = EMPTY;
    else if (previous && previous.version === stored.version) rules = previous;
    else {
      const blocked = await this.source.readBlocklist(tenantId);
      rules = { settings: effectiveSettings(settingsFromJson(stored.settings)), version: stored.version, blocklist: blocklistOf(blocked) };
    }
    if (generation !== this.#generation) return rules;
    this.#entries.delete(tenantId);
    if (this.#entries.size >= TENANTS_CACHED_MAX) {
      const oldest = this.#entries.keys().next().value;
      if (oldest !== undefined) this.#entries.delete(oldest);
    }
    this.#entries.set(tenantId, { rules, loadedAtMs: startedAtMs });
    return rules;
  }
}
