// Configuration comes from environment variables only. Every variable is declared here once,
// with its default and its parser, so that the README table, docker-compose.yml and the code
// cannot drift apart (a test compares them). A bad value stops start-up with one line naming the
// variable and the problem.

export const SERVICE_NAMES = ["edge", "ledger", "wallet", "router", "risk"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    problem: string,
  ) {
    super(`${variable}: ${problem}`);
    this.name = "ConfigError";
  }
}

type Parser<T> = (raw: string, name: string) => T;

interface Variable<T> {
  name: string;
  description: string;
  /** The default as written in the environment; undefined means "unset is meaningful". */
  fallback: string | undefined;
  parse: Parser<T>;
}

function integer(min: number, max: number): Parser<number> {
  return (raw, name) => {
    if (!/^-?\d+$/.test(raw.trim())) {
      throw new ConfigError(name, `must be an integer between ${min} and ${max}, got '${raw}'`);
    }
    const value = Number(raw.trim());
    if (value < min || value > max) {
      throw new ConfigError(name, `must be an integer between ${min} and ${max}, got '${raw}'`);
    }
    return value;
  };
}

function url(protocols: string[]): Parser<string> {
  return (raw, name) => {
    let parsed: URL;
    try {
      parsed = new URL(raw);
    } catch {
      throw new ConfigError(name, `must be a URL (${protocols.join(", ")}), got '${redact(raw)}'`);
    }
    if (!protocols.includes(parsed.protocol)) {
      throw new ConfigError(name, `must use ${protocols.join(" or ")}, got '${parsed.protocol}'`);
    }
    return raw;
  };
}

function oneOf<T extends string>(values: readonly T[]): Parser<T> {
  return (raw, name) => {
    if (!(values as readonly string[]).includes(raw)) {
      throw new ConfigError(name, `must be one of ${values.join(", ")}, got '${raw}'`);
    }
    return raw as T;
  };
}

const text: Parser<string> = (raw, name) => {
  if (raw.trim() === "") throw new ConfigError(name, "must not be empty");
  return raw;
};

const secret: Parser<string> = (raw, name) => {
  if (raw.length < 16) throw new ConfigError(name, "must be at least 16 characters");
  return raw;
};

function redact(raw: string): string {
  return raw.replace(/\/\/[^@/]*@/, "//***@");
}

function variable<T, F extends string | undefined>(
  name: string,
  fallback: F,
  parse: Parser<T>,
  description: string,
): Variable<T> & { fallback: F } {
  return { name, fallback, parse, description };
}

const DEFAULT_PORTS: Record<ServiceName, number> = {
  edge: 8080,
  ledger: 50051,
  wallet: 50052,
  router: 50053,
  risk: 50054,
};

const port = integer(1, 65535);
const httpUrl = url(["http:", "https:"]);

