/**
 * A small message broker: durable topic publishing with confirms, and consumers
 * on quorum queues with bounded redelivery and dead-lettering. RabbitMQ in
 * deployments; an in-process stand-in with the same routing, redelivery and
 * dead-letter semantics for tests and single-process runs.
 *
 * Topology created by consume({ queue, exchange, ... }):
 *   exchange (topic) --bindingKeys--> queue --after deliveryLimit failures-->
 *   `${exchange}.dead` (topic) --routing key `${queue}`--> `${queue}.dead`
 * Dead letters are routed by the source queue's name, so queues sharing an
 * exchange keep separate dead-letter queues. Consuming a dead-letter queue is
 * a consume() with queue `${queue}.dead` and exchange `${exchange}.dead`; it
 * reuses the declaration made for its source queue (see isDeadLetterConsumer).
 */
import { Connection, ConsumerStatus, type AsyncMessage, type Consumer } from "rabbitmq-client";
import { withTimeout } from "./limits.js";

export interface BrokerMessage {
  body: Uint8Array;
  routingKey: string;
  headers: Record<string, string>;
  messageId: string;
  redelivered: boolean;
  /** How many delayed retries came before this delivery (0 on the first; see retryDelaysMs). */
  attempt: number;
}

export interface ConsumerOptions {
  queue: string; // durable quorum queue name
  exchange: string; // topic exchange to bind to (declared if missing)
  bindingKeys: string[]; // topic patterns, `*` one word, `#` zero or more words
  concurrency: number; // max handler calls in flight
  deliveryLimit: number; // after this many failed deliveries the message is dead-lettered
  /**
   * Delayed retries: when the handler throws on attempt n < retryDelaysMs.length, the message is
   * acknowledged and comes back to this queue alone after retryDelaysMs[n] with attempt n + 1
   * (through a delay queue `${queue}.retry.${ms}`), so a failing message neither blocks the queue
   * nor spins. After the last delay a failure nacks as without retries (deliveryLimit applies).
   */
  retryDelaysMs?: number[];
}

export interface Broker {
  readonly kind: "rabbitmq" | "memory";
  /**
   * Publishes with publisher confirms: resolves only once the broker has the message durably;
   * rejects otherwise. Unroutable messages are not an error. Exchange "" is the default exchange:
   * the routing key names one queue (used to hand a message back to a single consumer).
   */
  publish(
    exchange: string,
    routingKey: string,
    body: Uint8Array,
    options: { messageId: string; headers?: Record<string, string> },
  ): Promise<void>;
  /**
   * Declares a consumer's queue, bindings, delay and dead-letter queues without consuming, exactly
   * as consume() would: messages published from then on wait in the queue for the consumer.
   */
  declare(options: ConsumerOptions): Promise<void>;
  /** Starts a consumer. A handler that resolves acks; one that throws nacks and the message is redelivered until deliveryLimit, then goes to the dead-letter queue `${queue}.dead` (through exchange `${exchange}.dead`). */
  consume(options: ConsumerOptions, handler: (message: BrokerMessage) => Promise<void>): Promise<{ close(): Promise<void> }>;
  /** Messages ready in a queue (not counting those delivered and not yet acknowledged), for metrics. */
  queueDepth(queue: string): Promise<number>;
  /** True while connected (memory: always). Used by health checks. */
  isReady(): boolean;
  close(): Promise<void>;
}

export interface BrokerErrorOptions {
  /**
   * Connection errors, consumer setup errors and handler failures. They never
   * crash the process; without this callback they are dropped.
   */
  onError?: (error: unknown) => void;
}

const DEAD_SUFFIX = ".dead";
/** The header that carries BrokerMessage.attempt. */
const ATTEMPT_HEADER = "x-cowrie-attempt";
/** The routing key a retried message was first published with. */
const ROUTING_KEY_HEADER = "x-cowrie-routing-key";

