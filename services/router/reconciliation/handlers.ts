// ReconciliationService, served by the Router, and the schedule. Every method is behind the
// operator token, checked as the Edge checks it for AdminService (edge/auth.ts). Runs execute
// outside the RPC that asked for them (a long window outlives any deadline): RunReconciliation
// answers with the finished summary when the run ends in time, and with the running one
// otherwise (poll GetReconciliationRun).
import { randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { CreateTransferResult, LedgerService, TransferKind } from "../../../gen/cowrie/ledger/v1/ledger_pb.js";
import {
  FindingCountSchema,
  FindingEventSchema,
  FindingSchema,
  FindingStatus,
  FindingType,
  ReconciliationRunSchema,
  ReconciliationService,
  Severity,
  type Finding,
  type ReconciliationRun as RunMessage,
} from "../../../gen/cowrie/router/v1/reconciliation_pb.js";
import { currentCallContext, remainingMs, runInCallContext } from "../../runtime/call-context.js";
import type { Config } from "../../runtime/config.js";
import type { Db } from "../../runtime/db.js";
import { failedPrecondition, invalidArgument, notFound } from "../../runtime/errors.js";
import { errorText, type Logger } from "../../runtime/log.js";
import { metrics } from "../../runtime/metrics.js";
import { pause } from "../../runtime/pause.js";
import { every, type Periodic } from "../../runtime/periodic.js";
import { optionalEnum, requireAmountMinor, requireTime, requireCurrency, requireId, requirePageSize, requireText } from "../../runtime/validate.js";
import { loadOperatorToken, requireOperator } from "../../edge/auth.js";
import type { Connector, GatewayName } from "../gateways/connector.js";
import { matchRate, ReconciliationRun, RunFailed, type Driver, type RunTally } from "./engine.js";
import { pageOf, pagePosition } from "../../runtime/pages.js";
import {
  findFinding,
  findingEvents,
  findRun,
  finishRun,
  listFindings,
  listRuns,
  newRunId,
  oldestPaymentAt,
  readWatermark,
  releaseLease,
  resolveFinding,
  startRun,
  takeLease,
  writeWatermark,
  type FindingEventRow,
  type FindingRow,
  type RunRow,
} from "./store.js";

/** Ledger transfer code of an operator's correcting transfer (the Wallet's codes end at 8). */
export const RECONCILIATION_TRANSFER_CODE = 90;
/** The correcting transfer of a finding: one id per finding, so a retried resolution cannot move money twice. */
export function correctionTransferId(findingId: string): string {
  return `rcn:${findingId}`;
}

const WATERMARK = "scheduled";
const LEASE_TTL_MS = 5 * 60_000;
/** Longest window one scheduled run takes; a backlog is worked off a window at a time. */
const SCHEDULED_WINDOW_MAX_MS = 60 * 60_000;
/** Windows one scheduled pass works through before it leaves the rest to the next pass. */
const SCHEDULED_WINDOWS_PER_PASS = 24;
const MANUAL_WINDOW_MAX_MS = 31 * 24 * 60 * 60_000;
const OPERATOR_MAX = 128;
const REASON_MAX = 500;
const PAGE_SIZE_DEFAULT = 20;
const PAGE_SIZE_MAX = 100;
/** Time kept back from the caller's deadline to answer RunReconciliation with a running summary. */
const ANSWER_RESERVE_MS = 500;

export interface ReconciliationDeps {
  db: Db;
  config: Config;
  log: Logger;
  connectors: ReadonlyMap<GatewayName, Connector>;
  ledger: Client<typeof LedgerService>;
  drive: Driver;
}

export interface Reconciliation {
  routes(router: ConnectRouter): void;
  /** Runs one scheduled pass now (what the timer does). */
  scheduledPass(): Promise<void>;
  stop(): Promise<void>;
}

function runMessage(row: RunRow): RunMessage {
  const tally = { checked: row.checked, matched: row.matched };
  return create(ReconciliationRunSchema, {
    id: row.id,
    trigger: row.trigger,
    requestedBy: row.requestedBy,
    windowFrom: timestampFromDate(row.windowFrom),
    windowTo: timestampFromDate(row.windowTo),
    status: row.status,
    startedAt: timestampFromDate(row.startedAt),
    finishedAt: row.finishedAt ? timestampFromDate(row.finishedAt) : undefined,
    durationMs: row.durationMs,
    checked: BigInt(tally.checked),
    matched: BigInt(tally.matched),
    matchRatePpm: tally.checked === 0 ? 1_000_000 : Math.floor((tally.matched * 1_000_000) / tally.checked),
    paymentsChecked: BigInt(row.paymentsChecked),
    gatewayTransactionsChecked: BigInt(row.gatewayTransactionsChecked),
    ledgerTransfersChecked: BigInt(row.ledgerTransfersChecked),
    deferred: BigInt(row.deferred),
    findingsByType: Object.entries(row.findingsByType)
      .map(([name, count]) => create(FindingCountSchema, { type: FindingType[name.toUpperCase() as keyof typeof FindingType] ?? FindingType.UNSPECIFIED, count }))
      .sort((a, b) => a.type - b.type),
    findingsOpened: row.findingsOpened,
    autoResolved: row.autoResolved,
    error: row.error,
  });
}

function findingMessage(row: FindingRow, events: FindingEventRow[] = []): Finding {
  return create(FindingSchema, {
    id: row.id,
    type: row.type,
    severity: row.severity,
    status: row.status,
    subject: row.subject,
    paymentId: row.paymentId,
    tenantId: row.tenantId,
    gateway: row.gateway,
    gatewayTransactionId: row.gatewayTransactionId,
    ledgerTransferId: row.ledgerTransferId,
    expectedAmountMinor: row.expectedAmountMinor,
    observedAmountMinor: row.observedAmountMinor,
    expectedCurrency: row.expectedCurrency,
    observedCurrency: row.observedCurrency,
    detail: row.detail,
    runId: row.runId,
    detectedAt: timestampFromDate(row.detectedAt),
    resolvedAt: row.resolvedAt ? timestampFromDate(row.resolvedAt) : undefined,
    resolvedBy: row.resolvedBy,
    resolutionReason: row.resolutionReason,
    correctionTransferId: row.correctionTransferId,
    events: events.map((event) =>
      create(FindingEventSchema, { time: timestampFromDate(event.at), actor: event.actor, action: event.action, note: event.note, transferId: event.transferId }),
    ),
  });
}

/** Page positions are the last id of the previous page (runtime/pages.ts). */
const RUN_POSITION = /^rcr_[0-9A-Za-z]{1,64}$/;
const FINDING_POSITION = /^rcf_[0-9A-Za-z]{1,64}$/;

/** Field by field: jsonb keeps its keys in its own order. */
function sameCorrection(a: FindingRow["correction"], b: FindingRow["correction"]): boolean {
  if (!a || !b) return !a && !b;
  return a.debitAccountId === b.debitAccountId && a.creditAccountId === b.creditAccountId && a.amountMinor === b.amountMinor && a.currency === b.currency;
}

export async function createReconciliation(deps: ReconciliationDeps): Promise<Reconciliation> {
  const { db, config, log, ledger } = deps;
  const operatorToken = await loadOperatorToken(config, log);
  const owner = `router-${process.pid}-${randomUUID().slice(0, 8)}`;
  const stopping = new AbortController();
  const running = new Set<Promise<unknown>>();
  const engineOptions = {
    batchSize: config.reconBatchSize,
    stuckPendingMs: config.reconStuckPendingMs,
    stuckProcessingMs: config.reconStuckProcessingMs,
    gatewayTimeoutMs: Math.max(config.gatewayTimeoutMs, 10_000),
  };

  /** Runs one window under `leaseKey` and stores its summary. Not bound to any caller's deadline. */
  async function execute(run: Pick<RunRow, "id" | "trigger" | "requestedBy" | "windowFrom" | "windowTo">, leaseKey: string): Promise<RunRow> {
    const startedAt = new Date();
    await startRun(db, { ...run, startedAt });
    const engine = new ReconciliationRun(
      { db, connectors: deps.connectors, ledger, drive: deps.drive, log, options: engineOptions, heartbeat: async () => void (await takeLease(db, leaseKey, owner, LEASE_TTL_MS)) },
      run.id,
      run.windowFrom,
      run.windowTo,
      startedAt,
    );
    let tally: RunTally | undefined;
    let error = "";
    try {
      tally = await engine.run();
    } catch (failure) {
      error = failure instanceof RunFailed ? failure.message : errorText(failure);
      log.error({ runId: run.id, err: error }, "reconciliation run failed");
    }
    const result = tally ?? engine.tally;
    const { checked, matched, rate } = matchRate(result);
    const durationMs = Date.now() - startedAt.getTime();
    const status = tally ? "completed" : "failed";
    metrics().reconRuns.inc({ trigger: run.trigger, status });
    metrics().reconRunDurationSeconds.observe({ trigger: run.trigger }, durationMs / 1000);
    if (tally) metrics().reconMatchRate.set(rate);
    const row = await finishRun(db, run.id, {
      status,
      finishedAt: new Date(),
      durationMs,
      paymentsChecked: result.paymentsChecked,
      gatewayTransactionsChecked: result.gatewayTransactionsChecked,
      ledgerTransfersChecked: result.ledgerTransfersChecked,
      checked,
      matched,
      deferred: result.deferred,
      findingsByType: result.findingsByType,
      findingsOpened: result.findingsOpened,
      autoResolved: result.autoResolved,
      error,
    });
    log.info({ runId: run.id, trigger: run.trigger, checked, matched, findingsOpened: result.findingsOpened, durationMs, status }, "reconciliation run");
    return row;
  }

  /** Work detached from the RPC that started it: its own context, bounded only by shutdown. */
  function detached<T>(requestId: string, work: () => Promise<T>): Promise<T> {
    const promise = runInCallContext({ requestId, deadlineAtMs: Number.POSITIVE_INFINITY, signal: stopping.signal }, work);
    running.add(promise);
    void promise.finally(() => running.delete(promise)).catch(() => {});
    return promise;
  }

  async function scheduledPass(): Promise<void> {
    if (!(await takeLease(db, WATERMARK, owner, LEASE_TTL_MS))) return;
    try {
      const start = (await readWatermark(db, WATERMARK)) ?? (await oldestPaymentAt(db));
      if (!start) return;
      let from: Date = start;
      for (let windows = 0; windows < SCHEDULED_WINDOWS_PER_PASS && !stopping.signal.aborted; windows++) {
        const to: Date = new Date(Math.min(Date.now() - config.reconLagMs, from.getTime() + SCHEDULED_WINDOW_MAX_MS));
        if (to <= from) return;
        const run = await execute({ id: newRunId(), trigger: "scheduled", requestedBy: "", windowFrom: from, windowTo: to }, WATERMARK);
        // A failed window is tried again next pass; the watermark moves only past checked ones.
        if (run.status !== "completed") return;
        await writeWatermark(db, WATERMARK, to);
        from = to;
      }
    } finally {
      await releaseLease(db, WATERMARK, owner);
    }
  }

  const schedule: Periodic | undefined = config.reconIntervalMs > 0
    ? every(config.reconIntervalMs, "reconciliation", () => detached(`recon-${Date.now()}`, scheduledPass), log)
    : undefined;

  function guard(context: HandlerContext): void {
    requireOperator(context.requestHeader, operatorToken);
  }

  /** The correcting Ledger transfer, made once per finding; FAILED_PRECONDITION when the Ledger refuses it. */
  async function makeCorrection(finding: FindingRow, correction: NonNullable<FindingRow["correction"]>, operator: string): Promise<string> {
    const id = correctionTransferId(finding.id);
    const { results } = await ledger.createTransfers({
      transfers: [{
        id,
        kind: TransferKind.POSTED,
        debitAccountId: correction.debitAccountId,
        creditAccountId: correction.creditAccountId,
        amountMinor: BigInt(correction.amountMinor),
        currency: correction.currency,
        code: RECONCILIATION_TRANSFER_CODE,
        reference: finding.id,
        metadata: { finding_id: finding.id, operator, ...(finding.tenantId ? { tenant_id: finding.tenantId } : {}) },
      }],
    });
    const result = results[0]?.result ?? CreateTransferResult.UNSPECIFIED;
    if (result === CreateTransferResult.CREATED || result === CreateTransferResult.EXISTS) return id;
    if (result === CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD) {
      throw failedPrecondition(`the correcting transfer ${id} of this finding was already made with another ${results[0]?.field}; a finding has one correction`);
    }
    throw failedPrecondition(`the Ledger refused the correcting transfer: ${CreateTransferResult[result]}`);
  }

  return {
    scheduledPass: () => detached(`recon-${Date.now()}`, scheduledPass),

    async stop() {
      stopping.abort(new ConnectError("router is stopping", Code.Unavailable));
      await schedule?.stop();
      await Promise.allSettled([...running]);
    },

    routes(router) {
      router.service(ReconciliationService, {
        async runReconciliation(request, context) {
          guard(context);
          const from = requireTime(request.from, "from");
          const to = requireTime(request.to, "to");
          if (to <= from) throw invalidArgument("to", "must be after from");
          if (to.getTime() - from.getTime() > MANUAL_WINDOW_MAX_MS) throw invalidArgument("to", "must be at most 31 days after from");
          const operator = requireText(request.operator, "operator", OPERATOR_MAX);
          const leaseKey = `window:${from.toISOString()}/${to.toISOString()}`;
          if (!(await takeLease(db, leaseKey, owner, LEASE_TTL_MS))) {
            throw new ConnectError(`a reconciliation of ${from.toISOString()} to ${to.toISOString()} is already running; retry when it is done`, Code.Aborted);
          }
          const id = newRunId();
          const run = detached(id, () => execute({ id, trigger: "manual", requestedBy: operator, windowFrom: from, windowTo: to }, leaseKey).finally(() => releaseLease(db, leaseKey, owner)));
          const call = currentCallContext();
          const waitMs = Math.max(0, (call ? remainingMs(call) : 10_000) - ANSWER_RESERVE_MS);
          // Wait for the run while the caller can; the wait ends with the run (no timer left behind).
          const waited = new AbortController();
          const signal = call ? AbortSignal.any([call.signal, waited.signal]) : waited.signal;
          const finished = await Promise.race([run.then((row) => row, () => undefined), pause(waitMs, signal).then(() => undefined, () => undefined)]);
          waited.abort();
          const row = finished ?? (await findRun(db, id));
          if (!row) throw new ConnectError(`reconciliation run ${id} was not recorded`, Code.Internal);
          return { run: runMessage(row) };
        },

        async getReconciliationRun(request, context) {
          guard(context);
          const runId = requireId(request.runId, "run_id");
          const row = await findRun(db, runId);
          if (!row) throw notFound(`reconciliation run ${runId}`);
          return { run: runMessage(row) };
        },

        async listReconciliationRuns(request, context) {
          guard(context);
          const pageSize = requirePageSize(request.pageSize, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT);
          const before = pagePosition(request.pageToken, "r", RUN_POSITION);
          const { page, nextPageToken } = pageOf(await listRuns(db, before, pageSize + 1), pageSize, "r", (last) => last.id);
          return { runs: page.map(runMessage), nextPageToken };
        },

        async listFindings(request, context) {
          guard(context);
          const status = (optionalEnum(request.status, "status", FindingStatus) as FindingStatus) || undefined;
          const type = (optionalEnum(request.type, "type", FindingType) as FindingType) || undefined;
          const minSeverity = (optionalEnum(request.minSeverity, "min_severity", Severity) as Severity) || undefined;
          const paymentId = request.paymentId === "" ? undefined : requireId(request.paymentId, "payment_id");
          const pageSize = requirePageSize(request.pageSize, PAGE_SIZE_MAX, PAGE_SIZE_DEFAULT);
          const before = pagePosition(request.pageToken, "f", FINDING_POSITION);
          const { page, nextPageToken } = pageOf(await listFindings(db, { status, type, minSeverity, paymentId }, before, pageSize + 1), pageSize, "f", (last) => last.id);
          return { findings: page.map((row) => findingMessage(row)), nextPageToken };
        },

        async getFinding(request, context) {
          guard(context);
          const findingId = requireId(request.findingId, "finding_id");
          const row = await findFinding(db, findingId);
          if (!row) throw notFound(`finding ${findingId}`);
          return { finding: findingMessage(row, await findingEvents(db, row.id)) };
        },

        async resolveFinding(request, context) {
          guard(context);
          const findingId = requireId(request.findingId, "finding_id");
          const operator = requireText(request.operator, "operator", OPERATOR_MAX);
          const reason = requireText(request.reason, "reason", REASON_MAX);
          let correction: FindingRow["correction"] = null;
          if (request.correction) {
            const asked = request.correction;
            const debitAccountId = requireId(asked.debitAccountId, "correction.debit_account_id");
            const creditAccountId = requireId(asked.creditAccountId, "correction.credit_account_id");
            if (creditAccountId === debitAccountId) throw invalidArgument("correction.credit_account_id", "must differ from correction.debit_account_id");
            const amountMinor = requireAmountMinor(asked.amountMinor, "correction.amount_minor");
            const currency = requireCurrency(asked.currency, "correction.currency");
            correction = { debitAccountId, creditAccountId, amountMinor: amountMinor.toString(), currency };
          }
          const finding = await findFinding(db, findingId);
          if (!finding) throw notFound(`finding ${findingId}`);

          const replayOrRefuse = async (current: FindingRow) => {
            if (current.status === FindingStatus.RESOLVED && current.resolvedBy === operator && current.resolutionReason === reason && sameCorrection(current.correction, correction)) {
              return { finding: findingMessage(current, await findingEvents(db, current.id)), replayed: true };
            }
            const how = current.status === FindingStatus.AUTO_RESOLVED ? "settled automatically" : `resolved by ${current.resolvedBy}`;
            throw failedPrecondition(`finding ${current.id} is already ${how}: ${current.resolutionReason}`);
          };
          if (finding.status !== FindingStatus.OPEN) return replayOrRefuse(finding);

          // The money first, under the finding's one transfer id: a crash or a retry after it finds
          // the same transfer (EXISTS) and goes on to record the resolution.
          const transferId = correction ? await makeCorrection(finding, correction, operator) : "";
          const resolved = await resolveFinding(db, finding.id, { operator, reason, correction, transferId }, new Date());
          if (!resolved) {
            const current = await findFinding(db, finding.id);
            if (!current) throw new ConnectError(`finding ${finding.id} vanished`, Code.Internal);
            return replayOrRefuse(current);
          }
          log.info({ findingId: finding.id, operator, transferId }, "reconciliation finding resolved");
          return { finding: findingMessage(resolved, await findingEvents(db, resolved.id)), replayed: false };
        },
      });
    },
  };
}
