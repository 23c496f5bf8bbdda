// Events, exactly once in effect, even while RabbitMQ is down:
//  - appendEvents() writes a service's events into its outbox in the transaction of the change
//    they describe: an event exists if and only if the change committed;
//  - the relay publishes the outbox to the topic exchange `<namespace>.events` with publisher
//    confirms, in batches and in commit order per subject, and stamps what the broker confirmed.
//    While the broker is down the backlog waits in PostgreSQL; a relay killed mid-batch leaves
//    its batch unstamped and it is published again (at least once);
//  - startEventConsumer() applies each event once: the event id goes into the consumer's inbox in
//    the transaction of the effect, so a redelivery finds it and does nothing; deliveries that
//    arrive together share one transaction (InboxApplier). A failing event is
//    retried after growing delays (broker.ts retryDelaysMs), then parked in PostgreSQL with its
//    reason, where EventOperationsService lists and replays it.
// The event type is the routing key ("payment.succeeded"); the envelope is cowrie.events.v1.
import { create, createRegistry, fromBinary, toBinary, toJson, type DescMessage, type JsonObject, type MessageShape } from "@bufbuild/protobuf";
import { anyPack, AnySchema, timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { and, asc, eq, gt, isNull, sql, type SQL } from "drizzle-orm";
import { randomUUID } from "node:crypto";
import { EnvelopeSchema, file_cowrie_events_v1_events, type Envelope } from "../../gen/cowrie/events/v1/events_pb.js";
import { file_cowrie_ledger_v1_ledger } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { file_cowrie_router_v1_router } from "../../gen/cowrie/router/v1/router_pb.js";
import { file_cowrie_wallet_v1_wallet } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { EventOperationsService, type ParkedEvent } from "../../gen/cowrie/events/v1/operations_pb.js";
import { retryQueueNames, type Broker, type BrokerMessage, type ConsumerOptions } from "./broker.js";
import type { ServiceName } from "./config.js";
import { rowsOf, type Db, type Tx } from "./db.js";
import { invalidArgument, notFound } from "./errors.js";
import { withTimeout } from "./limits.js";
import type { EventTables } from "./event-tables.js";
import { errorText, type Logger } from "./log.js";
import { metrics } from "./metrics.js";
import { every } from "./periodic.js";
import { pageOf, pagePosition } from "./pages.js";
import { requirePageSize, requireText } from "./validate.js";

export type OutboxTable = EventTables["outbox"];
export type OutboxRow = OutboxTable["$inferSelect"];
export type ConsumerTables = Pick<EventTables, "inbox" | "parked">;

/** The topic exchange every service publishes its events to. */
export function eventsExchange(namespace: string): string {
  return `${namespace}.events`;
}

/** A consumer's queue: `<namespace>.<consumer name>`. */
export function consumerQueue(namespace: string, consumer: string): string {
  return `${namespace}.${consumer}`;
}

// ---------------------------------------------------------------------------------------------
// Writing

export interface NewEvent<S extends DescMessage = DescMessage> {
  /** "payment.succeeded": the routing key merchants and consumers filter on. */
  type: string;
  /** "payment/pay_…": order is kept per subject. */
  subject: string;
  tenantId?: string;
  schema: S;
  data: MessageShape<S>;
}

/** The envelope of an event, as published and as rendered for webhooks. */
export function envelopeOf(id: string, source: ServiceName, time: Date, event: NewEvent | EncodedEvent): Envelope {
  return create(EnvelopeSchema, {
    id,
    type: event.type,
    source,
    subject: event.subject,
    time: timestampFromDate(time),
    tenantId: event.tenantId ?? "",
    data: "encoded" in event ? create(AnySchema, { typeUrl: `type.googleapis.com/${event.schema.typeName}`, value: event.encoded }) : anyPack(event.schema, event.data),
  });
}

/** An event whose data is already in Protobuf's binary format (the Ledger's journal feed). */
export interface EncodedEvent extends Omit<NewEvent, "data"> {
  encoded: Uint8Array;
}

/** The outbox row of a new event, for a statement that writes it itself (see appendEvents). */
export function outboxRowOf(source: ServiceName, event: NewEvent, now = new Date()) {
  const id = randomUUID();
  return {
    id,
    eventType: event.type,
    subject: event.subject,
    tenantId: event.tenantId ?? "",
    payload: toBinary(EnvelopeSchema, envelopeOf(id, source, now, event)),
    createdAt: now,
  };
}

// The messages an Envelope's `data` (google.protobuf.Any) may hold, so that JSON shows them as
// fields with their "@type".
const eventRegistry = createRegistry(file_cowrie_events_v1_events, file_cowrie_router_v1_router, file_cowrie_ledger_v1_ledger, file_cowrie_wallet_v1_wallet);

/** An envelope in Protobuf's canonical JSON (webhook bodies, the audit log). */
export function envelopeToJson(envelope: Envelope): JsonObject {
  return toJson(EnvelopeSchema, envelope, { registry: eventRegistry }) as JsonObject;
}

/** Writes events to the outbox in the caller's transaction; they are published once it commits. */
export async function appendEvents(tx: Tx, outbox: OutboxTable, source: ServiceName, events: readonly NewEvent[]): Promise<void> {
  if (events.length === 0) return;
  await eventsInsert(tx, outbox, source, events);
}

/** The outbox insert of appendEvents, not yet run: a finishing statement of transactPipelined. */
export function eventsInsert(tx: Tx, outbox: OutboxTable, source: ServiceName, events: readonly NewEvent[]) {
  const now = new Date();
  return tx.insert(outbox).values(events.map((event) => outboxRowOf(source, event, now)));
}

// ---------------------------------------------------------------------------------------------
// Relay

/** An event ready to publish: its id, type (the routing key) and encoded Envelope. */
export interface FeedEvent {
  readonly id: string;
  readonly type: string;
  readonly payload: Uint8Array;
  /** When the change it describes committed (for the lag metric). */
  readonly committedAt: Date;
}

/**
 * Where a relay reads what it publishes, in commit order: a service's outbox table
 * (outboxFeed), or a log the service keeps anyway (the Ledger publishes its journal).
 */
export interface EventFeed<E extends FeedEvent = FeedEvent> {
  /** The next unpublished events, at most `limit`; in the relay's transaction, under its lock. */
  next(tx: Tx, limit: number): Promise<E[]>;
  /** Records that these were published, in the same transaction, once the broker confirmed them all. */
  markPublished(tx: Tx, events: readonly E[]): Promise<void>;
  /** When the oldest unpublished event committed; undefined when there is none. */
  oldestUnpublishedAt(db: Db): Promise<Date | undefined>;
  /** Removes what was published long enough ago, a bounded amount per call. */
  prune?(db: Db): Promise<void>;
}

const OUTBOX_RETENTION_MS = 24 * 60 * 60 * 1000;
const PRUNE_BATCH = 5_000;

/** The feed of an outbox table (appendEvents): rows are stamped when published and deleted after a day. */
export function outboxFeed(outbox: OutboxTable, retentionMs = OUTBOX_RETENTION_MS): EventFeed {
  return {
    async next(tx, limit) {
      const rows = await tx.select().from(outbox).where(isNull(outbox.publishedAt)).orderBy(asc(outbox.sequence)).limit(limit);
      return rows.map((row) => {
        if (!row.payload) throw new Error(`outbox row ${row.id} has no payload`);
        return { id: row.id, type: row.eventType, payload: row.payload, committedAt: row.createdAt };
      });
    },
    async markPublished(tx, events) {
      await tx.execute(sql`update ${outbox} set published_at = now() where ${outbox.id} = any(${`{${events.map((event) => event.id).join(",")}}`}::uuid[])`);
    },
    async oldestUnpublishedAt(db) {
      const [oldest] = await db.select({ createdAt: outbox.createdAt }).from(outbox).where(isNull(outbox.publishedAt)).orderBy(asc(outbox.sequence)).limit(1);
      return oldest?.createdAt;
    },
    async prune(db) {
      const before = new Date(Date.now() - retentionMs).toISOString();
      await db.execute(sql`
        delete from ${outbox} where ${outbox.id} in (
          select ${outbox.id} from ${outbox} where ${outbox.publishedAt} < ${before}::timestamptz limit ${PRUNE_BATCH})`);
    },
  };
}

export interface RelayOptions {
  source: ServiceName;
  db: Db;
  feed: EventFeed;
  broker: Broker;
  namespace: string;
  log: Logger;
  /** Events per publish batch (one transaction, one round of confirms). */
  batchSize?: number;
  /** How often the feed is looked at when nothing kicked the relay. */
  intervalMs?: number;
  /** How long a batch's publishes may wait for confirms before the batch is given up. */
  confirmTimeoutMs?: number;
}

export interface Relay {
  /** Something was committed: publish now rather than at the next interval. */
  kick(): void;
  /** Publishes everything unpublished now; resolves with how many events went out. */
  drain(): Promise<number>;
  stop(): Promise<void>;
}

const RELAY_BATCH_SIZE = 500;
const RELAY_INTERVAL_MS = 250;
/**
 * The longest a batch's publishes may take to be confirmed. The broker client bounds its own
 * waits (five seconds per attempt, two attempts); this bounds whatever it does not. Once, in the
 * CI chaos round, the Ledger's relay waited for ever on a publish cut off by a dropped RabbitMQ
 * connection: nothing more was published, and the process could not stop. Given up, the batch
 * rolls back and goes again (consumers deduplicate).
 */
const RELAY_CONFIRM_TIMEOUT_MS = 30_000;
const PRUNE_EVERY_MS = 60_000;

export function startRelay(options: RelayOptions): Relay {
  const { source, db, feed, broker, log } = options;
  const batchSize = options.batchSize ?? RELAY_BATCH_SIZE;
  const confirmTimeoutMs = options.confirmTimeoutMs ?? RELAY_CONFIRM_TIMEOUT_MS;
  const exchange = eventsExchange(options.namespace);
  const lockKey = `cowrie.outbox.${source}`;
  const { outboxLagSeconds, eventsPublished, eventPublishFailures } = metrics();
  let stopped = false;
  let running: Promise<number> | undefined;
  let again = false;
  let lastPruneMs = Date.now();
  let lastFailureLogMs = -Infinity;

  const recordLag = (oldest: Date | undefined): void => {
    outboxLagSeconds.set({ service: source }, oldest ? Math.max(0, (Date.now() - oldest.getTime()) / 1000) : 0);
  };

  /**
   * One batch in one transaction: only the holder of the transaction's advisory lock publishes
   * (so relays in several processes never interleave one subject's events), in commit order,
   * and marks the events published only once every publish was confirmed. A failure rolls back:
   * nothing is marked, and the whole batch goes again (consumers deduplicate).
   */
  async function publishBatch(): Promise<number> {
    // While the broker is away no transaction is opened at all (on the embedded database it would
    // hold the only connection while publishes wait to time out); the backlog just waits.
    if (!broker.isReady()) {
      const oldest = await feed.oldestUnpublishedAt(db);
      recordLag(oldest);
      if (oldest) throw new Error("the broker is not connected");
      return 0;
    }
    return db.transaction(async (tx) => {
      const [lock] = rowsOf<{ locked: boolean }>(await tx.execute(sql`select pg_try_advisory_xact_lock(hashtext(${lockKey})) as locked`));
      if (!lock?.locked) return 0;
      const events = await feed.next(tx, batchSize);
      recordLag(events[0]?.committedAt);
      if (events.length === 0) return 0;
      // One channel publishes in call order: issuing them together keeps the order and pipelines the confirms.
      await withTimeout(
        Promise.all(events.map((event) => broker.publish(exchange, event.type, event.payload, { messageId: event.id, headers: { "cowrie-source": source } }))),
        confirmTimeoutMs,
        `the broker did not confirm ${events.length} events within ${confirmTimeoutMs} ms`,
      );
      await feed.markPublished(tx, events);
      eventsPublished.inc({ service: source }, events.length);
      return events.length;
    });
  }

  async function prune(): Promise<void> {
    if (!feed.prune || Date.now() - lastPruneMs < PRUNE_EVERY_MS) return;
    lastPruneMs = Date.now();
    await feed.prune(db);
  }

  async function pass(): Promise<number> {
    let total = 0;
    try {
      for (;;) {
        const published = await publishBatch();
        total += published;
        if (published < batchSize || stopped) break;
      }
      await prune();
    } catch (error) {
      eventPublishFailures.inc({ service: source });
      // The broker or the database is away; the backlog waits in the outbox. Log once in a while.
      if (Date.now() - lastFailureLogMs > 5_000) {
        lastFailureLogMs = Date.now();
        log.warn({ err: errorText(error) }, "event relay could not publish; the outbox keeps the backlog");
      }
    }
    return total;
  }

  function run(): Promise<number> {
    if (running) {
      again = true;
      return running;
    }
    running = pass().finally(() => {
      running = undefined;
      if (again && !stopped) {
        again = false;
        void run();
      }
    });
    return running;
  }

  const timer = setInterval(() => void run(), options.intervalMs ?? RELAY_INTERVAL_MS);
  timer.unref();
  return {
    kick() {
      if (!stopped) void run();
    },
    async drain() {
      // Through run(), so it never overlaps an interval's pass, until a pass finds nothing.
      let total = 0;
      for (let published = await run(); published > 0; published = await run()) total += published;
      return total;
    },
    async stop() {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Consumers

/** What a consumer is, independent of any process: its topology is declared from this. */
export interface ConsumerDefinition {
  /** "edge.webhooks": the inbox's consumer name, and the queue `<namespace>.<name>`. */
  name: string;
  /** Event types to receive, as topic patterns ("payment.*", "#"). */
  bindingKeys: string[];
  /** Deliveries taken at once (RabbitMQ prefetch); they are applied in batches of up to this many. */
  concurrency?: number;
  /** Delays of the retries before an event is parked. */
  retryDelaysMs?: number[];
}

/** A delivered event, decoded, with its envelope's bytes as published. */
export interface ConsumedEvent {
  readonly event: Envelope;
  readonly raw: Uint8Array;
}

export interface EventConsumerOptions extends ConsumerDefinition {
  namespace: string;
  broker: Broker;
  db: Db;
  tables: ConsumerTables;
  log: Logger;
  /**
   * Applies events inside the transaction that records them in the inbox: the new events of the
   * deliveries that arrived together, in delivery order, so that a consumer writes a batch with
   * one statement; a single event when its batch failed and each is tried alone.
   */
  handle(tx: Tx, events: readonly ConsumedEvent[]): Promise<void>;
}

export interface EventConsumer {
  readonly name: string;
  readonly queue: string;
  /** The queues it declared, for tests that clean up after themselves. */
  readonly queues: string[];
  close(): Promise<void>;
}

/** 1 s, 5 s, 30 s, 2 min, 10 min: a dependency has about a quarter of an hour to come back. */
export const DEFAULT_RETRY_DELAYS_MS = [1_000, 5_000, 30_000, 120_000, 600_000];
/** Deliveries that fail even to park (the database is down too) before RabbitMQ dead-letters. */
const CONSUMER_DELIVERY_LIMIT = 50;
/** A delivery that cannot even be parked waits this long before it is handed back. */
const UNPARKABLE_PAUSE_MS = 1_000;
const CONSUMER_CONCURRENCY = 32;
const GAUGE_INTERVAL_MS = 5_000;
/**
 * How long a consumer remembers an applied event. Redeliveries come within minutes (a relay's
 * re-sent batch, RabbitMQ's requeue); thirty days also covers an operator moving messages back
 * from a dead-letter queue long after.
 */
const INBOX_RETENTION_MS = 30 * 24 * 60 * 60 * 1000;
const INBOX_PRUNE_INTERVAL_MS = 10 * 60 * 1000;
const INBOX_PRUNE_BATCH = 5_000;

interface Pending {
  event: Envelope;
  raw: Uint8Array;
  settle(error?: unknown): void;
}

/**
 * Applies events with their inbox rows, many per transaction: the deliveries that arrive together
 * (up to the prefetch) share one commit, as the Ledger's group commit does for transfers. When a
 * batch fails, each of its events is tried alone, so one bad event fails only itself.
 */
class InboxApplier {
  private queued: Pending[] = [];
  private running = false;
  private readonly consumed = metrics().eventsConsumed;

  constructor(
    private readonly name: string,
    private readonly db: Db,
    private readonly tables: ConsumerTables,
    private readonly handle: EventConsumerOptions["handle"],
    private readonly maxBatch: number,
  ) {}

  apply(event: Envelope, raw: Uint8Array): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queued.push({ event, raw, settle: (error) => (error === undefined ? resolve() : reject(error)) });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    // Let the deliveries of this turn of the event loop join the batch.
    await new Promise((resolve) => setImmediate(resolve));
    while (this.queued.length > 0) {
      const batch = this.queued.splice(0, this.maxBatch);
      try {
        await this.applyAll(batch);
        for (const item of batch) item.settle();
      } catch (error) {
        if (batch.length === 1) batch[0]!.settle(error);
        else for (const item of batch) await this.applyAll([item]).then(() => item.settle(), (alone: unknown) => item.settle(alone));
      }
    }
    this.running = false;
  }

  private async applyAll(batch: Pending[]): Promise<void> {
    const { inbox } = this.tables;
    await this.db.transaction(async (tx) => {
      const fresh = new Set(
        (await tx.insert(inbox).values(batch.map((item) => ({ consumer: this.name, eventId: item.event.id }))).onConflictDoNothing().returning({ id: inbox.eventId })).map((row) => row.id),
      );
      // A duplicate of an event already applied (or of one earlier in this batch) does nothing.
      const applying = batch.filter((item) => fresh.delete(item.event.id));
      if (applying.length < batch.length) this.consumed.inc({ consumer: this.name, result: "duplicate" }, batch.length - applying.length);
      if (applying.length === 0) return;
      await this.handle(tx, applying);
      this.consumed.inc({ consumer: this.name, result: "applied" }, applying.length);
    });
  }
}

function brokerOptions(namespace: string, definition: ConsumerDefinition): ConsumerOptions & { retryDelaysMs: number[] } {
  return {
    queue: consumerQueue(namespace, definition.name),
    exchange: eventsExchange(namespace),
    bindingKeys: definition.bindingKeys,
    concurrency: definition.concurrency ?? CONSUMER_CONCURRENCY,
    deliveryLimit: CONSUMER_DELIVERY_LIMIT,
    retryDelaysMs: definition.retryDelaysMs ?? DEFAULT_RETRY_DELAYS_MS,
  };
}

/**
 * Declares every consumer's queue and bindings before anything publishes: an event published
 * while a consumer's queue does not exist yet would be unroutable, and lost to that consumer.
 * Every process of the mesh does this at start-up, whichever services it runs.
 */
export async function declareEventConsumers(broker: Broker, namespace: string, definitions: readonly ConsumerDefinition[]): Promise<void> {
  for (const definition of definitions) await broker.declare(brokerOptions(namespace, definition));
}

/** The queues a consumer declares, for tests and benchmarks that clean up after themselves. */
export function consumerQueues(namespace: string, definition: ConsumerDefinition): string[] {
  const { queue, retryDelaysMs } = brokerOptions(namespace, definition);
  return [queue, ...retryQueueNames(queue, retryDelaysMs)];
}

export async function startEventConsumer(options: EventConsumerOptions): Promise<EventConsumer> {
  const { name, db, tables, log } = options;
  const consumerOptions = brokerOptions(options.namespace, options);
  const { queue, retryDelaysMs, concurrency } = consumerOptions;
  const applier = new InboxApplier(name, db, tables, options.handle, concurrency);
  const { eventsConsumed, eventConsumerLagSeconds } = metrics();

  async function park(message: BrokerMessage, eventId: string, eventType: string, reason: string): Promise<void> {
    try {
      await db.insert(tables.parked).values({ consumer: name, eventId, eventType, body: message.body, reason: reason.slice(0, 2000), attempts: message.attempt + 1 });
    } catch (error) {
      // Not even parking works (the database is down): hand it back to RabbitMQ a little later.
      await new Promise((resolve) => setTimeout(resolve, UNPARKABLE_PAUSE_MS));
      throw error;
    }
    eventsConsumed.inc({ consumer: name, result: "parked" });
    log.warn({ consumer: name, eventId, eventType, reason }, "event parked after its retries; replay it with EventOperationsService");
  }

  const subscription = await options.broker.consume(
    consumerOptions,
    async (message) => {
      let event: Envelope;
      try {
        event = fromBinary(EnvelopeSchema, message.body);
        if (!event.id) throw new Error("the envelope has no id");
      } catch (error) {
        // A message that cannot be decoded will never be applied: park it at once.
        return park(message, message.messageId, message.routingKey, `undecodable: ${errorText(error)}`);
      }
      try {
        await applier.apply(event, message.body);
        if (event.time) eventConsumerLagSeconds.observe({ consumer: name }, Math.max(0, (Date.now() - timestampDate(event.time).getTime()) / 1000));
      } catch (error) {
        if (message.attempt < retryDelaysMs.length) {
          eventsConsumed.inc({ consumer: name, result: "retried" });
          throw error; // the broker sends it back after the next delay
        }
        await park(message, event.id, event.type, errorText(error));
      }
    },
  );
  // Queue depth and parked events, sampled for Prometheus; a backend that is away skips a sample.
  const sampler = every(GAUGE_INTERVAL_MS, `${name} gauges`, async () => {
    await options.broker.queueDepth(queue).then((depth) => metrics().eventQueueDepth.set({ consumer: name }, depth), () => undefined);
    const [row] = await db.select({ count: sql<number>`count(*)::int` }).from(tables.parked).where(and(eq(tables.parked.consumer, name), isNull(tables.parked.replayedAt))).catch(() => []);
    if (row) metrics().parkedEvents.set({ consumer: name }, row.count);
  }, log);
  const pruner = every(INBOX_PRUNE_INTERVAL_MS, `${name} inbox pruning`, async () => {
    const before = new Date(Date.now() - INBOX_RETENTION_MS).toISOString();
    await db.execute(sql`
      delete from ${tables.inbox} where (${tables.inbox.consumer}, ${tables.inbox.eventId}) in (
        select ${tables.inbox.consumer}, ${tables.inbox.eventId} from ${tables.inbox}
        where ${tables.inbox.consumer} = ${name} and ${tables.inbox.processedAt} < ${before}::timestamptz limit ${INBOX_PRUNE_BATCH})`);
  }, log);
  return {
    name,
    queue,
    queues: consumerQueues(options.namespace, options),
    async close() {
      await Promise.all([sampler.stop(), pruner.stop()]);
      await subscription.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Operations: parked events

export interface ParkedEventSource {
  db: Db;
  tables: ConsumerTables;
  broker: Broker;
  namespace: string;
  /** The consumers whose parked events this service holds. */
  consumers: string[];
}

type ParkedRow = EventTables["parked"]["$inferSelect"];

function parkedMessage(row: ParkedRow): ParkedEvent {
  return {
    $typeName: "cowrie.events.v1.ParkedEvent",
    id: row.id,
    consumer: row.consumer,
    eventId: row.eventId,
    eventType: row.eventType,
    reason: row.reason,
    attempts: row.attempts,
    parkedAt: timestampFromDate(row.parkedAt),
    replayedAt: row.replayedAt ? timestampFromDate(row.replayedAt) : undefined,
    replayedBy: row.replayedBy ?? "",
  };
}

const PARKED_PAGE_MAX = 500;

export function eventOperations(source: ParkedEventSource): ServiceImpl<typeof EventOperationsService> {
  const { db, tables, broker } = source;
  const { parked } = tables;
  return {
    async listParkedEvents(request) {
      const pageSize = requirePageSize(request.pageSize, PARKED_PAGE_MAX, 100);
      if (request.pageSize < 0) throw invalidArgument("page_size", "must not be negative");
      if (request.consumer && !source.consumers.includes(request.consumer)) {
        throw invalidArgument("consumer", `is not a consumer of this service (${source.consumers.join(", ")})`);
      }
      const after = pagePosition(request.pageToken, "p", /^[1-9][0-9]{0,18}$/);
      const conditions: (SQL | undefined)[] = [
        request.consumer ? eq(parked.consumer, request.consumer) : undefined,
        request.includeReplayed ? undefined : isNull(parked.replayedAt),
        after ? gt(parked.id, BigInt(after)) : undefined,
      ];
      const rows = await db.select().from(parked).where(and(...conditions)).orderBy(asc(parked.id)).limit(pageSize + 1);
      const { page, nextPageToken } = pageOf(rows, pageSize, "p", (last) => String(last.id));
      return { events: page.map(parkedMessage), nextPageToken };
    },
    async replayParkedEvent(request) {
      const operator = requireText(request.operator, "operator", 128);
      if (request.id <= 0n) throw invalidArgument("id", "must be a parked event's id");
      const [row] = await db.select().from(parked).where(eq(parked.id, request.id));
      if (!row) throw notFound(`parked event ${request.id}`);
      if (row.replayedAt) throw new ConnectError(`parked event ${request.id} was already replayed by ${row.replayedBy}`, Code.FailedPrecondition);
      // Straight back to this consumer's queue (default exchange), as a first attempt. Other
      // consumers already had it; this one's inbox has no record of it, since it never applied.
      try {
        await broker.publish("", consumerQueue(source.namespace, row.consumer), row.body, { messageId: row.eventId, headers: { "cowrie-replayed-by": operator } });
      } catch (error) {
        throw new ConnectError(`the broker did not take the event: ${errorText(error)}`, Code.Unavailable);
      }
      const [updated] = await db
        .update(parked)
        .set({ replayedAt: new Date(), replayedBy: operator })
        .where(and(eq(parked.id, row.id), isNull(parked.replayedAt)))
        .returning();
      return { event: parkedMessage(updated ?? row) };
    },
  };
}