/** The delay queues of a consumer's retries: one per distinct delay. */
export function retryQueueNames(queue: string, retryDelaysMs: readonly number[] = []): string[] {
  return [...new Set(retryDelaysMs)].map((ms) => retryQueueName(queue, ms));
}

function retryQueueName(queue: string, delayMs: number): string {
  return `${queue}.retry.${delayMs}`;
}

function attemptOf(headers: Record<string, string>): number {
  const attempt = Number(headers[ATTEMPT_HEADER] ?? 0);
  return Number.isSafeInteger(attempt) && attempt >= 0 ? attempt : 0;
}

/** The headers of a message sent back for attempt `attempt`. */
function retryHeaders(message: BrokerMessage, attempt: number): Record<string, string> {
  // The delay queue's dead-lettering replaces the routing key: keep the original in a header.
  return { [ROUTING_KEY_HEADER]: message.routingKey, ...message.headers, [ATTEMPT_HEADER]: String(attempt) };
}

// ---------------------------------------------------------------------------
// Topology shared by both implementations, so they cannot drift apart.

interface QueueDeclaration {
  name: string;
  /** Failed deliveries before dead-lettering; absent means redeliver forever. */
  deliveryLimit?: number;
  deadLetter?: { exchange: string; routingKey: string };
}

interface BindingDeclaration {
  queue: string;
  exchange: string;
  routingKey: string;
}

interface ConsumerTopology {
  exchanges: string[];
  queue: QueueDeclaration;
  bindings: BindingDeclaration[];
  /** Declared together with the source queue so dead letters are kept even before anyone consumes them. */
  deadLetterQueue?: { queue: QueueDeclaration; binding: BindingDeclaration };
}

/**
 * A dead-letter queue is declared by its source queue's consumer, without a
 * delivery limit of its own. Consuming it must reuse that exact declaration:
 * RabbitMQ refuses to redeclare a queue with different arguments.
 */
function isDeadLetterConsumer(options: ConsumerOptions): boolean {
  return options.queue.endsWith(DEAD_SUFFIX) && options.exchange.endsWith(DEAD_SUFFIX);
}

function deadLetterQueueDeclaration(name: string): QueueDeclaration {
  // No limit and no further dead-lettering: a dead letter is never silently dropped.
  return { name };
}

function consumerTopology(options: ConsumerOptions): ConsumerTopology {
  const bindings = options.bindingKeys.map((routingKey) => ({
    queue: options.queue,
    exchange: options.exchange,
    routingKey,
  }));
  if (isDeadLetterConsumer(options)) {
    return { exchanges: [options.exchange], queue: deadLetterQueueDeclaration(options.queue), bindings };
  }
  const deadExchange = `${options.exchange}${DEAD_SUFFIX}`;
  const deadQueue = `${options.queue}${DEAD_SUFFIX}`;
  return {
    exchanges: [options.exchange, deadExchange],
    queue: {
      name: options.queue,
      deliveryLimit: options.deliveryLimit,
      deadLetter: { exchange: deadExchange, routingKey: options.queue },
    },
    bindings,
    deadLetterQueue: {
      queue: deadLetterQueueDeclaration(deadQueue),
      binding: { queue: deadQueue, exchange: deadExchange, routingKey: options.queue },
    },
  };
}

function assertConsumerOptions(options: ConsumerOptions): void {
  if (!options.queue || !options.exchange) throw new TypeError("queue and exchange are required");
  if (!Number.isSafeInteger(options.concurrency) || options.concurrency < 1) {
    throw new RangeError(`concurrency must be a positive integer, got ${options.concurrency}`);
  }
  if (!Number.isSafeInteger(options.deliveryLimit) || options.deliveryLimit < 1) {
    throw new RangeError(`deliveryLimit must be a positive integer, got ${options.deliveryLimit}`);
  }
  for (const ms of options.retryDelaysMs ?? []) {
    if (!Number.isSafeInteger(ms) || ms < 1) throw new RangeError(`retryDelaysMs must be positive integers, got ${ms}`);
  }
}

