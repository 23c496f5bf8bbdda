// The Router: owner of the payment lifecycle. Internal payments and refunds are recorded with
// their idempotency key before any money moves, then driven through the Wallet by the processor;
// a completer finishes in the background whatever a crash or an outage left unfinished. Gateway
// kinds (PAY_IN, PAYOUT) answer UNIMPLEMENTED until the gateway issue lands.
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  PaymentKind,
  PaymentSchema,
  PaymentStatus,
  RouterService,
  StatusChangeSchema,
  type CreatePaymentRequest,
  type ListPaymentsRequest,
  type Payment,
  type RefundPaymentRequest,
} from "../../gen/cowrie/router/v1/router_pb.js";
import { WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { currentCallContext, remainingMs } from "../runtime/call-context.js";
import type { Db } from "../runtime/db.js";
import { failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import { errorText } from "../runtime/log.js";
import type { ServiceModule } from "../runtime/service.js";
import { limitText, requireAmountMinor, requireCurrency, requireEnum, requireId, requireIdempotencyKey, requirePageSize } from "../runtime/validate.js";
import { PaymentProcessor, type DriveOutcome, type Driver } from "./processor.js";
import type { RequestFields } from "./schema.js";
import {
  claimUnfinished,
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
  type TransitionRow,
} from "./store.js";

const PAGE_SIZE_DEFAULT = 20;
const PAGE_SIZE_MAX = 100;
const REFERENCE_MAX = 128;
/** Most stuck payments one completer pass takes, and how many it drives at once. */
const COMPLETER_BATCH = 100;
const COMPLETER_CONCURRENCY = 8;
/** Wallets whose existence the Router remembers (tenant and id; about 100 bytes each). */
const KNOWN_WALLETS_MAX = 100_000;

// ---------------------------------------------------------------------------------------------
// Messages

export function paymentMessage(row: PaymentRow, history: TransitionRow[] = []): Payment {
  return create(PaymentSchema, {
    id: row.id,
    tenantId: row.tenantId,
    kind: row.kind,
    status: row.status,
    amountMinor: row.amountMinor,
    currency: row.currency,
    sourceWalletId: row.sourceWalletId,
    destinationWalletId: row.destinationWalletId,
    failureCode: row.failureCode,
    failureMessage: row.failureMessage,
    createdAt: timestampFromDate(row.createdAt),
    updatedAt: timestampFromDate(row.updatedAt),
    feeMinor: row.feeMinor,
    refundedMinor: row.refundedMinor,
    reference: row.reference,
    refundedPaymentId: row.refundedPaymentId ?? "",
    transferId: row.transferId,
    history: history.map((change) =>
      create(StatusChangeSchema, {
        fromStatus: change.fromStatus,
        toStatus: change.toStatus,
        time: timestampFromDate(change.at),
        reason: change.reason,
      }),
    ),
  });
}

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
  if (kind === PaymentKind.PAY_IN || kind === PaymentKind.PAYOUT) {
    throw new ConnectError(`${PaymentKind[kind]} payments need a payment gateway and are not available yet; only INTERNAL payments are`, Code.Unimplemented);
  }
  const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
  const currency = requireCurrency(request.currency, "currency");
  const sourceWalletId = requireId(request.sourceWalletId, "source_wallet_id");
  const destinationWalletId = requireId(request.destinationWalletId, "destination_wallet_id");
  if (sourceWalletId === destinationWalletId) throw invalidArgument("destination_wallet_id", "must differ from source_wallet_id");
  const feeMinor = request.feeMinor;
  if (feeMinor < 0n) throw invalidArgument("fee_minor", "must be >= 0 (minor units)");
  if (feeMinor >= amountMinor) throw invalidArgument("fee_minor", "must be less than amount_minor");
  const reference = limitText(request.reference, "reference", REFERENCE_MAX);
  const fields: RequestFields = {
    operation: "CreatePayment",
    kind: PaymentKind[kind],
    amount_minor: String(amountMinor),
    currency,
    source_wallet_id: sourceWalletId,
    destination_wallet_id: destinationWalletId,
    fee_minor: String(feeMinor),
    reference,
  };
  return { tenantId, idempotencyKey, kind, amountMinor, currency, sourceWalletId, destinationWalletId, feeMinor, reference, fields };
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

function optionalTime(value: Timestamp | undefined, field: string): Date | undefined {
  if (!value) return undefined;
  const date = timestampDate(value);
  if (Number.isNaN(date.getTime())) throw invalidArgument(field, "is not a valid time");
  return date;
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

async function runLimited<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) await work(items[next++] as T);
  });
  await Promise.all(lanes);
}

export const routerModule: ServiceModule = {
  name: "router",
  services: [RouterService],
  uses: { database: true, broker: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  create({ database, client, config, log }) {
    const db: Db = database.db;
    const wallets = client(WalletService, "wallet");
    const knownWallets = new Set<string>();
    const processor = new PaymentProcessor(db, wallets, log);

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

    async function requireWallets(tenantId: string, fields: Record<"source_wallet_id" | "destination_wallet_id", string>): Promise<void> {
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
    let pass: Promise<void> | undefined;
    const timer = setInterval(() => {
      pass ??= completerPass().finally(() => (pass = undefined));
    }, config.completerIntervalMs);
    timer.unref();

    async function completerPass(): Promise<void> {
      try {
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
      } catch (error) {
        log.warn({ err: errorText(error) }, "completer pass failed; will retry");
      }
    }

    /** Drives a payment (new, or found under a replayed key) as far as it goes now, then answers it. */
    async function driveAndAnswer(row: PaymentRow, driver: Driver): Promise<PaymentRow> {
      return settled(await processor.drive(row, driver));
    }

    return {
      async stop() {
        clearInterval(timer);
        stopping.abort(new ConnectError("router is stopping", Code.Unavailable));
        await pass;
        await processor.idle();
      },
      routes(router) {
        router.service(RouterService, {
          async createPayment(request) {
            const input = validateCreate(request);
            const named = { source_wallet_id: input.sourceWalletId, destination_wallet_id: input.destinationWalletId };
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
                // Recorded and started in one transaction: its money starts moving right away
                // (the history still shows CREATED, then PROCESSING).
                status: PaymentStatus.PROCESSING,
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
                refund = await driveAndAnswer(opening.row, "replay");
                break;
              case "created":
                refund = await driveAndAnswer(opening.refund, "request");
                break;
            }
            // The refunded payment after this refund (a failed refund gave its amount back).
            const original = refund.refundedPaymentId ? await findById(db, refund.refundedPaymentId) : undefined;
            if (!original) throw new ConnectError(`refunded payment of ${refund.id} is missing`, Code.Internal);
            return { refund: paymentMessage(refund), payment: paymentMessage(original), replayed: opening.kind === "existing" };
          },
        });
      },
    };
  },
};