/** Every variable Cowrie reads. Order is the order of the README table. */
export const VARIABLES = {
  databaseUrl: variable("DATABASE_URL", undefined, url(["postgres:", "postgresql:"]),
    "PostgreSQL URL. Unset: embedded PGlite under COWRIE_DATA_DIR."),
  redisUrl: variable("REDIS_URL", undefined, url(["redis:", "rediss:"]),
    "Redis URL. Unset: in-process cache."),
  amqpUrl: variable("AMQP_URL", undefined, url(["amqp:", "amqps:"]),
    "RabbitMQ URL. Unset: in-process broker."),
  dataDir: variable("COWRIE_DATA_DIR", ".cowrie", text,
    "Folder for the embedded database when DATABASE_URL is unset."),
  host: variable("COWRIE_HOST", "127.0.0.1", text, "Address every service listens on."),
  edgePort: variable("COWRIE_EDGE_PORT", String(DEFAULT_PORTS.edge), port, "Edge port."),
  ledgerPort: variable("COWRIE_LEDGER_PORT", String(DEFAULT_PORTS.ledger), port, "Ledger port."),
  walletPort: variable("COWRIE_WALLET_PORT", String(DEFAULT_PORTS.wallet), port, "Wallet port."),
  routerPort: variable("COWRIE_ROUTER_PORT", String(DEFAULT_PORTS.router), port, "Router port."),
  riskPort: variable("COWRIE_RISK_PORT", String(DEFAULT_PORTS.risk), port, "Risk port."),
  edgeUrl: variable("COWRIE_EDGE_URL", undefined, httpUrl,
    "Where operator tools (npm run admin) reach the Edge. Unset: http://127.0.0.1:COWRIE_EDGE_PORT."),
  ledgerUrl: variable("COWRIE_LEDGER_URL", undefined, httpUrl,
    "Where clients reach the Ledger. Unset: http://127.0.0.1:COWRIE_LEDGER_PORT."),
  walletUrl: variable("COWRIE_WALLET_URL", undefined, httpUrl,
    "Where clients reach the Wallet. Unset: http://127.0.0.1:COWRIE_WALLET_PORT."),
  routerUrl: variable("COWRIE_ROUTER_URL", undefined, httpUrl,
    "Where clients reach the Router. Unset: http://127.0.0.1:COWRIE_ROUTER_PORT."),
  riskUrl: variable("COWRIE_RISK_URL", undefined, httpUrl,
    "Where clients reach Risk. Unset: http://127.0.0.1:COWRIE_RISK_PORT."),
  deadlineDefaultMs: variable("COWRIE_DEADLINE_DEFAULT_MS", "10000", integer(1, 300_000),
    "Deadline given to a call that arrives without one."),
  deadlineMaxMs: variable("COWRIE_DEADLINE_MAX_MS", "30000", integer(1, 300_000),
    "Longest deadline a server honours; longer ones are cut to this."),
  hopMarginMs: variable("COWRIE_HOP_MARGIN_MS", "20", integer(0, 10_000),
    "Budget kept back by a caller on each outbound call, to answer its own caller in time."),
  hopTimeoutMaxMs: variable("COWRIE_HOP_TIMEOUT_MAX_MS", "5000", integer(1, 300_000),
    "Longest deadline any single outbound call may carry."),
  clientMaxInFlight: variable("COWRIE_CLIENT_MAX_IN_FLIGHT", "256", integer(1, 100_000),
    "Most calls a process has on the wire to one target at once, until the target ends them (a call past its deadline stays on the wire until the target answers it, at most 5 s more); the rest wait off the wire, within their deadlines."),
  breakerFailures: variable("COWRIE_BREAKER_FAILURES", "5", integer(1, 1000),
    "Consecutive transport failures or deadline expiries (of calls sent with at least half their time; the calls that expire together in one stall count once) that open a circuit breaker."),
  breakerHalfOpenAfterMs: variable("COWRIE_BREAKER_HALF_OPEN_AFTER_MS", "5000",
    integer(10, 600_000), "How long an open breaker fails fast before it lets a probe through."),
  shutdownGraceMs: variable("COWRIE_SHUTDOWN_GRACE_MS", "10000", integer(0, 600_000),
    "How long shutdown waits for in-flight calls before closing connections."),
  startupWaitMs: variable("COWRIE_STARTUP_WAIT_MS", "60000", integer(0, 600_000),
    "How long a service that starts while PostgreSQL or RabbitMQ cannot be reached waits for it, retrying, before it exits."),
  databasePoolMax: variable("COWRIE_DATABASE_POOL_MAX", "8", integer(1, 200),
    "PostgreSQL connections per service process."),
  healthIntervalMs: variable("COWRIE_HEALTH_INTERVAL_MS", "2000", integer(100, 600_000),
    "How often dependencies (database, cache, broker) are checked for the health service."),
  logLevel: variable("COWRIE_LOG_LEVEL", "info",
    oneOf(["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const), "Log level."),
  corsOrigins: variable("COWRIE_CORS_ORIGINS", "*", text,
    "Comma-separated origins allowed to call the services from a browser, or *."),
  operatorToken: variable("COWRIE_OPERATOR_TOKEN", undefined, secret,
    "Bearer token for the Edge's AdminService and the Router's ReconciliationService. Unset: one is generated into COWRIE_DATA_DIR/operator-token."),
  rateLimitPerSecond: variable("COWRIE_RATE_LIMIT_PER_SECOND", "100", integer(1, 1_000_000),
    "Requests per second per API key (token bucket refill), unless the key sets its own."),
  rateLimitBurst: variable("COWRIE_RATE_LIMIT_BURST", "200", integer(1, 1_000_000),
    "Requests per API key in a burst (token bucket size), unless the key sets its own."),
  idempotencyTtlHours: variable("COWRIE_IDEMPOTENCY_TTL_HOURS", "24", integer(1, 24 * 365),
    "How long Edge idempotency keys and their responses are kept before the reaper deletes them."),
  recoveryAfterMs: variable("COWRIE_RECOVERY_AFTER_MS", "35000", integer(100, 3_600_000),
    "Age after which a request or payment left unfinished (its process died) is finished by a completer."),
  completerIntervalMs: variable("COWRIE_COMPLETER_INTERVAL_MS", "5000", integer(50, 600_000),
    "How often the completers and reapers look for unfinished and expired work."),
  webhookTimeoutMs: variable("COWRIE_WEBHOOK_TIMEOUT_MS", "10000", integer(100, 60_000),
    "Longest one merchant webhook POST may take (until the answer's headers); longer is a failed attempt. A claimed delivery's lease is four times it (at least it plus 5 s)."),
  webhookRetryBaseMs: variable("COWRIE_WEBHOOK_RETRY_BASE_MS", "30000", integer(1, 3_600_000),
    "Delay before a failed webhook's first retry; each further retry doubles it (with jitter), up to COWRIE_WEBHOOK_RETRY_MAX_DELAY_MS."),
  webhookRetryMaxDelayMs: variable("COWRIE_WEBHOOK_RETRY_MAX_DELAY_MS", "3600000", integer(1, 86_400_000),
    "Longest delay between two attempts of a webhook delivery."),
  webhookRetryForMs: variable("COWRIE_WEBHOOK_RETRY_FOR_MS", "86400000", integer(1000, 2_592_000_000),
    "How long after an event a webhook delivery is retried before it is marked failed (default 24 hours)."),
  webhookConcurrency: variable("COWRIE_WEBHOOK_CONCURRENCY", "16", integer(1, 1000),
    "Webhook POSTs in flight at once per Edge process."),
  webhookIntervalMs: variable("COWRIE_WEBHOOK_INTERVAL_MS", "1000", integer(10, 600_000),
    "How often each Edge looks for webhook deliveries that are due."),
  simulatorPort: variable("COWRIE_SIMULATOR_PORT", "7070", port,
    "Port of the payment gateway simulator that npm start runs when no gateway URL is set."),
  paystackUrl: variable("COWRIE_PAYSTACK_URL", undefined, httpUrl,
    "Paystack API base URL. Unset: the simulator's, http://127.0.0.1:COWRIE_SIMULATOR_PORT/paystack."),
  paystackSecretKey: variable("COWRIE_PAYSTACK_SECRET_KEY", "sk_test_cowrie_simulator_paystack", secret,
    "Paystack secret key (also signs Paystack's webhooks). Default: the simulator's test key."),
  flutterwaveUrl: variable("COWRIE_FLUTTERWAVE_URL", undefined, httpUrl,
    "Flutterwave API base URL. Unset: the simulator's, http://127.0.0.1:COWRIE_SIMULATOR_PORT/flutterwave."),
  flutterwaveSecretKey: variable("COWRIE_FLUTTERWAVE_SECRET_KEY", "FLWSECK_TEST-cowrie-simulator", secret,
    "Flutterwave secret key. Default: the simulator's test key."),
  flutterwaveWebhookSecret: variable("COWRIE_FLUTTERWAVE_WEBHOOK_SECRET", "cowrie-simulator-flutterwave-hash", secret,
    "Flutterwave webhook secret hash. Default: the simulator's."),
  stripeUrl: variable("COWRIE_STRIPE_URL", undefined, httpUrl,
    "Stripe API base URL. Unset: the simulator's, http://127.0.0.1:COWRIE_SIMULATOR_PORT/stripe."),
  stripeSecretKey: variable("COWRIE_STRIPE_SECRET_KEY", "sk_test_cowrie_simulator_stripe", secret,
    "Stripe secret key. Default: the simulator's test key."),
  stripeWebhookSecret: variable("COWRIE_STRIPE_WEBHOOK_SECRET", "whsec_cowrie_simulator_stripe", secret,
    "Stripe webhook signing secret. Default: the simulator's."),
  brokerNamespace: variable("COWRIE_BROKER_NAMESPACE", "cowrie", text,
    "Prefix of every RabbitMQ exchange and queue Cowrie declares, so meshes can share one broker."),
  gatewayWorkers: variable("COWRIE_GATEWAY_WORKERS", "32", integer(1, 1000),
    "Gateway payments each Router process takes from the work queue at once."),
  gatewayConcurrency: variable("COWRIE_GATEWAY_CONCURRENCY", "16", integer(1, 1000),
    "Calls in flight to one gateway, per Router process."),
  gatewayRatePerSecond: variable("COWRIE_GATEWAY_RATE_PER_SECOND", "100", integer(1, 100_000),
    "Calls started per second to one gateway, per Router process."),
  gatewayTimeoutMs: variable("COWRIE_GATEWAY_TIMEOUT_MS", "5000", integer(10, 120_000),
    "Longest a single gateway call may take; a later answer is an unknown outcome."),
  gatewayRetries: variable("COWRIE_GATEWAY_RETRIES", "2", integer(0, 10),
    "Retries of a retryable gateway error (500, 429) on the same gateway, with backoff and jitter."),
  gatewayBreakerFailures: variable("COWRIE_GATEWAY_BREAKER_FAILURES", "5", integer(1, 1000),
    "Consecutive gateway faults (transport, timeout, 5xx; never declines) that open its circuit."),
  gatewayBreakerOpenMs: variable("COWRIE_GATEWAY_BREAKER_OPEN_MS", "5000", integer(10, 600_000),
    "How long an open gateway circuit stays open before half-open probes."),
  routingExplorationPercent: variable("COWRIE_ROUTING_EXPLORATION_PERCENT", "5", integer(0, 50),
    "Share of routing decisions sent to a gateway other than the best, to keep measuring it."),
  gatewayPatienceMs: variable("COWRIE_GATEWAY_PATIENCE_MS", "900000", integer(1000, 86_400_000),
    "How long a gateway payment waits for any gateway to be able to take it before it fails as no_gateway_available."),
  outcomeUnknownFlagAfterMs: variable("COWRIE_OUTCOME_UNKNOWN_FLAG_AFTER_MS", "600000", integer(1000, 86_400_000),
    "How long an unknown gateway outcome may last before the payment is flagged for reconciliation."),
  riskTimeoutMs: variable("COWRIE_RISK_TIMEOUT_MS", "100", integer(1, 10_000),
    "How long the Router waits for Risk's verdict on a payment before COWRIE_RISK_WHEN_UNAVAILABLE decides."),
  riskWhenUnavailable: variable("COWRIE_RISK_WHEN_UNAVAILABLE", "allow", oneOf(["allow", "review", "block"] as const),
    "What Risk decides when Redis is unreachable or slower than COWRIE_RISK_REDIS_TIMEOUT_MS: allow (a RISK_UNAVAILABLE flag is recorded), review or block. The Router treats a Risk timeout the same way."),
  riskRedisTimeoutMs: variable("COWRIE_RISK_REDIS_TIMEOUT_MS", "50", integer(1, 10_000),
    "How long an evaluation waits for Redis before it applies COWRIE_RISK_WHEN_UNAVAILABLE. Keep it below the Router's wait for Risk."),
  riskPaymentMemoryHours: variable("COWRIE_RISK_PAYMENT_MEMORY_HOURS", "24", integer(1, 24 * 31),
    "How long Risk remembers an evaluated payment in Redis (about 300 bytes each): retries within it replay the first decision, and its outcome teaches the user's profile."),
  riskSettingsCacheMs: variable("COWRIE_RISK_SETTINGS_CACHE_MS", "1000", integer(0, 60_000),
    "How long a Risk process uses a tenant's settings and blocklist before reading them again; changes made through another process take effect within this."),
  reconIntervalMs: variable("COWRIE_RECON_INTERVAL_MS", "300000", integer(0, 86_400_000),
    "How often each Router runs scheduled reconciliation from its watermark; 0 turns scheduled runs off (RunReconciliation still works)."),
  reconLagMs: variable("COWRIE_RECON_LAG_MS", "60000", integer(0, 3_600_000),
    "How far behind now a scheduled reconciliation window ends, so gateways' lists and the Ledger have caught up with the newest payments."),
  reconBatchSize: variable("COWRIE_RECON_BATCH_SIZE", "2000", integer(10, 8000),
    "Payments reconciliation reads, and looks up in the Ledger, per batch."),
  reconStuckPendingMs: variable("COWRIE_RECON_STUCK_PENDING_MS", "600000", integer(1000, 86_400_000),
    "Age after which a CREATED or OUTCOME_UNKNOWN payment is a stuck-pending finding."),
  reconStuckProcessingMs: variable("COWRIE_RECON_STUCK_PROCESSING_MS", "300000", integer(1000, 86_400_000),
    "Age after which a PROCESSING payment is a stuck-processing finding."),
};

type Parsed<V> = V extends Variable<infer T> ? T : never;
type Fallback<V> = V extends { fallback: infer F } ? F : never;

export type Config = {
  [K in keyof typeof VARIABLES]: undefined extends Fallback<(typeof VARIABLES)[K]>
    ? Parsed<(typeof VARIABLES)[K]> | undefined
    : Parsed<(typeof VARIABLES)[K]>;
};

/** Reads and validates every variable; throws ConfigError on the first bad one. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const config: Record<string, unknown> = {};
  for (const [key, spec] of Object.entries(VARIABLES) as [string, Variable<unknown>][]) {
    const raw = env[spec.name];
    const value = raw === undefined || raw === "" ? spec.fallback : raw;
    config[key] = value === undefined ? undefined : spec.parse(value, spec.name);
  }
  const result = config as Config;
  if (result.deadlineDefaultMs > result.deadlineMaxMs) {
    throw new ConfigError("COWRIE_DEADLINE_DEFAULT_MS",
      `must not exceed COWRIE_DEADLINE_MAX_MS (${result.deadlineMaxMs})`);
  }
  return result;
}

export function servicePort(config: Config, service: ServiceName): number {
  return config[`${service}Port`];
}

/** Where a client in this process reaches a service. */
export function serviceUrl(config: Config, service: Exclude<ServiceName, "edge">): string {
  return config[`${service}Url`] ?? `http://127.0.0.1:${servicePort(config, service)}`;
}

/** True when no gateway URL is configured: every connector talks to the local simulator. */
export function usesGatewaySimulator(config: Config): boolean {
  return !config.paystackUrl && !config.flutterwaveUrl && !config.stripeUrl;
}

/** Where, and with which secrets, the Router reaches each payment gateway. */
export function gatewayConfig(config: Config, gateway: "paystack" | "flutterwave" | "stripe") {
  const simulator = `http://127.0.0.1:${config.simulatorPort}/${gateway}`;
  switch (gateway) {
    case "paystack":
      // Paystack signs webhooks with the account's secret key.
      return { baseUrl: config.paystackUrl ?? simulator, secretKey: config.paystackSecretKey, webhookSecret: config.paystackSecretKey };
    case "flutterwave":
      return { baseUrl: config.flutterwaveUrl ?? simulator, secretKey: config.flutterwaveSecretKey, webhookSecret: config.flutterwaveWebhookSecret };
    case "stripe":
      return { baseUrl: config.stripeUrl ?? simulator, secretKey: config.stripeSecretKey, webhookSecret: config.stripeWebhookSecret };
  }
}