/**
 * Runs a handler with delayed retries: a failure before the last delay sends the message to its
 * delay queue (through `sendBack`) and counts as handled; a failure after it, or a failed
 * send-back, is the caller's failure (nack, redelivery, dead-lettering).
 */
async function withRetries(
  options: ConsumerOptions,
  handler: (message: BrokerMessage) => Promise<void>,
  message: BrokerMessage,
  sendBack: (delayMs: number, message: BrokerMessage) => Promise<void>,
  reportError: (error: unknown) => void,
): Promise<void> {
  try {
    await handler(message);
  } catch (error) {
    const delayMs = options.retryDelaysMs?.[message.attempt];
    if (delayMs === undefined) throw error;
    reportError(error);
    await sendBack(delayMs, message);
  }
}

// ---------------------------------------------------------------------------
// RabbitMQ

export interface RabbitBrokerOptions extends BrokerErrorOptions {
  /** Shown in the RabbitMQ management UI, to tell services' connections apart. */
  connectionName: string;
  /**
   * How long declare() and consume() wait for RabbitMQ while it cannot be reached, and the setting
   * that says so (for the error). Services pass COWRIE_STARTUP_WAIT_MS: their consumers start in
   * create(), so a service started before RabbitMQ waits for it instead of exiting. Default:
   * RABBIT_ACQUIRE_TIMEOUT_MS, as for publishing.
   */
  connectWait?: { ms: number; setting: string };
}

const RABBIT_CONNECTION_TIMEOUT_MS = 5_000;
/** How long publish/consume wait for a (re)connection before rejecting. */
const RABBIT_ACQUIRE_TIMEOUT_MS = 5_000;
/** An exchange declaration waits for a channel (the acquire timeout), then for the broker's reply. */
const EXCHANGE_DECLARE_TIMEOUT_MS = 2 * RABBIT_ACQUIRE_TIMEOUT_MS;
const RABBIT_HEARTBEAT_SECONDS = 30;
const RABBIT_RETRY_LOW_MS = 100;
const RABBIT_RETRY_HIGH_MS = 5_000;
/** One retry rides out a channel reset; more would only delay the caller's own retry. */
const RABBIT_PUBLISH_MAX_ATTEMPTS = 2;

