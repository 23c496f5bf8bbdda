// The relay's hand-written LedgerBatchCommitted encoder writes exactly the bytes of
// @bufbuild/protobuf's toBinary() for random batches: any text (multi-byte and empty), int64 at
// its limits and negative, metadata maps, dates before 1970, and transfers long enough that a
// nested length needs more than one byte.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import fc from "fast-check";
import { LedgerBatchCommittedSchema } from "../../gen/cowrie/events/v1/events_pb.js";
import { TransferSchema } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { encodeBatchCommitted, type BatchCommitted, type BatchTransfer } from "./batch-encoding.js";

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const text = fc.oneof(fc.constant(""), fc.string(), fc.string({ unit: "grapheme", maxLength: 12 }), fc.string({ minLength: 100, maxLength: 300 }));
const int64 = fc.oneof(fc.constantFrom(0n, 1n, 127n, 128n, 2n ** 53n, INT64_MAX, INT64_MIN, -1n), fc.bigInt(INT64_MIN, INT64_MAX));

const transfer: fc.Arbitrary<BatchTransfer> = fc.record({
  id: text,
  kind: fc.oneof(fc.integer({ min: 0, max: 6 }), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })),
  debitAccountId: text,
  creditAccountId: text,
  amountMinor: int64,
  currency: text,
  code: fc.oneof(fc.constantFrom(0, 1, 65535), fc.nat({ max: 2 ** 32 - 1 })),
  reference: text,
  metadata: fc.dictionary(text, text, { maxKeys: 4 }),
  linked: fc.boolean(),
  pendingId: text,
  timeoutSeconds: fc.nat({ max: 2 ** 32 - 1 }),
  sequence: int64,
  createdAt: fc.date({ min: new Date("1900-01-01T00:00:00Z"), max: new Date("2200-01-01T00:00:00Z"), noInvalidDate: true }),
});

const batch: fc.Arbitrary<BatchCommitted> = fc.record({
  batch: int64,
  firstSequence: int64,
  lastSequence: int64,
  hash: fc.uint8Array({ maxLength: 40 }),
  transfers: fc.array(transfer, { maxLength: 30 }),
});

function withLibrary(event: BatchCommitted): Uint8Array {
  return toBinary(
    LedgerBatchCommittedSchema,
    create(LedgerBatchCommittedSchema, {
      batch: event.batch,
      firstSequence: event.firstSequence,
      lastSequence: event.lastSequence,
      hash: event.hash,
      transfers: event.transfers.map(({ createdAt, ...fields }) => create(TransferSchema, { ...fields, createdAt: timestampFromDate(createdAt) })),
    }),
  );
}

describe("encodeBatchCommitted()", () => {
  it("writes the bytes toBinary() writes, for random batches", () => {
    fc.assert(
      fc.property(batch, (event) => {
        assert.deepEqual(Buffer.from(encodeBatchCommitted(event)), Buffer.from(withLibrary(event)));
      }),
      { numRuns: 300 },
    );
  });

  it("round-trips through fromBinary(), a 1,000-transfer batch included", () => {
    const createdAt = new Date("2026-12-07T12:00:00.123Z");
    const transfers: BatchTransfer[] = Array.from({ length: 1000 }, (_, index) => ({
      id: `transfer-${index}`, kind: 1, debitAccountId: `wallet-${index}`, creditAccountId: "merchant", amountMinor: BigInt(index + 1), currency: "NGN",
      code: 2, reference: index % 2 ? "" : "order ü", metadata: index % 3 ? {} : ({ channel: "app" } as Record<string, string>), linked: false, pendingId: "", timeoutSeconds: 0,
      sequence: BigInt(5000 + index), createdAt,
    }));
    const decoded = fromBinary(LedgerBatchCommittedSchema, encodeBatchCommitted({ batch: 7n, firstSequence: 5000n, lastSequence: 5999n, hash: new Uint8Array(32).fill(9), transfers }));
    assert.equal(decoded.transfers.length, 1000);
    assert.equal(decoded.transfers[999]?.sequence, 5999n);
    assert.equal(decoded.transfers[0]?.reference, "order ü");
    assert.deepEqual(decoded.transfers[3]?.metadata, { channel: "app" });
    assert.equal(decoded.transfers[0]?.createdAt?.nanos, 123_000_000);
  });
});
