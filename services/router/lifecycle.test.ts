// Property tests of the pure payment state machine: whatever sequence of transitions is
// attempted, a payment never leaves a terminal state, its history is always a path of the
// diagram in router.proto, and a refused attempt changes nothing.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";
import {
  ALLOWED_TRANSITIONS,
  IllegalTransition,
  STATUSES,
  canTransition,
  creation,
  isTerminal,
  isValidHistory,
  transition,
  type StatusChange,
} from "./lifecycle.js";

const { CREATED, PROCESSING, OUTCOME_UNKNOWN, SUCCEEDED, FAILED, CANCELED, IN_REVIEW, UNSPECIFIED } = PaymentStatus;
const anyStatus = fc.constantFrom(UNSPECIFIED, ...STATUSES);

/** Applies attempts in order the way the store does: allowed ones are recorded, others refused. */
function run(attempts: PaymentStatus[]) {
  let payment = { id: "pay_test", status: CREATED };
  const history: StatusChange[] = [creation()];
  const refused: { at: PaymentStatus; to: PaymentStatus }[] = [];
  for (const to of attempts) {
    const before = payment;
    try {
      const moved = transition(payment, to, "test");
      payment = moved.payment;
      history.push(moved.change);
    } catch (error) {
      assert.ok(error instanceof IllegalTransition);
      assert.equal(payment, before, "a refused transition must not replace the payment");
      assert.equal(payment.status, before.status);
      refused.push({ at: payment.status, to });
    }
  }
  return { payment, history, refused };
}

describe("payment lifecycle", () => {
  it("allows exactly the edges drawn in router.proto", () => {
    const drawn = new Set([
      `${CREATED}>${PROCESSING}`, `${CREATED}>${CANCELED}`, `${CREATED}>${FAILED}`,
      `${PROCESSING}>${SUCCEEDED}`, `${PROCESSING}>${FAILED}`, `${PROCESSING}>${OUTCOME_UNKNOWN}`,
      `${OUTCOME_UNKNOWN}>${SUCCEEDED}`, `${OUTCOME_UNKNOWN}>${FAILED}`, `${OUTCOME_UNKNOWN}>${PROCESSING}`,
      `${PROCESSING}>${IN_REVIEW}`, `${IN_REVIEW}>${PROCESSING}`, `${IN_REVIEW}>${FAILED}`,
    ]);
    for (const from of [UNSPECIFIED, ...STATUSES]) {
      for (const to of [UNSPECIFIED, ...STATUSES]) {
        assert.equal(canTransition(from, to), drawn.has(`${from}>${to}`), `${PaymentStatus[from]} -> ${PaymentStatus[to]}`);
      }
    }
  });

  it("never leaves a terminal state, whatever is attempted", () => {
    fc.assert(
      fc.property(fc.array(anyStatus, { maxLength: 40 }), (attempts) => {
        const { history } = run(attempts);
        const firstTerminal = history.findIndex((change) => isTerminal(change.to));
        // Once a terminal status is recorded, nothing is recorded after it.
        if (firstTerminal >= 0) assert.equal(firstTerminal, history.length - 1);
      }),
      { numRuns: 2000 },
    );
  });

  it("records a history that is a valid path ending at the current status", () => {
    fc.assert(
      fc.property(fc.array(anyStatus, { maxLength: 40 }), (attempts) => {
        const { payment, history } = run(attempts);
        assert.ok(isValidHistory(history));
        assert.equal(history[history.length - 1]?.to, payment.status);
        // Nothing ever returns to CREATED or to UNSPECIFIED.
        assert.ok(history.slice(1).every((change) => change.to !== CREATED && change.to !== UNSPECIFIED));
      }),
      { numRuns: 2000 },
    );
  });

  it("refuses exactly the attempts that are not edges, and only those", () => {
    fc.assert(
      fc.property(fc.array(anyStatus, { maxLength: 40 }), (attempts) => {
        const { history, refused } = run(attempts);
        assert.equal(history.length - 1 + refused.length, attempts.length);
        for (const { at, to } of refused) assert.ok(!canTransition(at, to));
      }),
      { numRuns: 1000 },
    );
  });

  it("can always finish: every non-terminal status reaches a terminal one", () => {
    for (const start of STATUSES.filter((status) => !isTerminal(status))) {
      const seen = new Set<PaymentStatus>([start]);
      const queue = [start];
      while (queue.length > 0) {
        for (const next of ALLOWED_TRANSITIONS[queue.shift() as PaymentStatus]) {
          if (!seen.has(next)) seen.add(next), queue.push(next);
        }
      }
      assert.ok([...seen].some(isTerminal), `${PaymentStatus[start]} cannot finish`);
    }
  });

  it("rejects histories that skip, invent or reorder changes", () => {
    const change = fc.record({ from: anyStatus, to: anyStatus, reason: fc.constant("x") });
    fc.assert(
      fc.property(fc.array(change, { maxLength: 12 }), (changes) => {
        const history = [creation(), ...changes];
        // Valid exactly when replaying it through `transition` from CREATED accepts every step.
        let status = CREATED;
        let replayable = true;
        for (const step of changes) {
          if (step.from !== status || !canTransition(step.from, step.to)) {
            replayable = false;
            break;
          }
          status = step.to;
        }
        assert.equal(isValidHistory(history), replayable);
      }),
      { numRuns: 2000 },
    );
    assert.equal(isValidHistory([]), false);
    assert.equal(isValidHistory([{ from: CREATED, to: PROCESSING, reason: "" }]), false);
  });
});