export function createRabbitBroker(url: string, options: RabbitBrokerOptions): Broker {
  const reportError = (error: unknown) => options.onError?.(error);
  const connection = new Connection({
    url,
    connectionName: options.connectionName,
    connectionTimeout: RABBIT_CONNECTION_TIMEOUT_MS,
    acquireTimeout: RABBIT_ACQUIRE_TIMEOUT_MS,
    heartbeat: RABBIT_HEARTBEAT_SECONDS,
    retryLow: RABBIT_RETRY_LOW_MS,
    retryHigh: RABBIT_RETRY_HIGH_MS,
  });
  // An 'error' event without a listener would crash the process on every reconnect attempt.
  connection.on("error", reportError);
  // A retried publish may reach the broker twice (the first confirm can be lost):
  // delivery is at-least-once and consumers deduplicate by messageId.
  const publisher = connection.createPublisher({ confirm: true, maxAttempts: RABBIT_PUBLISH_MAX_ATTEMPTS });
  const exchanges = createExchangeDeclarer(connection);
  const consumers = new Set<Consumer>();
  const connectWait = options.connectWait ?? { ms: RABBIT_ACQUIRE_TIMEOUT_MS, setting: "the acquire timeout" };
  let closed = false;

  /** Declarations go on only once connected; rabbitmq-client alone gives up after its acquire timeout. */
  const connected = async () => {
    if (closed) throw new Error("broker is closed");
    if (connection.ready) return;
    try {
      // true: a wait that runs out must not close the connection, which keeps retrying.
      await connection.onConnect(connectWait.ms, true);
    } catch (error) {
      throw new Error(`RabbitMQ could not be reached within ${connectWait.setting} (${connectWait.ms} ms)`, { cause: error });
    }
  };

  const publish: Broker["publish"] = async (exchange, routingKey, body, { messageId, headers = {} }) => {
    if (closed) throw new Error("broker is closed");
    // Publishing must not depend on a consumer having declared the exchange first.
    if (exchange !== "") await exchanges.ensure(exchange);
    try {
      await publisher.send(
        {
          exchange,
          routingKey,
          messageId,
          headers,
          durable: true,
          // An explicit binary type, so rabbitmq-client neither JSON-encodes a
          // Uint8Array nor decodes the body on the consuming side.
          contentType: "application/octet-stream",
          // Unroutable messages are dropped by design (e.g. no subscriber yet).
          mandatory: false,
        },
        toBuffer(body),
      );
    } catch (error) {
      exchanges.forgetOnNotFound(exchange, error);
      throw error;
    }
  };

  return {
    kind: "rabbitmq",
    publish,
    async declare(consumerOptions) {
      assertConsumerOptions(consumerOptions);
      await connected();
      const topology = consumerTopology(consumerOptions);
      await declareSideQueues(connection, consumerOptions, topology);
      for (const exchange of topology.exchanges) await connection.exchangeDeclare(exchangeDeclaration(exchange));
      await connection.queueDeclare(rabbitQueueDeclaration(topology.queue));
      for (const binding of topology.bindings) await connection.queueBind(binding);
    },
    async consume(consumerOptions, handler) {
      assertConsumerOptions(consumerOptions);
      await connected();
      const topology = consumerTopology(consumerOptions);
      await declareSideQueues(connection, consumerOptions, topology);
      const sendBack = (delayMs: number, message: BrokerMessage) =>
        publish("", retryQueueName(consumerOptions.queue, delayMs), message.body, {
          messageId: message.messageId,
          headers: retryHeaders(message, message.attempt + 1),
        });
      const consumer = startRabbitConsumer(
        connection,
        consumerOptions,
        topology,
        (message) => withRetries(consumerOptions, handler, message, sendBack, reportError),
        reportError,
      );
      consumers.add(consumer);
      const stop = async () => {
        consumers.delete(consumer);
        await consumer.close();
      };
      try {
        await untilConsumerReady(consumer);
      } catch (error) {
        await stop();
        throw error;
      }
      return { close: stop };
    },
    async queueDepth(queue) {
      // A passive declaration only reads the queue; it fails (and declares nothing) when it is missing.
      return (await connection.queueDeclare({ queue, passive: true })).messageCount;
    },
    isReady: () => !closed && connection.ready,
    async close() {
      if (closed) return;
      closed = true;
      // Consumers and the publisher own channels; the connection only closes once they are gone.
      await Promise.allSettled([...consumers].map((consumer) => consumer.close()));
      consumers.clear();
      await publisher.close().catch(reportError);
      await connection.close();
    },
  };
}

function createExchangeDeclarer(connection: Connection) {
  const declared = new Map<string, Promise<void>>();
  return {
    ensure(exchange: string): Promise<void> {
      let declaration = declared.get(exchange);
      if (!declaration) {
        // Bounded, and forgotten when it fails: a declaration that never settled (its connection
        // dropped under it) would otherwise hold every later publish to the exchange.
        declaration = withTimeout(connection.exchangeDeclare(exchangeDeclaration(exchange)).then(() => {}), EXCHANGE_DECLARE_TIMEOUT_MS, `declaring exchange ${exchange} took more than ${EXCHANGE_DECLARE_TIMEOUT_MS} ms`);
        declared.set(exchange, declaration);
        declaration.catch(() => declared.delete(exchange));
      }
      return declaration;
    },
    /** The exchange was deleted behind our back: declare it again on the next publish. */
    forgetOnNotFound(exchange: string, error: unknown): void {
      if ((error as { code?: unknown } | null)?.code === "NOT_FOUND") declared.delete(exchange);
    },
  };
}

function exchangeDeclaration(exchange: string) {
  return { exchange, type: "topic", durable: true, autoDelete: false, internal: false };
}

