// The Risk service: every payment is evaluated inline for the Router. One evaluation is one Redis
// script run (counters.ts: count the payment in the user's windows and read streak and profile,
// atomically, once per payment id) and pure rules (rules.ts); PostgreSQL is written only when a
// rule fired (store.ts: one statement). Settings and blocklists come from an in-process cache
// (settings.ts). When Redis is unreachable or slow, COWRIE_RISK_WHEN_UNAVAILABLE decides, the
// rules that need no window still run, and the RISK_UNAVAILABLE flag is recorded.
import { isIP } from "node:net";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  Action,
  BlocklistEntrySchema,
  BlocklistKind,
  CurrencyProfileSchema,
  Decision,
  EvaluateResponseSchema,
  FlagSchema,
  ReviewEventSchema,
  ReviewSchema,
  ReviewStatus,
  RiskService,
  type BlocklistEntry,
  type EvaluateRequest,
  type EvaluateResponse,
  type Flag,
  type Review,
} from "../../gen/cowrie/risk/v1/risk_pb.js";
import type { Config } from "../runtime/config.js";
import { failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import { errorText, sampledLog } from "../runtime/log.js";
import { metrics } from "../runtime/metrics.js";
import type { ServiceModule } from "../runtime/service.js";
import { limitText, requireAmountMinor, requireCurrency, requireEnum, optionalId, optionalTime, requireId, requirePageSize, requireText } from "../runtime/validate.js";
import { Counters, type Counted } from "./counters.js";
import { decide, decideWithoutCounters, type FiredRule, type Payment, type Settings } from "./rules.js";
import { settingsMessage, settingsToJson, effectiveSettings, settingsFromJson, TenantRulesCache, validateSettings, type TenantRules } from "./settings.js";
import { RiskStore, type EvaluatedPayment, type FlagRow, type ReviewEventRow, type ReviewRow, type StoredDecision } from "./store.js";
import { pageOf, pagePosition } from "../runtime/pages.js";
import { EventOperationsService } from "../../gen/cowrie/events/v1/operations_pb.js";
import { eventOperations, outboxFeed } from "../runtime/events.js";
import { FEEDBACK_CONSUMER, startFeedbackConsumer } from "./feedback.js";
import { withTimeout } from "../runtime/limits.js";
import { inbox, outbox, parked } from "./schema.js";

const PAGE_SIZE_DEFAULT = 100;
const PAGE_SIZE_MAX = 500;
const RECENT_FLAGS = 20;
const REASON_MAX = 500;
const OPERATOR_MAX = 128;

const FALLBACK_ACTIONS: Readonly<Record<Config["riskWhenUnavailable"], Action>> = {
  allow: Action.FLAG,
  review: Action.REVIEW,
  block: Action.BLOCK,
};

// ---------------------------------------------------------------------------------------------
// Validation

const SUBJECT_PATTERN = /^[\x21-\x7e]{1,128}$/;

/**
 * Who pays, who is paid, and from which device, in the tenant's own terms (an email, a bank
 * account "bank:058:0123456789"...): 1 to 128 printable ASCII characters without spaces.
 */
function requireSubject(value: string, field: string): string {
  if (!SUBJECT_PATTERN.test(value)) throw invalidArgument(field, "must be 1 to 128 printable ASCII characters without spaces");
  return value;
}

function optionalSubject(value: string, field: string): string {
  return value === "" ? "" : requireSubject(value, field);
}

/** An IP address in one canonical form (IPv6 compressed, lower case), so blocklist lookups match. */
function canonicalIp(value: string, field: string): string {
  const version = isIP(value);
  if (version === 4) return value;
  if (version === 6) {
    try {
      return new URL(`http://[${value}]/`).hostname.slice(1, -1);
    } catch {
      // A zone index ("fe80::1%eth0") passes isIP but is no address to block.
    }
  }
  throw invalidArgument(field, "must be an IPv4 or IPv6 address");
}

type EvaluateInput = EvaluatedPayment & Payment;

/** A retry must describe the payment as its first evaluation did: the same payment id is the same payment. */
function requireSamePayment(payment: EvaluateInput, earlier: Pick<EvaluateInput, "userId" | "currency" | "amountMinor" | "beneficiaryId">): void {
  const fields: [keyof typeof earlier, string][] = [["userId", "user_id"], ["amountMinor", "amount_minor"], ["currency", "currency"], ["beneficiaryId", "beneficiary_id"]];
  const differing = fields.find(([key]) => payment[key] !== earlier[key]);
  if (differing) {
    throw new ConnectError(`payment ${payment.paymentId} was evaluated before with another ${differing[1]}`, Code.AlreadyExists);
  }
}

function validateEvaluate(request: EvaluateRequest): EvaluateInput {
  return {
    tenantId: requireId(request.tenantId, "tenant_id"),
    paymentId: requireId(request.paymentId, "payment_id"),
    userId: requireSubject(request.userId, "user_id"),
    amountMinor: requireAmountMinor(request.amountMinor, "amount_minor"),
    currency: requireCurrency(request.currency, "currency"),
    beneficiaryId: optionalSubject(request.beneficiaryId, "beneficiary_id"),
    deviceId: optionalSubject(request.deviceId, "device_id"),
    ipAddress: request.ipAddress === "" ? "" : canonicalIp(request.ipAddress, "ip_address"),
  };
}

function blocklistValue(kind: BlocklistKind, value: string): string {
  if (kind === BlocklistKind.IP) return canonicalIp(value, "value");
  return requireSubject(value, "value");
}

// ---------------------------------------------------------------------------------------------
// Messages

function flagMessage(flag: FiredRule, paymentId: string, userId: string, createdAt: Date): Flag {
  return create(FlagSchema, { ...flag, paymentId, userId, createdAt: timestampFromDate(createdAt) });
}

function flagRowMessage(row: FlagRow): Flag {
  return flagMessage({ rule: row.rule as FiredRule["rule"], severity: row.severity, action: row.action, detail: row.detail }, row.paymentId, row.userId, row.createdAt);
}

function evaluateResponse(payment: EvaluatedPayment, decided: StoredDecision, replayed: boolean): EvaluateResponse {
  return create(EvaluateResponseSchema, {
    decision: decided.decision,
    score: decided.score,
    reasons: decided.reasons,
    flags: decided.flags.map((flag) => flagMessage(flag, payment.paymentId, payment.userId, decided.createdAt)),
    replayed,
  });
}

function reviewMessage(row: ReviewRow, events: ReviewEventRow[]): Review {
  return create(ReviewSchema, {
    tenantId: row.tenantId,
    paymentId: row.paymentId,
    userId: row.userId,
    amountMinor: row.amountMinor,
    currency: row.currency,
    status: row.status,
    score: row.score,
    reasons: row.reasons as string[],
    createdAt: timestampFromDate(row.createdAt),
    resolvedAt: row.resolvedAt ? timestampFromDate(row.resolvedAt) : undefined,
    resolvedBy: row.resolvedBy,
    resolutionReason: row.resolutionReason,
    history: events.map((event) => create(ReviewEventSchema, { status: event.status, actor: event.actor, reason: event.reason, at: timestampFromDate(event.at) })),
  });
}

function blocklistMessage(row: { kind: number; value: string; reason: string; createdAt: Date }): BlocklistEntry {
  return create(BlocklistEntrySchema, { kind: row.kind, value: row.value, reason: row.reason, createdAt: timestampFromDate(row.createdAt) });
}

/** How an evaluation was decided: the label of cowrie_risk_evaluation_seconds. */
type EvaluationPath = "clean" | "flagged" | "replayed" | "fallback";

function windowsOf(settings: Settings) {
  return {
    velocityMs: settings.velocity.windowSeconds * 1000,
    amountMs: settings.amountVelocity.windowSeconds * 1000,
    duplicateMs: settings.duplicateAmount.windowSeconds * 1000,
  };
}


export const riskModule: ServiceModule = {
  name: "risk",
  services: [RiskService, EventOperationsService],
  // Not the cache: without Redis Risk still answers (COWRIE_RISK_WHEN_UNAVAILABLE), so it stays
  // SERVING; without PostgreSQL it cannot record what it decides.
  uses: { database: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  eventFeed: outboxFeed(outbox),
  async create(context) {
    const { database, cache, config, log } = context;
    const store = new RiskStore(database.db);
    const counters = new Counters(cache, config.riskPaymentMemoryHours * 3_600_000);
    const tenants = new TenantRulesCache(store, config.riskSettingsCacheMs, (tenantId, error) =>
      log.warn({ tenantId, err: errorText(error) }, "risk settings could not be read; using the last ones"));
    const fallback = FALLBACK_ACTIONS[config.riskWhenUnavailable];
    const evaluationSeconds = metrics().riskEvaluationSeconds;
    // While Redis is away every evaluation falls back: one warning a second, with a count.
    const unavailableLog = sampledLog();

    /** The window counts, or why they could not be had. */
    async function countOrExplain(payment: EvaluateInput, settings: Settings): Promise<Counted | { kind: "unavailable"; why: string }> {
      try {
        return await withTimeout(counters.count({ ...payment, windows: windowsOf(settings) }), config.riskRedisTimeoutMs);
      } catch (error) {
        const why = errorText(error);
        unavailableLog("counters", (notLogged) =>
          log.warn({ err: why, notLogged, whenUnavailable: config.riskWhenUnavailable }, "risk counters unavailable; applying COWRIE_RISK_WHEN_UNAVAILABLE"));
        return { kind: "unavailable", why: `Redis unavailable (${why})` };
      }
    }

    /** Records a fired verdict (the first one of the payment wins) and answers with what is stored. */
    async function recorded(payment: EvaluateInput, verdict: ReturnType<typeof decide>, replayed: boolean): Promise<EvaluateResponse> {
      const { stored, inserted } = await store.recordDecision(payment, verdict);
      return evaluateResponse(payment, stored, replayed || !inserted);
    }

    /** The answer, and which way it was reached (cowrie_risk_evaluation_seconds{path}). */
    async function evaluate(payment: EvaluateInput, rules: TenantRules): Promise<{ response: EvaluateResponse; path: EvaluationPath }> {
      const counted = await countOrExplain(payment, rules.settings);
      if (counted.kind === "unavailable") {
        // PostgreSQL is the idempotency record while Redis is away.
        const earlier = await store.findDecision(payment.tenantId, payment.paymentId);
        if (earlier) return { response: evaluateResponse(payment, earlier, true), path: "fallback" };
        return { response: await recorded(payment, decideWithoutCounters(payment, rules.settings, rules.blocklist, fallback, counted.why), false), path: "fallback" };
      }
      const replayed = counted.kind === "replayed";
      if (replayed) requireSamePayment(payment, counted.earlier);
      // A fired decision is in PostgreSQL: a retry gets it. So is one decided while Redis was
      // away, which a clean evaluation must not contradict unless the fallback was ALLOW too.
      if (replayed || fallback !== Action.FLAG) {
        const earlier = await store.findDecision(payment.tenantId, payment.paymentId);
        if (earlier) return { response: evaluateResponse(payment, earlier, true), path: "replayed" };
      }
      // A clean first decision is not stored: the retry decides again from the same snapshot,
      // which gives the same clean ALLOW unless the tenant's settings changed in between.
      const verdict = decide(payment, counted.observation, rules.settings, rules.blocklist);
      if (verdict.flags.length === 0) return { response: create(EvaluateResponseSchema, { decision: Decision.ALLOW, score: 0, replayed }), path: replayed ? "replayed" : "clean" };
      return { response: await recorded(payment, verdict, replayed), path: "flagged" };
    }

    async function requireReview(tenantId: string, paymentId: string) {
      const found = await store.findReview(tenantId, paymentId);
      if (!found) throw notFound(`review of payment ${paymentId}`);
      return found;
    }

    const feedback = await startFeedbackConsumer(context, counters);
    const operations = eventOperations({
      db: database.db,
      tables: { inbox, parked },
      broker: context.broker,
      namespace: config.brokerNamespace,
      consumers: [FEEDBACK_CONSUMER.name],
    });

    return {
      stop: () => feedback.close(),
      routes(router) {
        router.service(EventOperationsService, operations);
        router.service(RiskService, {
          async evaluate(request) {
            const startedAt = performance.now();
            const payment = validateEvaluate(request);
            const { response, path } = await evaluate(payment, await tenants.get(payment.tenantId));
            evaluationSeconds.observe({ path }, (performance.now() - startedAt) / 1000);
            return response;
          },

          async recordPaymentOutcome(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const paymentId = requireId(request.paymentId, "payment_id");
            const userId = requireSubject(request.userId, "user_id");
            const result = await counters.recordOutcome(tenantId, paymentId, userId, request.succeeded);
            if (result.kind === "user_mismatch") throw invalidArgument("user_id", `payment ${paymentId} was evaluated for another user`);
            if (result.kind === "replayed" && result.succeeded !== request.succeeded) {
              throw failedPrecondition(`payment ${paymentId} was already recorded as ${result.succeeded ? "succeeded" : "failed"}`);
            }
            return { failedStreak: result.failedStreak, replayed: result.kind === "replayed", learned: result.learned };
          },

          async getRiskSettings(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const stored = await store.readVersioned(tenantId);
            return { settings: settingsMessage(effectiveSettings(settingsFromJson(stored?.settings))), version: BigInt(stored?.version ?? 0) };
          },

          async updateRiskSettings(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const settings = validateSettings(request.settings);
            if (request.expectedVersion > BigInt(Number.MAX_SAFE_INTEGER)) throw invalidArgument("expected_version", "is not a version this service issued");
            const version = await store.writeSettings(tenantId, settingsToJson(settings), Number(request.expectedVersion));
            if (version === undefined) {
              throw new ConnectError(`settings of tenant ${tenantId} changed since version ${request.expectedVersion}; read them again`, Code.Aborted);
            }
            tenants.invalidate(tenantId);
            return { settings: settingsMessage(effectiveSettings(settings)), version: BigInt(version) };
          },

          async addBlocklistEntry(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const kind = requireEnum(request.kind, "kind", BlocklistKind) as BlocklistKind;
            const value = blocklistValue(kind, request.value);
            const reason = limitText(request.reason, "reason", REASON_MAX);
            const row = await store.addBlocklistEntry(tenantId, kind, value, reason);
            tenants.invalidate(tenantId);
            return { entry: blocklistMessage(row) };
          },

          async removeBlocklistEntry(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const kind = requireEnum(request.kind, "kind", BlocklistKind) as BlocklistKind;
            const value = blocklistValue(kind, request.value);
            const removed = await store.removeBlocklistEntry(tenantId, kind, value);
            tenants.invalidate(tenantId);
            if (!removed) throw notFound(`blocklist entry ${BlocklistKind[kind]} ${value}`);
            return {};
          },

          async listBlocklistEntries(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            if (request.kind !== BlocklistKind.UNSPECIFIED) requireEnum(request.kind, "kind", BlocklistKind);
            const pageSize = requirePageSize(request.pageSize, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT);
            const position = pagePosition(request.pageToken, "b", /^[1-4]:[\x21-\x7e]{1,128}$/);
            const after = position === undefined ? undefined : { kind: Number(position.slice(0, 1)), value: position.slice(2) };
            const rows = await store.listBlocklist(tenantId, request.kind, pageSize + 1, after);
            const { page, nextPageToken } = pageOf(rows, pageSize, "b", (last) => `${last.kind}:${last.value}`);
            return { entries: page.map(blocklistMessage), nextPageToken };
          },

          async listFlags(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const userId = optionalSubject(request.userId, "user_id");
            const paymentId = optionalId(request.paymentId, "payment_id");
            const pageSize = requirePageSize(request.pageSize, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT);
            const position = pagePosition(request.pageToken, "f", /^[1-9][0-9]{0,18}$/);
            const rows = await store.listFlags({
              tenantId, userId, paymentId,
              from: optionalTime(request.fromTime, "from_time"),
              to: optionalTime(request.toTime, "to_time"),
              beforeId: position === undefined ? undefined : BigInt(position),
            }, pageSize + 1);
            const { page, nextPageToken } = pageOf(rows, pageSize, "f", (last) => String(last.id));
            return { flags: page.map(flagRowMessage), nextPageToken };
          },

          async getUserRiskSummary(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const userId = requireSubject(request.userId, "user_id");
            const { settings } = await tenants.get(tenantId);
            const [summary, recent, pending] = await Promise.all([
              counters.summary(tenantId, userId, windowsOf(settings)),
              store.listFlags({ tenantId, userId, paymentId: "" }, RECENT_FLAGS),
              store.pendingReviews(tenantId, userId),
            ]);
            return {
              userId,
              paymentsInVelocityWindow: summary.paymentsInWindow,
              velocityWindowSeconds: settings.velocity.windowSeconds,
              amountVelocityWindowSeconds: settings.amountVelocity.windowSeconds,
              failedStreak: summary.failedStreak,
              currencies: summary.currencies.map(({ currency, amountInWindowMinor, profile }) => create(CurrencyProfileSchema, {
                currency,
                amountInWindowMinor,
                samples: BigInt(profile?.samples ?? 0),
                amountMeanMinor: BigInt(Math.round(profile?.amountMean ?? 0)),
                amountDeviationMinor: BigInt(Math.round(Math.sqrt(profile?.amountVariance ?? 0))),
                intervalMeanMs: BigInt(profile && profile.intervalSamples > 0 ? Math.round(Math.exp(profile.intervalMean) * 1000) : 0),
                intervalDeviationCenti: profile && profile.intervalSamples > 0 ? Math.round(Math.sqrt(profile.intervalVariance) * 100) : 0,
                lastPaymentAt: profile ? timestampFromDate(new Date(profile.lastAtMs)) : undefined,
              })),
              recentFlags: recent.map(flagRowMessage),
              pendingReviews: pending,
            };
          },

          async getReview(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const paymentId = requireId(request.paymentId, "payment_id");
            const { review, events } = await requireReview(tenantId, paymentId);
            return { review: reviewMessage(review, events) };
          },

          async listReviews(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            if (request.status !== ReviewStatus.UNSPECIFIED) requireEnum(request.status, "status", ReviewStatus);
            const pageSize = requirePageSize(request.pageSize, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT);
            const position = pagePosition(request.pageToken, "r", /^[1-9][0-9]{0,18}$/);
            const rows = await store.listReviews(tenantId, request.status, pageSize + 1, position === undefined ? undefined : BigInt(position));
            const { page, nextPageToken } = pageOf(rows, pageSize, "r", (last) => String(last.review.seq));
            return { reviews: page.map(({ review, events }) => reviewMessage(review, events)), nextPageToken };
          },

          async resolveReview(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const paymentId = requireId(request.paymentId, "payment_id");
            const operator = requireText(request.operator, "operator", OPERATOR_MAX);
            const reason = requireText(request.reason, "reason", REASON_MAX);
            const status = request.approve ? ReviewStatus.APPROVED : ReviewStatus.DECLINED;
            const resolved = await store.resolveReview(tenantId, paymentId, status, operator, reason);
            const { review, events } = await requireReview(tenantId, paymentId);
            if (!resolved && review.status !== status) {
              throw failedPrecondition(`review of payment ${paymentId} is already ${ReviewStatus[review.status]}`);
            }
            return { review: reviewMessage(review, events), replayed: !resolved };
          },
        });
      },
    };
  },
};
