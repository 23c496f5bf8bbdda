// The "ledger.batch.committed" payload, LedgerBatchCommitted, in Protobuf's binary format, written
// straight from journal rows into one buffer. The relay encodes every committed transfer once
// more, and @bufbuild/protobuf's reflective create() and toBinary() took 10 ms per 1,000
// transfers, a sixth of the Ledger's CPU in bench:ledger; this takes 1 ms. The output is
// byte for byte what toBinary() writes (field order, implicit presence, minimal varints), which
// batch-encoding.test.ts checks on random batches. A change to Transfer or LedgerBatchCommitted
// in the protos must be made here too; that test fails until it is.
import type { JournalRow } from "./journal.js";

/** A journal row as the relay reads it (the batch number is the event's, not each transfer's). */
export type BatchTransfer = Omit<JournalRow, "batch">;

export interface BatchCommitted {
  readonly batch: bigint;
  readonly firstSequence: bigint;
  readonly lastSequence: bigint;
  readonly hash: Uint8Array;
  readonly transfers: readonly BatchTransfer[];
}

const VARINT = 0;
const LENGTH_DELIMITED = 2;

function varintSize(value: number): number {
  let size = 1;
  while (value > 0x7f) {
    value = Math.floor(value / 128);
    size++;
  }
  return size;
}

/** A growing buffer with the few Protobuf writes these messages need. */
class Writer {
  #buffer = Buffer.allocUnsafe(64 * 1024);
  #position = 0;

  #reserve(bytes: number): void {
    if (this.#position + bytes <= this.#buffer.length) return;
    const grown = Buffer.allocUnsafe(Math.max(this.#buffer.length * 2, this.#position + bytes));
    this.#buffer.copy(grown, 0, 0, this.#position);
    this.#buffer = grown;
  }

  #varint(value: number): void {
    this.#reserve(10);
    while (value > 0x7f) {
      this.#buffer[this.#position++] = (value % 128) | 0x80;
      value = Math.floor(value / 128);
    }
    this.#buffer[this.#position++] = value;
  }

  #tag(field: number, wireType: number): void {
    this.#varint(field * 8 + wireType);
  }

  uint32(field: number, value: number): void {
    if (value === 0) return;
    this.#tag(field, VARINT);
    this.#varint(value);
  }

  /** int64: two's complement, so a negative value takes ten bytes. */
  int64(field: number, value: bigint): void {
    if (value === 0n) return;
    this.#tag(field, VARINT);
    if (value > 0n && value <= BigInt(Number.MAX_SAFE_INTEGER)) {
      this.#varint(Number(value));
      return;
    }
    this.#reserve(10);
    let unsigned = BigInt.asUintN(64, value);
    while (unsigned > 0x7fn) {
      this.#buffer[this.#position++] = Number(unsigned & 0x7fn) | 0x80;
      unsigned >>= 7n;
    }
    this.#buffer[this.#position++] = Number(unsigned);
  }

  /** int32 and enums: a negative value is sign-extended to ten bytes, as int64. */
  int32(field: number, value: number): void {
    if (value < 0) this.int64(field, BigInt(value));
    else this.uint32(field, value);
  }

  bool(field: number, value: boolean): void {
    if (value) this.uint32(field, 1);
  }

  /** A string field; empty is the default and is not written, except in a map entry (`always`). */
  string(field: number, value: string, always = false): void {
    if (value === "" && !always) return;
    const length = Buffer.byteLength(value);
    this.#tag(field, LENGTH_DELIMITED);
    this.#varint(length);
    this.#reserve(length);
    this.#position += this.#buffer.write(value, this.#position, "utf8");
  }

  bytes(field: number, value: Uint8Array): void {
    if (value.length === 0) return;
    this.#tag(field, LENGTH_DELIMITED);
    this.#varint(value.length);
    this.#reserve(value.length);
    this.#buffer.set(value, this.#position);
    this.#position += value.length;
  }

  /** A nested message: `write` writes its fields, and its length goes in front once it is known. */
  message(field: number, write: () => void): void {
    this.#tag(field, LENGTH_DELIMITED);
    this.#reserve(1);
    const start = this.#position++;
    write();
    const length = this.#position - start - 1;
    const size = varintSize(length);
    if (size > 1) {
      // The one byte reserved was not enough: move the message up to make room.
      this.#reserve(size - 1);
      this.#buffer.copyWithin(start + size, start + 1, this.#position);
      this.#position += size - 1;
    }
    const end = this.#position;
    this.#position = start;
    this.#varint(length);
    this.#position = end;
  }

  finish(): Uint8Array {
    return new Uint8Array(this.#buffer.subarray(0, this.#position));
  }
}

/** cowrie.ledger.v1.Transfer, fields in number order. */
function writeTransfer(writer: Writer, transfer: BatchTransfer): void {
  writer.string(1, transfer.id);
  writer.string(2, transfer.debitAccountId);
  writer.string(3, transfer.creditAccountId);
  writer.int64(4, transfer.amountMinor);
  writer.string(5, transfer.currency);
  writer.uint32(6, transfer.code);
  writer.string(7, transfer.reference);
  for (const key in transfer.metadata) {
    writer.message(8, () => {
      writer.string(1, key, true);
      writer.string(2, transfer.metadata[key] as string, true);
    });
  }
  writer.bool(9, transfer.linked);
  writer.int64(10, transfer.sequence);
  // google.protobuf.Timestamp, always present.
  const milliseconds = transfer.createdAt.getTime();
  const seconds = Math.floor(milliseconds / 1000);
  writer.message(11, () => {
    writer.int64(1, BigInt(seconds));
    writer.uint32(2, (milliseconds - seconds * 1000) * 1_000_000);
  });
  writer.int32(12, transfer.kind);
  writer.string(13, transfer.pendingId);
  writer.uint32(14, transfer.timeoutSeconds);
}

/** cowrie.events.v1.LedgerBatchCommitted in Protobuf's binary format. */
export function encodeBatchCommitted(event: BatchCommitted): Uint8Array {
  const writer = new Writer();
  writer.int64(1, event.batch);
  writer.int64(2, event.firstSequence);
  writer.int64(3, event.lastSequence);
  writer.bytes(4, event.hash);
  for (const transfer of event.transfers) writer.message(5, () => writeTransfer(writer, transfer));
  return writer.finish();
}