function rabbitQueueDeclaration(queue: QueueDeclaration) {
  const queueArguments: Record<string, unknown> = { "x-queue-type": "quorum" };
  if (queue.deliveryLimit !== undefined) {
    // RabbitMQ dead-letters once a message was returned more than x-delivery-limit
    // times, i.e. after x-delivery-limit + 1 failed deliveries.
    queueArguments["x-delivery-limit"] = queue.deliveryLimit - 1;
  }
  if (queue.deadLetter) {
    queueArguments["x-dead-letter-exchange"] = queue.deadLetter.exchange;
    queueArguments["x-dead-letter-routing-key"] = queue.deadLetter.routingKey;
    // at-least-once keeps a message in the source queue until the dead-letter
    // queue has confirmed it (the default, at-most-once, can lose it). It requires
    // the reject-publish overflow mode.
    queueArguments["x-dead-letter-strategy"] = "at-least-once";
    queueArguments["x-overflow"] = "reject-publish";
  }
  // Quorum queues are always durable, never exclusive or auto-deleted.
  return { queue: queue.name, durable: true, exclusive: false, autoDelete: false, arguments: queueArguments };
}

async function declareDeadLetterQueue(connection: Connection, topology: ConsumerTopology): Promise<void> {
  const deadLetter = topology.deadLetterQueue;
  if (!deadLetter) return;
  await connection.exchangeDeclare(exchangeDeclaration(deadLetter.binding.exchange));
  await connection.queueDeclare(rabbitQueueDeclaration(deadLetter.queue));
  await connection.queueBind(deadLetter.binding);
}

/**
 * The queues beside a consumer's own: its dead-letter queue, and one quorum queue per retry delay,
 * holding messages for that long (x-message-ttl), then dead-lettering them at least once through
 * the default exchange back to the consumer's own queue only.
 */
async function declareSideQueues(connection: Connection, options: ConsumerOptions, topology: ConsumerTopology): Promise<void> {
  await declareDeadLetterQueue(connection, topology);
  for (const ms of new Set(options.retryDelaysMs)) {
    await connection.queueDeclare({
      queue: retryQueueName(options.queue, ms),
      durable: true,
      exclusive: false,
      autoDelete: false,
      arguments: {
        "x-queue-type": "quorum",
        "x-message-ttl": ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": options.queue,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
      },
    });
  }
}

function startRabbitConsumer(
  connection: Connection,
  options: ConsumerOptions,
  topology: ConsumerTopology,
  handler: (message: BrokerMessage) => Promise<void>,
  reportError: (error: unknown) => void,
): Consumer {
  // createConsumer re-runs these declarations on every reconnect.
  const consumer = connection.createConsumer(
    {
      queue: options.queue,
      queueOptions: rabbitQueueDeclaration(topology.queue),
      exchanges: topology.exchanges.map(exchangeDeclaration),
      queueBindings: topology.bindings,
      // Prefetch no more than we run, so undelivered work stays available to other instances.
      qos: { prefetchCount: options.concurrency },
      concurrency: options.concurrency,
      noAck: false,
      requeue: true,
      lazy: false,
    },
    async (message: AsyncMessage) => {
      try {
        await handler(toBrokerMessage(message));
        return ConsumerStatus.ACK;
      } catch (error) {
        reportError(error);
        // Requeue: the quorum queue counts the failure and dead-letters at the limit.
        return ConsumerStatus.REQUEUE;
      }
    },
  );
  // Without a listener, a cancelled consumer or lost channel would crash the process.
  consumer.on("error", reportError);
  return consumer;
}

/** Resolves once the consumer is subscribed; rejects on the first setup error (e.g. mismatched queue arguments). */
function untilConsumerReady(consumer: Consumer): Promise<void> {
  return new Promise((resolve, reject) => {
    const onReady = () => {
      consumer.off("error", onError);
      resolve();
    };
    const onError = (error: unknown) => {
      consumer.off("ready", onReady);
      reject(error);
    };
    consumer.once("ready", onReady);
    consumer.once("error", onError);
  });
}

