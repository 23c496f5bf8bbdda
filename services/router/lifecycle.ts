// The payment state machine, pure: which status may follow which, exactly as drawn in
// router.proto. The store persists a transition only after `transition` allowed it, and only by
// compare-and-set, so no code path (handler, completer, a replay racing either) can move a
// payment along an edge that is not drawn here or out of a terminal state.
//
//   CREATED ──► PROCESSING ──► SUCCEEDED
//      │          ▲ │  ▲ │
//      │          │ │  │ └──► FAILED
//      │          │ ▼  │
//      │   IN_REVIEW   OUTCOME_UNKNOWN ──► SUCCEEDED / FAILED
//      │      └──► FAILED
//      └──► CANCELED / FAILED
import { PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";

const { CREATED, PROCESSING, OUTCOME_UNKNOWN, SUCCEEDED, FAILED, CANCELED, IN_REVIEW } = PaymentStatus;

/** The statuses each status may move to; terminal statuses have none. */
export const ALLOWED_TRANSITIONS: Readonly<Record<PaymentStatus, readonly PaymentStatus[]>> = {
  [PaymentStatus.UNSPECIFIED]: [],
  [CREATED]: [PROCESSING, CANCELED, FAILED],
  [PROCESSING]: [SUCCEEDED, FAILED, OUTCOME_UNKNOWN, IN_REVIEW],
  [IN_REVIEW]: [PROCESSING, FAILED],
  [OUTCOME_UNKNOWN]: [SUCCEEDED, FAILED, PROCESSING],
  [SUCCEEDED]: [],
  [FAILED]: [],
  [CANCELED]: [],
};

/** Every status a payment can be in (UNSPECIFIED is only the "from" of the creation record). */
export const STATUSES: readonly PaymentStatus[] = [CREATED, PROCESSING, OUTCOME_UNKNOWN, SUCCEEDED, FAILED, CANCELED, IN_REVIEW];

export function isTerminal(status: PaymentStatus): boolean {
  return status === SUCCEEDED || status === FAILED || status === CANCELED;
}

export function canTransition(from: PaymentStatus, to: PaymentStatus): boolean {
  return ALLOWED_TRANSITIONS[from]?.includes(to) ?? false;
}

/** One recorded change; `from` is UNSPECIFIED for the creation. */
export interface StatusChange {
  readonly from: PaymentStatus;
  readonly to: PaymentStatus;
  readonly reason: string;
}

export class IllegalTransition extends Error {
  constructor(
    readonly from: PaymentStatus,
    readonly to: PaymentStatus,
  ) {
    super(`a payment cannot move from ${PaymentStatus[from]} to ${PaymentStatus[to]}`);
    this.name = "IllegalTransition";
  }
}

/** The first history entry of every payment. */
export function creation(reason = "created"): StatusChange {
  return { from: PaymentStatus.UNSPECIFIED, to: CREATED, reason };
}

/**
 * The payment after moving to `to`, and the change to record. Throws IllegalTransition (and
 * changes nothing) when the edge is not in the diagram, including any exit from a terminal state.
 */
export function transition<P extends { readonly status: PaymentStatus }>(
  payment: P,
  to: PaymentStatus,
  reason: string,
): { payment: P; change: StatusChange } {
  if (!canTransition(payment.status, to)) throw new IllegalTransition(payment.status, to);
  return { payment: { ...payment, status: to }, change: { from: payment.status, to, reason } };
}

/** True when the history starts with the creation and each change leaves where the last one arrived. */
export function isValidHistory(history: readonly StatusChange[]): boolean {
  const [first, ...rest] = history;
  if (!first || first.from !== PaymentStatus.UNSPECIFIED || first.to !== CREATED) return false;
  let at: PaymentStatus = first.to;
  for (const change of rest) {
    if (change.from !== at || !canTransition(change.from, change.to)) return false;
    at = change.to;
  }
  return true;
}
