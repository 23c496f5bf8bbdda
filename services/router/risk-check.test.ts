// RiskCheck on its own, with a stand-in for the Risk client: how a failed evaluation is logged.
// Risk away is an outage the fallback rides out (one warning a second); Risk refusing what the
// Router sent is a bug, logged every time.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import type { RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { PaymentKind } from "../../gen/cowrie/router/v1/router_pb.js";
import { capturingLogger } from "../runtime/testing.js";
import { RiskCheck } from "./risk.js";
import type { PaymentRow } from "./store.js";

function failingWith(code: Code): Client<typeof RiskService> {
  return { evaluate: async () => { throw new ConnectError("no", code); } } as unknown as Client<typeof RiskService>;
}

const payment = (id: string) =>
  ({ id, tenantId: "ten_1", kind: PaymentKind.INTERNAL, payer: { userId: "ada" }, amountMinor: 100n, currency: "NGN", destinationWalletId: "wal_2", instrument: {} }) as unknown as PaymentRow;

describe("RiskCheck", () => {
  it("applies the fallback when Risk is away, with one warning a second", async () => {
    const { log, lines } = capturingLogger();
    const check = new RiskCheck(failingWith(Code.Unavailable), { timeoutMs: 100, whenUnavailable: "allow" }, log);
    for (let i = 0; i < 5; i++) assert.deepEqual(await check.evaluate(payment(`pay_${i}`)), { decision: "allow", score: 0, reasons: ["RISK_UNAVAILABLE"] });
    assert.deepEqual(lines().map((line) => [line.level, line.paymentId]), [[40, "pay_0"]]);
  });

  it("logs an error for every payment Risk refuses: a contract bug, not an outage", async () => {
    const { log, lines } = capturingLogger();
    const check = new RiskCheck(failingWith(Code.InvalidArgument), { timeoutMs: 100, whenUnavailable: "block" }, log);
    for (let i = 0; i < 3; i++) assert.equal((await check.evaluate(payment(`pay_${i}`))).decision, "block");
    assert.deepEqual(lines().map((line) => [line.level, line.paymentId, line.code]), [[50, "pay_0", "InvalidArgument"], [50, "pay_1", "InvalidArgument"], [50, "pay_2", "InvalidArgument"]]);
  });
});