function toBuffer(body: Uint8Array): Buffer {
  // A view over the same memory; a plain Uint8Array would otherwise be JSON-encoded by rabbitmq-client.
  return Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

/** rabbitmq-client decodes text/plain and application/json bodies; turn them back into bytes. */
function toBytes(body: unknown): Uint8Array {
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === "string") return Buffer.from(body, "utf8");
  if (body === undefined || body === null) return new Uint8Array(0);
  return Buffer.from(JSON.stringify(body), "utf8");
}

function toBrokerMessage(message: AsyncMessage): BrokerMessage {
  return {
    body: toBytes(message.body),
    routingKey: originalRoutingKey(message),
    headers: stringHeaders(message.headers),
    messageId: message.messageId ?? "",
    redelivered: message.redelivered,
    attempt: attemptOf(stringHeaders(message.headers)),
  };
}

/**
 * Dead letters arrive with the source queue's name as routing key; x-death
 * records the key the message was published with. Its last entry is the first death.
 */
function originalRoutingKey(message: AsyncMessage): string {
  const retried = message.headers?.[ROUTING_KEY_HEADER];
  if (typeof retried === "string") return retried;
  const deaths: unknown = message.headers?.["x-death"];
  if (!Array.isArray(deaths)) return message.routingKey;
  const firstDeath = deaths[deaths.length - 1] as { "routing-keys"?: unknown } | undefined;
  const keys = firstDeath?.["routing-keys"];
  return Array.isArray(keys) && typeof keys[0] === "string" ? keys[0] : message.routingKey;
}

/** Only string headers are part of the contract; broker bookkeeping (x-death, x-delivery-count) is not. */
function stringHeaders(headers: Record<string, unknown> | undefined): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers ?? {})) {
    if (typeof value === "string") result[name] = value;
  }
  return result;
}

// ---------------------------------------------------------------------------
// In memory

interface StoredMessage {
  exchange: string;
  routingKey: string;
  body: Uint8Array;
  headers: Record<string, string>;
  messageId: string;
  failedDeliveries: number;
}

interface MemoryConsumer {
  concurrency: number;
  handler: (message: BrokerMessage) => Promise<void>;
  inFlight: Set<Promise<void>>;
}

interface MemoryQueue {
  declaration: QueueDeclaration;
  ready: StoredMessage[];
  consumers: MemoryConsumer[];
  nextConsumerIndex: number;
  pumpScheduled: boolean;
}

