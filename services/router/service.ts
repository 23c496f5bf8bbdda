// The Router: owner of the payment lifecycle. Internal payments and refunds are recorded with
// their idempotency key before any money moves, then driven through the Wallet by the processor.
// Gateway payments (PAY_IN, PAYOUT, refunds of PAY_IN) are recorded and answered at once, then
// taken from a RabbitMQ work queue by workers that route them across gateways (gateway-flow.ts,
// routing.ts). In the background a completer finishes whatever a crash or an outage left
// unfinished, and a resolver asks gateways about outcomes that are not known yet.
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  GatewayCallSchema,
  PaymentKind,
  PaymentStatus,
  RouterService,
  RoutingCandidateSchema,
  type CreatePaymentRequest,
  type ListPaymentsRequest,
  type RefundPaymentRequest,
} from "../../gen/cowrie/router/v1/router_pb.js";
import { ReviewStatus, RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { currentCallContext, remainingMs } from "../runtime/call-context.js";
import type { Db } from "../runtime/db.js";
import { failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import { errorText } from "../runtime/log.js";
import { backoffMs, pause } from "../runtime/pause.js";
import { every } from "../runtime/periodic.js";
import type { AnyRequest, AnyResponse } from "../runtime/server.js";
import type { ServiceModule } from "../runtime/service.js";
import { limitText, optionalTime, requireEnum, requireId, requireIdempotencyKey, requirePageSize } from "../runtime/validate.js";
import { GATEWAY_NAMES, type GatewayName } from "./gateways/connector.js";
import { createConnectors } from "./gateways/index.js";
import { LedgerService } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { ReconciliationService } from "../../gen/cowrie/router/v1/reconciliation_pb.js";
import { createReconciliation } from "./reconciliation/handlers.js";
import { GatewayFlow, paymentIdOfReference } from "./gateway-flow.js";
import { paymentMessage } from "./messages.js";
import { PaymentProcessor, releaseQuietly, type DriveOutcome, type Driver } from "./processor.js";
import { RiskCheck, defaultUserId } from "./risk.js";
import { GatewayPool, type Candidate } from "./routing.js";
import { validatePaymentFields, validatePayer, type CreatedKind } from "./instrument.js";
import { outbox, type RequestFields } from "./schema.js";
import { runLimited } from "../runtime/limits.js";
import { outboxFeed } from "../runtime/events.js";
import {
  claimUnfinished,
  claimDue,
  persistTransition,
  rescheduleCheck,
  gatewayCallsOf,
  isGatewayPayment,
  differingField,
  findById,
  findByKey,
  findPayment,
  fingerprintOf,
  insertPayment,
  listPayments,
  newPaymentId,
  openRefund,
  paymentHistory,
  type ListFilters,
  type PaymentRow,
} from "./store.js";

const PAGE_SIZE_DEFAULT = 20;
const PAGE_SIZE_MAX = 100;
const REFERENCE_MAX = 128;
/** Most stuck payments one completer pass takes, and how many it drives at once. */
const COMPLETER_BATCH = 100;
const COMPLETER_CONCURRENCY = 8;
/** Wallets whose existence the Router remembers (tenant and id; about 100 bytes each). */
const KNOWN_WALLETS_MAX = 100_000;
/** The Router's RabbitMQ names under a namespace: the exchange and the work queue of gateway payments. */
export function workTopology(namespace: string) {
  return { exchanges: [`${namespace}.router`], queues: [`${namespace}.router.gateway-payments`] } as const;
}

/** The work queue of gateway payments: one message per payment id; the database is the truth. */
const WORK_ROUTING_KEY = "payments.gateway";
/**
 * Deliveries of one work message before it is dead-lettered (the completer still finds the
 * payment). Outages are waited out without handing the message back, so what counts here is a
 * Router process or a broker connection lost while it held the message. (Changing it changes the
 * queue's arguments, which RabbitMQ refuses for a queue that exists: it needs a new queue.)
 */
const WORK_DELIVERY_LIMIT = 10;
/** Pauses of a worker whose payment a dependency outage interrupted: full jitter, doubling to the cap. */
const WORK_RETRY_BASE_MS = 500;
const WORK_RETRY_MAX_MS = 15_000;
/** How soon a payment in review is first asked about, and the longest between two asks. */
const REVIEW_LEASE_MS = 1_000;
const REVIEW_CHECK_MAX_MS = 60_000;
/** Most OUTCOME_UNKNOWN (or IN_REVIEW) payments one resolver (or review) pass asks about. */
const RESOLVER_BATCH = 50;
/** Largest gateway webhook body read; gateways' notifications are a few kilobytes. */
const WEBHOOK_BODY_MAX = 256 * 1024;
/**
 * How long wait_for_outcome keeps back from the deadline to answer in time: at least this, and
 * a tenth of the budget (a busy database makes the last read slow; an answer after the deadline
 * is an error the caller's breaker counts against the Router).
 */
const WAIT_RESERVE_MS = 250;


function keyReused(stored: RequestFields, incoming: RequestFields): ConnectError {
  const field = differingField(stored, incoming) ?? "request";
  const what = field === "operation" ? `it was used for ${stored.operation}` : `${field} differs`;
  return new ConnectError(`idempotency key was already used for a different request (${what})`, Code.AlreadyExists);
}

// ---------------------------------------------------------------------------------------------
// Validation: every field checked, the field named, before anything is written.

function validateCreate(request: CreatePaymentRequest) {
  const tenantId = requireId(request.tenantId, "tenant_id");
  const idempotencyKey = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
  const kind = requireEnum(request.kind, "kind", PaymentKind) as PaymentKind;
  if (kind === PaymentKind.REFUND) throw invalidArgument("kind", "REFUND payments are made with RefundPayment; use RefundPayment");
  const { amountMinor, currency, sourceWalletId, destinationWalletId, feeMinor, reference, instrument } = validatePaymentFields(request, kind as CreatedKind);
  const payer = validatePayer(request, defaultUserId(kind, sourceWalletId, instrument?.customerEmail ?? ""));
  const fields: RequestFields = {
    operation: "CreatePayment",
    kind: PaymentKind[kind],
    amount_minor: String(amountMinor),
    currency,
    source_wallet_id: sourceWalletId,
    destination_wallet_id: destinationWalletId,
    fee_minor: String(feeMinor),
    reference,
    ...(instrument ? { instrument: JSON.stringify(instrument) } : {}),
  };
  return { tenantId, idempotencyKey, kind, amountMinor, currency, sourceWalletId, destinationWalletId, feeMinor, reference, instrument, payer, fields };
}

function validateRefund(request: RefundPaymentRequest) {
  const tenantId = requireId(request.tenantId, "tenant_id");
  const idempotencyKey = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
  const paymentId = requireId(request.paymentId, "payment_id");
  if (request.amountMinor < 0n) throw invalidArgument("amount_minor", "must be >= 0 (minor units; 0 refunds all that is left)");
  const reason = limitText(request.reason, "reason", REFERENCE_MAX);
  const fields: RequestFields = { operation: "RefundPayment", payment_id: paymentId, amount_minor: String(request.amountMinor), reason };
  return { tenantId, idempotencyKey, paymentId, requestedMinor: request.amountMinor, reason, fields };
}

function validateList(request: ListPaymentsRequest): { filters: ListFilters; pageSize: number } {
  const tenantId = requireId(request.tenantId, "tenant_id");
  const status = request.status === PaymentStatus.UNSPECIFIED ? undefined : (requireEnum(request.status, "status", PaymentStatus) as PaymentStatus);
  const kind = request.kind === PaymentKind.UNSPECIFIED ? undefined : (requireEnum(request.kind, "kind", PaymentKind) as PaymentKind);
  const walletId = request.walletId === "" ? undefined : requireId(request.walletId, "wallet_id");
  const createdFrom = optionalTime(request.createdFrom, "created_from");
  const createdTo = optionalTime(request.createdTo, "created_to");
  if (createdFrom && createdTo && createdTo <= createdFrom) throw invalidArgument("created_to", "must be after created_from");
  return {
    filters: { tenantId, status, kind, walletId, createdFrom, createdTo },
    pageSize: requirePageSize(request.pageSize, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT),
  };
}

// Page tokens: base64url JSON of the last row's (created_at, id) and a digest of the tenant and
// filters they were issued for, so a token cannot be replayed against another listing.

function filtersDigest(filters: ListFilters): string {
  const canonical = [filters.tenantId, filters.status ?? 0, filters.kind ?? 0, filters.walletId ?? "", filters.createdFrom?.getTime() ?? "", filters.createdTo?.getTime() ?? ""];
  return createHash("sha256").update(JSON.stringify(canonical)).digest("base64url").slice(0, 22);
}

function pageToken(last: PaymentRow, filters: ListFilters): string {
  return Buffer.from(JSON.stringify({ t: last.createdAt.getTime(), i: last.id, f: filtersDigest(filters) }), "utf8").toString("base64url");
}

function readPageToken(token: string, filters: ListFilters): { createdAt: Date; id: string } | undefined {
  if (token === "") return undefined;
  let decoded: unknown;
  try {
    decoded = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw invalidArgument("page_token", "is not a token this service issued");
  }
  const { t, i, f } = (decoded ?? {}) as { t?: unknown; i?: unknown; f?: unknown };
  if (typeof t !== "number" || !Number.isSafeInteger(t) || Number.isNaN(new Date(t).getTime()) || typeof i !== "string" || typeof f !== "string") {
    throw invalidArgument("page_token", "is not a token this service issued");
  }
  if (f !== filtersDigest(filters)) throw invalidArgument("page_token", "was issued for different filters; use the same filters on every page");
  return { createdAt: new Date(t), id: i };
}

// ---------------------------------------------------------------------------------------------

/**
 * The payment a caller gets back after a drive. A drive interrupted by the Wallet (unreachable,
 * timed out) leaves the payment PROCESSING for the completer and answers it as it is; but when
 * the caller's own deadline is already gone there is no one to answer, so the error surfaces.
 */
function settled(outcome: DriveOutcome): PaymentRow {
  const signal = currentCallContext()?.signal;
  if (outcome.interruption && signal?.aborted) {
    throw signal.reason instanceof ConnectError ? signal.reason : outcome.interruption;
  }
  return outcome.payment;
}



export const routerModule: ServiceModule = {
  name: "router",
  services: [RouterService, ReconciliationService],
  uses: { database: true, broker: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  eventFeed: outboxFeed(outbox),
  async create({ database, client, config, log, broker }) {
    const db: Db = database.db;
    const wallets = client(WalletService, "wallet");
    const knownWallets = new Set<string>();
    const connectors = createConnectors(config);
    const pool = new GatewayPool(connectors.values(), {
      concurrencyMax: config.gatewayConcurrency,
      ratePerSecond: config.gatewayRatePerSecond,
      breakerFailures: config.gatewayBreakerFailures,
      breakerOpenMs: config.gatewayBreakerOpenMs,
      explorationShare: config.routingExplorationPercent / 100,
    }, log);
    const riskClient = client(RiskService, "risk");
    const risk = new RiskCheck(riskClient, { timeoutMs: config.riskTimeoutMs, whenUnavailable: config.riskWhenUnavailable }, log);
    const flow = new GatewayFlow(db, pool, wallets, {
      callTimeoutMs: config.gatewayTimeoutMs,
      retries: config.gatewayRetries,
      flagAfterMs: config.outcomeUnknownFlagAfterMs,
      patienceMs: config.gatewayPatienceMs,
    }, risk, log);
    const processor = new PaymentProcessor(db, wallets, log, flow, risk);
    // Reconciliation settles what it safely can through the processor's own paths.
    const reconciliation = await createReconciliation({
      db, config, log, connectors, ledger: client(LedgerService, "ledger"),
      drive: async (payment, driver) => (await processor.drive(payment, driver, stopping.signal)).payment,
    });
    const { exchanges: [workExchange], queues: [workQueue] } = workTopology(config.brokerNamespace);

    /**
     * A wallet id the tenant does not have (another tenant's, or made up) is NOT_FOUND naming the
     * field, and nothing is recorded, as everywhere else in Cowrie. A wallet that exists but cannot
     * pay (frozen, short of funds) is a decided decline: a recorded FAILED payment. The check gets
     * a third of the budget; when the Wallet cannot answer in that time the payment is recorded
     * anyway (accepted, PROCESSING) and the processor decides, wallet_not_found included.
     */
    function walletsKnown(tenantId: string, fields: Record<string, string>): boolean {
      return Object.values(fields).every((walletId) => knownWallets.has(`${tenantId}\u0000${walletId}`));
    }

    async function requireWallets(tenantId: string, fields: Record<string, string>): Promise<void> {
      const context = currentCallContext();
      const timeoutMs = Math.max(50, Math.floor((context ? remainingMs(context) : 3_000) / 3));
      await Promise.all(Object.entries(fields).map(async ([field, walletId]) => {
        const known = `${tenantId}\u0000${walletId}`;
        if (knownWallets.has(known)) return;
        try {
          await wallets.getWallet({ tenantId, walletId }, { timeoutMs });
          // Wallets are never deleted nor move tenant: once seen, a wallet needs no second look.
          if (knownWallets.size >= KNOWN_WALLETS_MAX) knownWallets.clear();
          knownWallets.add(known);
        } catch (error) {
          if (ConnectError.from(error).code === Code.NotFound) throw notFound(`${field} ${walletId}`);
        }
      }));
    }

    // The completer: every interval, take payments left CREATED or PROCESSING for longer than
    // recoveryAfterMs (their caller is long gone: the threshold exceeds the longest deadline) and
    // drive them with the same code path. One pass at a time per process; several processes
    // split the work through SKIP LOCKED and leases.
    const stopping = new AbortController();
    const completer = every(config.completerIntervalMs, "completer", completerPass, log);

    // The resolver: every interval, ask gateways about payments whose outcome is unknown and are
    // due for a check (their next check backs off exponentially, up to five minutes).
    const resolver = every(config.completerIntervalMs, "resolver", async () => {
      const due = await claimDue(db, PaymentStatus.OUTCOME_UNKNOWN, config.gatewayTimeoutMs * 4, RESOLVER_BATCH);
      await runLimited(due, COMPLETER_CONCURRENCY, async (payment) => {
        if (!stopping.signal.aborted) await processor.drive(payment, "resolver", stopping.signal);
      });
      if (due.length > 0) log.info({ asked: due.length }, "resolver pass");
    }, log);

    // The review loop: payments Risk sent to review wait IN_REVIEW (their money held) until an
    // operator resolves the review at Risk; each is asked about with backoff. Approved, it goes
    // on from PROCESSING; declined, its hold is released and it fails.
    const reviewer = every(config.completerIntervalMs, "review", async () => {
      const due = await claimDue(db, PaymentStatus.IN_REVIEW, REVIEW_LEASE_MS, RESOLVER_BATCH);
      await runLimited(due, COMPLETER_CONCURRENCY, async (payment) => {
        if (!stopping.signal.aborted) await followReview(payment);
      });
    }, log);

    async function followReview(payment: PaymentRow): Promise<void> {
      const { review } = await riskClient.getReview({ tenantId: payment.tenantId, paymentId: payment.id }, { timeoutMs: config.riskTimeoutMs * 5 });
      if (review?.status === ReviewStatus.APPROVED) {
        const moved = await persistTransition(db, payment, PaymentStatus.PROCESSING, `review approved by ${review.resolvedBy}: ${review.resolutionReason}`, {}, false);
        if (moved && isGatewayPayment(moved)) await enqueue(moved);
        else if (moved) await processor.drive(moved, "completer", stopping.signal);
        return;
      }
      if (review?.status === ReviewStatus.DECLINED) {
        if (payment.holdId !== "") await releaseQuietly(wallets, payment.tenantId, payment.holdId);
        const failureMessage = `declined in review by ${review.resolvedBy}: ${review.resolutionReason}`;
        await persistTransition(db, payment, PaymentStatus.FAILED, "risk_declined", { failureCode: "risk_declined", failureMessage }, false);
        return;
      }
      // Still pending: ask again later, up to once a minute.
      const next = new Date(Date.now() + backoffMs(payment.checks, REVIEW_LEASE_MS, REVIEW_CHECK_MAX_MS, "none"));
      await rescheduleCheck(db, payment, next, payment.needsReconciliation);
    }

    // The workers: gateway payments from the work queue, a bounded number at a time. A payment no
    // gateway can take now is kept (its message unacknowledged) and tried again, so an outage
    // grows the queue, not the failure count; workers drain it as gateways recover.
    const consumer = await broker.consume(
      { queue: workQueue, exchange: workExchange, bindingKeys: [WORK_ROUTING_KEY], concurrency: config.gatewayWorkers, deliveryLimit: WORK_DELIVERY_LIMIT },
      async (message) => {
        const paymentId = Buffer.from(message.body).toString("utf8");
        // A dependency outage (Wallet, Ledger, the database) is waited out here, the message kept,
        // with growing pauses: handing it back would count a delivery each time, and a long outage
        // would dead-letter every payment in flight.
        let outages = 0;
        const waitOut = async (interruption: unknown) => {
          if (stopping.signal.aborted) throw new Error("router is stopping; the message goes back to the queue");
          outages += 1;
          if (outages === 1 || outages % 10 === 0) log.warn({ paymentId, err: errorText(interruption), outages }, "gateway payment interrupted; trying again");
          await pause(backoffMs(outages - 1, WORK_RETRY_BASE_MS, WORK_RETRY_MAX_MS), stopping.signal);
        };
        let payment: PaymentRow | undefined;
        while (!payment) {
          try {
            payment = await findById(db, paymentId);
            if (!payment) {
              log.warn({ paymentId }, "work message for an unknown payment; dropped");
              return;
            }
          } catch (error) {
            await waitOut(error);
          }
        }
        for (;;) {
          const outcome = await processor.drive(payment, "worker", stopping.signal);
          payment = outcome.payment;
          if (stopping.signal.aborted) throw new Error("router is stopping; the message goes back to the queue");
          if (outcome.interruption) {
            await waitOut(outcome.interruption);
            continue;
          }
          outages = 0;
          if (outcome.deferMs === undefined) return;
          await pause(outcome.deferMs, stopping.signal);
        }
      },
    );

    /** Hands a recorded gateway payment to the workers; if that fails the completer finds it later. */
    async function enqueue(payment: PaymentRow): Promise<void> {
      try {
        await broker.publish(workExchange, WORK_ROUTING_KEY, Buffer.from(payment.id, "utf8"), { messageId: payment.id });
      } catch (error) {
        log.warn({ paymentId: payment.id, err: errorText(error) }, "could not queue gateway payment; the completer will take it");
      }
    }

    /** Waits for a gateway payment to leave CREATED/PROCESSING, up to the call's deadline. */
    async function awaitOutcome(row: PaymentRow): Promise<PaymentRow> {
      const context = currentCallContext();
      const budgetMs = context ? remainingMs(context) : 0;
      const untilMs = Date.now() + Math.max(0, budgetMs - Math.max(WAIT_RESERVE_MS, budgetMs / 10));
      let payment = row;
      for (let pollMs = 20; payment.status === PaymentStatus.CREATED || payment.status === PaymentStatus.PROCESSING; pollMs = Math.min(250, pollMs * 2)) {
        if (Date.now() + pollMs > untilMs) break;
        await pause(pollMs, context?.signal);
        payment = (await findById(db, payment.id)) ?? payment;
      }
      return payment;
    }

    async function completerPass(): Promise<void> {
      const cutoff = new Date(Date.now() - config.recoveryAfterMs);
      const claimed = await claimUnfinished(db, cutoff, config.recoveryAfterMs, COMPLETER_BATCH);
      if (claimed.length === 0) return;
      const finished: Record<string, number> = {};
      await runLimited(claimed, COMPLETER_CONCURRENCY, async (payment) => {
        if (stopping.signal.aborted) return;
        try {
          const { payment: after } = await processor.drive(payment, "completer", stopping.signal);
          const status = PaymentStatus[after.status] ?? String(after.status);
          finished[status] = (finished[status] ?? 0) + 1;
        } catch (error) {
          log.warn({ paymentId: payment.id, err: errorText(error) }, "completer could not drive payment; will retry");
        }
      });
      log.info({ claimed: claimed.length, ...finished }, "completer pass");
    }

    /** Some gateway must serve the currency and country, or the payment could never be made. */
    function requireRoutable(currency: string, country: string): void {
      if (!pool.serves(currency, country)) {
        throw invalidArgument("currency", `no gateway serves ${currency} payments in ${country}; gateways: ${GATEWAY_NAMES.join(", ")}`);
      }
    }

    /** Drives a payment (new, or found under a replayed key) as far as it goes now, then answers it. */
    async function driveAndAnswer(row: PaymentRow, driver: Driver): Promise<PaymentRow> {
      return settled(await processor.drive(row, driver));
    }

    /**
     * POST /webhooks/<gateway>: a gateway telling Cowrie an outcome. Only a correctly signed
     * notification is taken, and even then only as a hint: the payment is driven at once, and the
     * drive settles it from the gateway's status answer, never from the notification's body.
     */
    function receiveWebhook(gateway: string, request: AnyRequest, response: AnyResponse): void {
      const connector = connectors.get(gateway as GatewayName);
      const chunks: Buffer[] = [];
      let size = 0;
      request.on("data", (chunk: Buffer) => {
        size += chunk.length;
        if (size <= WEBHOOK_BODY_MAX) chunks.push(chunk);
      });
      request.on("end", () => {
        const event = connector && size <= WEBHOOK_BODY_MAX
          ? connector.verifyWebhook(Object.fromEntries(Object.entries(request.headers).map(([name, value]) => [name, Array.isArray(value) ? value.join(",") : value])), Buffer.concat(chunks).toString("utf8"))
          : undefined;
        if (!event) {
          log.warn({ gateway, size }, "gateway webhook refused: unknown gateway, too large, or a bad signature");
          response.writeHead(connector ? 401 : 404, { "content-type": "text/plain" }).end("refused\n");
          return;
        }
        // Acknowledge at once (gateways retry slow receivers), then act.
        response.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
        const paymentId = paymentIdOfReference(event.reference);
        if (!paymentId) return;
        void findById(db, paymentId)
          .then((payment) => (payment && isGatewayPayment(payment) ? processor.drive(payment, "webhook", stopping.signal) : undefined))
          .catch((error: unknown) => log.warn({ gateway, reference: event.reference, err: errorText(error) }, "gateway webhook could not drive its payment"));
      });
    }

    return {
      http(request, response) {
        const match = /^\/webhooks\/([a-z]+)$/.exec(request.url ?? "");
        if (request.method !== "POST" || !match) return false;
        receiveWebhook(match[1] as string, request, response);
        return true;
      },
      async stop() {
        stopping.abort(new ConnectError("router is stopping", Code.Unavailable));
        await consumer.close();
        await Promise.all([completer.stop(), resolver.stop(), reviewer.stop(), reconciliation.stop()]);
        await processor.idle();
      },
      routes(router) {
        reconciliation.routes(router);
        router.service(RouterService, {
          async createPayment(request) {
            const input = validateCreate(request);
            const gateway = input.kind !== PaymentKind.INTERNAL;
            if (gateway) requireRoutable(input.currency, input.instrument?.country ?? "");
            const named = Object.fromEntries(Object.entries({ source_wallet_id: input.sourceWalletId, destination_wallet_id: input.destinationWalletId }).filter(([, id]) => id !== ""));
            if (!walletsKnown(input.tenantId, named) && !(await findByKey(db, input.tenantId, input.idempotencyKey))) {
              await requireWallets(input.tenantId, named);
            }
            const now = new Date();
            const { row, created } = await insertPayment(
              db,
              {
                id: newPaymentId(now.getTime()),
                tenantId: input.tenantId,
                idempotencyKey: input.idempotencyKey,
                fingerprint: fingerprintOf(input.fields),
                request: input.fields,
                kind: input.kind,
                // An internal payment is recorded and started in one transaction: its money starts
                // moving right away (the history still shows CREATED, then PROCESSING). A gateway
                // payment is accepted CREATED and waits for a worker.
                status: gateway ? PaymentStatus.CREATED : PaymentStatus.PROCESSING,
                instrument: input.instrument,
                payer: input.payer,
                amountMinor: input.amountMinor,
                currency: input.currency,
                sourceWalletId: input.sourceWalletId,
                destinationWalletId: input.destinationWalletId,
                feeMinor: input.feeMinor,
                reference: input.reference,
                createdAt: now,
                updatedAt: now,
              },
              "created",
            );
            if (!created && row.fingerprint !== fingerprintOf(input.fields)) throw keyReused(row.request, input.fields);
            if (isGatewayPayment(row)) {
              if (created) await enqueue(row);
              const payment = request.waitForOutcome ? await awaitOutcome(row) : row;
              return { payment: paymentMessage(payment), replayed: !created };
            }
            const payment = await driveAndAnswer(row, created ? "request" : "replay");
            return { payment: paymentMessage(payment), replayed: !created };
          },

          async getPayment(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const paymentId = requireId(request.paymentId, "payment_id");
            const row = await findPayment(db, tenantId, paymentId);
            if (!row) throw notFound(`payment ${paymentId}`);
            return { payment: paymentMessage(row, await paymentHistory(db, row.id)) };
          },

          async listPayments(request) {
            const { filters, pageSize } = validateList(request);
            const after = readPageToken(request.pageToken, filters);
            const rows = await listPayments(db, filters, after, pageSize + 1);
            const page = rows.slice(0, pageSize);
            const last = page[page.length - 1];
            return {
              payments: page.map((row) => paymentMessage(row)),
              nextPageToken: rows.length > pageSize && last ? pageToken(last, filters) : "",
            };
          },

          async refundPayment(request) {
            const input = validateRefund(request);
            const fingerprint = fingerprintOf(input.fields);
            const now = new Date();
            const opening = await openRefund(db, {
              id: newPaymentId(now.getTime()),
              tenantId: input.tenantId,
              idempotencyKey: input.idempotencyKey,
              fingerprint,
              request: input.fields,
              paymentId: input.paymentId,
              requestedMinor: input.requestedMinor,
              reason: input.reason,
              now,
            });
            let refund: PaymentRow;
            switch (opening.kind) {
              case "not_found":
                throw notFound(`payment ${input.paymentId}`);
              case "refused":
                throw failedPrecondition(opening.refusal.message);
              case "refused_before":
                if (opening.refusal.fingerprint !== fingerprint) throw keyReused(opening.refusal.request, input.fields);
                throw failedPrecondition(opening.refusal.message);
              case "existing":
                if (opening.row.fingerprint !== fingerprint) throw keyReused(opening.row.request, input.fields);
                refund = isGatewayPayment(opening.row) ? opening.row : await driveAndAnswer(opening.row, "replay");
                break;
              case "created":
                // A refund of a PAY_IN goes back through the gateway: accepted, then worked.
                if (isGatewayPayment(opening.refund)) await enqueue(opening.refund);
                refund = isGatewayPayment(opening.refund) ? opening.refund : await driveAndAnswer(opening.refund, "request");
                break;
            }
            // The refunded payment after this refund (a failed refund gave its amount back).
            const original = refund.refundedPaymentId ? await findById(db, refund.refundedPaymentId) : undefined;
            if (!original) throw new ConnectError(`refunded payment of ${refund.id} is missing`, Code.Internal);
            return { refund: paymentMessage(refund), payment: paymentMessage(original), replayed: opening.kind === "existing" };
          },

          async getRoutingDecisions(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const paymentId = requireId(request.paymentId, "payment_id");
            const row = await findPayment(db, tenantId, paymentId);
            if (!row) throw notFound(`payment ${paymentId}`);
            const calls = await gatewayCallsOf(db, row.id);
            return {
              calls: calls.map((call) =>
                create(GatewayCallSchema, {
                  sequence: call.sequence,
                  time: timestampFromDate(call.at),
                  gateway: call.gateway,
                  operation: call.operation,
                  reference: call.reference,
                  candidates: ((call.candidates ?? []) as Candidate[]).map((candidate) => create(RoutingCandidateSchema, candidate)),
                  reason: call.reason,
                  outcome: call.outcome,
                  code: call.code,
                  action: call.action,
                  gatewayCode: call.gatewayCode,
                  message: call.message,
                  latencyMs: call.latencyMs,
                }),
              ),
            };
          },

          async listGateways() {
            return { gateways: pool.health() };
          },
        });
      },
    };
  },
};