/** An in-process broker with RabbitMQ's routing, redelivery and dead-letter semantics. */
export function createMemoryBroker(options: BrokerErrorOptions = {}): Broker {
  const reportError = (error: unknown) => options.onError?.(error);
  const bindingsByExchange = new Map<string, BindingDeclaration[]>();
  const queues = new Map<string, MemoryQueue>();
  const consumers = new Set<{ close(): Promise<void> }>();
  let closed = false;

  function declareExchange(exchange: string): void {
    if (!bindingsByExchange.has(exchange)) bindingsByExchange.set(exchange, []);
  }

  function declareQueue(declaration: QueueDeclaration): MemoryQueue {
    const existing = queues.get(declaration.name);
    if (existing) {
      assertEquivalentQueue(existing.declaration, declaration);
      return existing;
    }
    const queue: MemoryQueue = { declaration, ready: [], consumers: [], nextConsumerIndex: 0, pumpScheduled: false };
    queues.set(declaration.name, queue);
    return queue;
  }

  function bind(binding: BindingDeclaration): void {
    declareExchange(binding.exchange);
    const bindings = bindingsByExchange.get(binding.exchange)!;
    const exists = bindings.some((b) => b.queue === binding.queue && b.routingKey === binding.routingKey);
    if (!exists) bindings.push(binding);
  }

  /** Delivers a copy to every queue with at least one matching binding (once per queue, like RabbitMQ). */
  function route(exchange: string, routingKey: string, message: Omit<StoredMessage, "failedDeliveries">): void {
    const targets = new Set<string>();
    for (const binding of bindingsByExchange.get(exchange) ?? []) {
      if (topicMatches(binding.routingKey, routingKey)) targets.add(binding.queue);
    }
    for (const name of targets) routeToQueue(name, message);
  }

  function schedulePump(queue: MemoryQueue): void {
    if (queue.pumpScheduled) return;
    queue.pumpScheduled = true;
    // Always asynchronous: handlers never run inside publish() or inside another handler's settlement.
    setImmediate(() => {
      queue.pumpScheduled = false;
      pump(queue);
    });
  }

  function pump(queue: MemoryQueue): void {
    while (queue.ready.length > 0) {
      const consumer = nextConsumerWithCapacity(queue);
      if (!consumer) return;
      deliver(queue, consumer, queue.ready.shift()!);
    }
  }

  function declareTopology(topology: ConsumerTopology): MemoryQueue {
    for (const exchange of topology.exchanges) declareExchange(exchange);
    if (topology.deadLetterQueue) {
      declareQueue(topology.deadLetterQueue.queue);
      bind(topology.deadLetterQueue.binding);
    }
    const queue = declareQueue(topology.queue);
    for (const binding of topology.bindings) bind(binding);
    return queue;
  }

  /** Exchange "" is the default exchange: straight to the queue the routing key names. */
  function routeToQueue(name: string, message: Omit<StoredMessage, "failedDeliveries">): void {
    const queue = queues.get(name);
    if (!queue) return;
    queue.ready.push({ ...message, headers: { ...message.headers }, failedDeliveries: 0 });
    schedulePump(queue);
  }

  function deliver(queue: MemoryQueue, consumer: MemoryConsumer, message: StoredMessage): void {
    const delivery = runHandler(consumer, message).then((succeeded) => {
      consumer.inFlight.delete(delivery);
      if (!succeeded) settleFailure(queue, message);
      schedulePump(queue);
    });
    consumer.inFlight.add(delivery);
  }

  async function runHandler(consumer: MemoryConsumer, message: StoredMessage): Promise<boolean> {
    try {
      await consumer.handler(toMemoryBrokerMessage(message));
      return true;
    } catch (error) {
      reportError(error);
      return false;
    }
  }

  function settleFailure(queue: MemoryQueue, message: StoredMessage): void {
    message.failedDeliveries += 1;
    const { deliveryLimit, deadLetter } = queue.declaration;
    if (deliveryLimit !== undefined && message.failedDeliveries >= deliveryLimit) {
      if (deadLetter) route(deadLetter.exchange, deadLetter.routingKey, deadLetteredCopy(queue, message));
      return; // without a dead-letter exchange RabbitMQ drops it too
    }
    // Back to the head, as a nack with requeue does, keeping FIFO order for the rest.
    queue.ready.unshift(message);
  }

  return {
    kind: "memory",
    async publish(exchange, routingKey, body, { messageId, headers = {} }) {
      if (closed) throw new Error("broker is closed");
      // Copy so later mutation of the caller's buffer cannot change a "durable" message.
      const message = { exchange, routingKey, body: Uint8Array.from(body), headers, messageId };
      if (exchange === "") return routeToQueue(routingKey, message);
      declareExchange(exchange);
      route(exchange, routingKey, message);
    },
    async declare(consumerOptions) {
      assertConsumerOptions(consumerOptions);
      if (closed) throw new Error("broker is closed");
      declareTopology(consumerTopology(consumerOptions));
    },
    async consume(consumerOptions, handler) {
      assertConsumerOptions(consumerOptions);
      if (closed) throw new Error("broker is closed");
      const queue = declareTopology(consumerTopology(consumerOptions));
      // A delayed retry waits in a timer, then goes back to this queue alone, as a delay queue does.
      const sendBack = async (delayMs: number, message: BrokerMessage) => {
        const retried = { exchange: "", routingKey: message.routingKey, body: message.body, headers: retryHeaders(message, message.attempt + 1), messageId: message.messageId };
        setTimeout(() => !closed && routeToQueue(consumerOptions.queue, retried), delayMs).unref();
      };
      const consumer: MemoryConsumer = {
        concurrency: consumerOptions.concurrency,
        handler: (message) => withRetries(consumerOptions, handler, message, sendBack, reportError),
        inFlight: new Set(),
      };
      queue.consumers.push(consumer);
      schedulePump(queue); // messages may already be waiting
      const subscription = {
        async close() {
          consumers.delete(subscription);
          queue.consumers = queue.consumers.filter((c) => c !== consumer);
          // Like rabbitmq-client: stop taking new messages, let running handlers settle.
          await Promise.allSettled([...consumer.inFlight]);
        },
      };
      consumers.add(subscription);
      return subscription;
    },
    async queueDepth(queue) {
      return queues.get(queue)?.ready.length ?? 0;
    },
    isReady: () => !closed,
    async close() {
      if (closed) return;
      closed = true;
      await Promise.allSettled([...consumers].map((consumer) => consumer.close()));
    },
  };
}

function nextConsumerWithCapacity(queue: MemoryQueue): MemoryConsumer | undefined {
  // Round-robin across competing consumers, skipping those at their concurrency limit.
  for (let offset = 0; offset < queue.consumers.length; offset++) {
    const index = (queue.nextConsumerIndex + offset) % queue.consumers.length;
    const consumer = queue.consumers[index]!;
    if (consumer.inFlight.size < consumer.concurrency) {
      queue.nextConsumerIndex = index + 1;
      return consumer;
    }
  }
  return undefined;
}

function assertEquivalentQueue(existing: QueueDeclaration, requested: QueueDeclaration): void {
  const same =
    existing.deliveryLimit === requested.deliveryLimit &&
    existing.deadLetter?.exchange === requested.deadLetter?.exchange &&
    existing.deadLetter?.routingKey === requested.deadLetter?.routingKey;
  // RabbitMQ answers PRECONDITION_FAILED here; fail the same way so tests catch it.
  if (!same) throw new Error(`PRECONDITION_FAILED - inequivalent arguments for queue '${requested.name}'`);
}

/** Mirrors the string headers RabbitMQ adds on the first dead-lettering. */
function deadLetteredCopy(queue: MemoryQueue, message: StoredMessage): Omit<StoredMessage, "failedDeliveries"> {
  const headers = { ...message.headers };
  if (headers["x-first-death-queue"] === undefined) {
    headers["x-first-death-exchange"] = message.exchange;
    headers["x-first-death-queue"] = queue.declaration.name;
    headers["x-first-death-reason"] = "delivery_limit";
  }
  return { ...message, headers };
}

function toMemoryBrokerMessage(message: StoredMessage): BrokerMessage {
  return {
    body: Uint8Array.from(message.body),
    routingKey: message.routingKey,
    headers: { ...message.headers },
    messageId: message.messageId,
    redelivered: message.failedDeliveries > 0,
    attempt: attemptOf(message.headers),
  };
}

/** AMQP topic matching: words separated by `.`, `*` matches exactly one word, `#` zero or more. */
function topicMatches(pattern: string, routingKey: string): boolean {
  return matchWords(pattern.split("."), 0, routingKey.split("."), 0);
}

function matchWords(pattern: string[], patternIndex: number, key: string[], keyIndex: number): boolean {
  if (patternIndex === pattern.length) return keyIndex === key.length;
  const word = pattern[patternIndex];
  if (word === "#") {
    for (let next = keyIndex; next <= key.length; next++) {
      if (matchWords(pattern, patternIndex + 1, key, next)) return true;
    }
    return false;
  }
  if (keyIndex === key.length) return false;
  return (word === "*" || word === key[keyIndex]) && matchWords(pattern, patternIndex + 1, key, keyIndex + 1);
}
