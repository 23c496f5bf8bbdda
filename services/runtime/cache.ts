/**
 * A small key/value cache with TTLs and atomic counters, backed by Redis in
 * deployments and by process memory in tests and single-process runs. Both
 * implementations follow Redis semantics so code written against one behaves
 * the same against the other.
 */
import { Redis } from "ioredis";

export interface Cache {
  readonly kind: "redis" | "memory";
  get(key: string): Promise<string | null>;
  /** Sets a value with a TTL. With ifAbsent, sets only when the key does not exist and returns false if it did. */
  set(key: string, value: string, options: { ttlMs: number; ifAbsent?: boolean }): Promise<boolean>;
  del(key: string): Promise<void>;
  /** Atomically adds `by` to an integer counter, creating it at 0 with the TTL if missing (TTL not reset on later increments); returns the new value. */
  incrementBy(key: string, by: number, ttlMs: number): Promise<number>;
  /**
   * Takes one token from the token bucket at `key` (created full, with `burst` tokens, refilled
   * at `ratePerSecond`), atomically. Refused takes leave the bucket as it was and say how long
   * until a token is there. Time is the backend's own clock (Redis TIME), so the clocks of the
   * processes sharing a bucket do not matter; `nowMs` overrides it (tests), and must then come
   * from one clock for every take on the key.
   */
  takeToken(key: string, options: TokenBucketOptions): Promise<TokenBucketResult>;
  /**
   * Runs a script atomically over its keys: its Lua on Redis (one round trip, EVALSHA; keys get
   * the cache's prefix like every other key), its JavaScript twin on the in-memory cache. Nothing
   * else runs on the backend meanwhile, so a script may read, decide and write without races.
   * As on Redis, a script that fails midway keeps the writes it made before the failure.
   */
  runScript(script: CacheScript, keys: readonly string[], args: readonly string[]): Promise<ScriptReply>;
  /** Round trip to the backend; rejects when it is unreachable. Used by health checks. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface TokenBucketOptions {
  /** Tokens added per second; > 0, fractions allowed. */
  ratePerSecond: number;
  /** Bucket size: the most tokens one burst may take; a positive integer. */
  burst: number;
  /** The current time in milliseconds; default: the backend's clock. */
  nowMs?: number;
}

export interface TokenBucketResult {
  allowed: boolean;
  /** 0 when allowed; else whole milliseconds until the next token (at least 1). */
  retryAfterMs: number;
}

/** What a script returns, in Redis' reply shape: integers, strings, nil and arrays of them. */
export type ScriptReply = number | string | null | ScriptReply[];

/**
 * One atomic operation written twice, to one specification: `lua` for Redis and `memory` for
 * the in-process cache. Keep the two side by side and test them with the same tests (both
 * backends), as cache.test.ts does for this file's own operations. Lua numbers become integers
 * in Redis replies: return fractions as strings, from both twins.
 */
export interface CacheScript {
  /** Unique within the process: it names the ioredis command. */
  readonly name: string;
  readonly lua: string;
  readonly memory: (store: ScriptStore, keys: readonly string[], args: readonly string[]) => ScriptReply;
}

/**
 * The in-memory twin's view of the cache. Values are whatever the twin stores under its keys
 * (the twin's own model of a Redis hash, sorted set...); reading a key the twin did not write
 * (a plain get/set string) is the twin's business, as WRONGTYPE would be on Redis.
 */
export interface ScriptStore {
  /** The backend's wall clock in milliseconds (Redis TIME on Redis). */
  readonly nowMs: number;
  get(key: string): unknown;
  /** Stores a value with a TTL (PX semantics: the old TTL is replaced). */
  set(key: string, value: unknown, ttlMs: number): void;
  /** Replaces a live key's TTL; does nothing on a missing key (PEXPIRE). */
  expire(key: string, ttlMs: number): void;
  del(key: string): void;
}

export interface RedisCacheOptions {
  /** Prepended to every key, so services and test runs sharing one Redis never collide. */
  keyPrefix: string;
  /** Upper bound for any single command, including waiting for the first connection. */
  commandTimeoutMs: number;
  /** Connection and reconnection errors. They are never thrown: commands reject instead. */
  onError?: (error: Error) => void;
}

const MAX_RECONNECT_DELAY_MS = 2_000;
const RECONNECT_STEP_MS = 100;
const CONNECT_TIMEOUT_MS = 5_000;
const MEMORY_SWEEP_INTERVAL_MS = 1_000;

/** Same wording as Redis so callers (and tests) see one error for both implementations. */
const NOT_AN_INTEGER = "ERR value is not an integer or out of range";

function assertTtlMs(ttlMs: number): void {
  // Redis rejects PX 0 and fractional milliseconds; reject them up front in both implementations.
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0) {
    throw new RangeError(`ttlMs must be a positive integer, got ${ttlMs}`);
  }
}

function assertIncrement(by: number): void {
  if (!Number.isSafeInteger(by)) {
    throw new RangeError(`by must be a safe integer, got ${by}`);
  }
}

function assertBucket({ ratePerSecond, burst, nowMs }: TokenBucketOptions): void {
  if (!Number.isFinite(ratePerSecond) || ratePerSecond <= 0) {
    throw new RangeError(`ratePerSecond must be a positive number, got ${ratePerSecond}`);
  }
  if (!Number.isSafeInteger(burst) || burst < 1) throw new RangeError(`burst must be a positive integer, got ${burst}`);
  if (nowMs !== undefined && (!Number.isFinite(nowMs) || nowMs < 0)) {
    throw new RangeError(`nowMs must be a non-negative number, got ${nowMs}`);
  }
}

/** How long the bucket state must live: after a full refill it equals a missing (full) bucket. */
function bucketTtlMs(ratePerSecond: number, burst: number): number {
  return Math.ceil((burst / ratePerSecond) * 1000) + 1000;
}

type BucketState = { tokens: number; atMs: number };

/**
 * One token bucket step, the in-memory twin of the Lua below: refill for the time elapsed since
 * the last step (never negative, never above burst), then take one token if there is a whole one.
 */
function bucketStep(state: BucketState | undefined, nowMs: number, ratePerSecond: number, burst: number): { state: BucketState; result: TokenBucketResult } {
  const elapsedMs = state ? Math.max(0, nowMs - state.atMs) : 0;
  let tokens = state ? Math.min(burst, state.tokens + (elapsedMs * ratePerSecond) / 1000) : burst;
  if (tokens >= 1) {
    tokens -= 1;
    return { state: { tokens, atMs: nowMs }, result: { allowed: true, retryAfterMs: 0 } };
  }
  const retryAfterMs = Math.max(1, Math.ceil(((1 - tokens) * 1000) / ratePerSecond));
  return { state: { tokens, atMs: nowMs }, result: { allowed: false, retryAfterMs } };
}

/**
 * takeToken() as a script: atomic because a script runs alone. On Redis the bucket is a hash
 * {tokens, at}; time is the backend's clock (Redis TIME) unless ARGV[3] gives it (Redis 7
 * replicates a script's effects, so reading TIME in a writing script is allowed).
 * ARGV: rate, burst, now or "", ttlMs. Returns {allowed (1/0), retryAfterMs}.
 */
const TAKE_TOKEN: CacheScript = {
  name: "takeToken",
  lua: `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now
if ARGV[3] ~= "" then
  now = tonumber(ARGV[3])
else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local tokens = burst
local stored = redis.call("HMGET", KEYS[1], "tokens", "at")
if stored[1] and stored[2] then
  local elapsed = now - tonumber(stored[2])
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tonumber(stored[1]) + elapsed * rate / 1000)
end
local allowed = 0
local retry = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry = math.max(1, math.ceil((1 - tokens) * 1000 / rate))
end
redis.call("HSET", KEYS[1], "tokens", string.format("%.17g", tokens), "at", string.format("%.17g", now))
redis.call("PEXPIRE", KEYS[1], ARGV[4])
return {allowed, retry}
`,
  memory(store, keys, args) {
    const [key] = keys as [string];
    const [rate, burst, nowArg, ttlMs] = args.map((arg) => (arg === "" ? undefined : Number(arg)));
    const stored = store.get(key);
    // A key of another type fails as HMGET fails on Redis.
    if (stored !== undefined && typeof stored !== "object") throw new Error(WRONG_TYPE);
    const { state, result } = bucketStep(stored as BucketState | undefined, nowArg ?? store.nowMs, rate as number, burst as number);
    store.set(key, state, ttlMs as number);
    return [result.allowed ? 1 : 0, result.retryAfterMs];
  },
};

/** Validates the options, then takes a token by running TAKE_TOKEN: one implementation for both caches. */
async function takeTokenWith(cache: Pick<Cache, "runScript">, key: string, options: TokenBucketOptions): Promise<TokenBucketResult> {
  assertBucket(options);
  const { ratePerSecond, burst, nowMs } = options;
  const args = [String(ratePerSecond), String(burst), nowMs === undefined ? "" : String(nowMs), String(bucketTtlMs(ratePerSecond, burst))];
  const [allowed, retryAfterMs] = (await cache.runScript(TAKE_TOKEN, [key], args)) as [number, number];
  return { allowed: allowed === 1, retryAfterMs: Number(retryAfterMs) };
}

type ScriptCommand = (numberOfKeys: number, ...keysThenArgs: string[]) => Promise<ScriptReply>;

/** Bounded, never-ending backoff: a cache that gave up reconnecting would stay down after Redis recovers. */
function reconnectDelayMs(attempt: number): number {
  return Math.min(attempt * RECONNECT_STEP_MS, MAX_RECONNECT_DELAY_MS);
}

export function createRedisCache(url: string, options: RedisCacheOptions): Cache {
  const client = new Redis(url, {
    keyPrefix: options.keyPrefix,
    lazyConnect: false,
    // Fail fast while Redis is down instead of queueing commands until it returns:
    // callers decide whether a cache miss is acceptable.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: options.commandTimeoutMs,
    connectTimeout: CONNECT_TIMEOUT_MS,
    retryStrategy: reconnectDelayMs,
    enableReadyCheck: true,
    // Measured off (2026-12-07): on, bench:spike accepted 869 and 1,574 calls against 2,873 and
    // 2,372 off, with UNAVAILABLE and INTERNAL errors; bench:risk handled fewer calls within 5 ms.
    enableAutoPipelining: false,
  });
  // An 'error' event without a listener would crash the process on every reconnect attempt.
  client.on("error", (error: Error) => options.onError?.(error));
  const untilFirstReady = firstReadyWaiter(client, options.commandTimeoutMs);
  const scriptCommands = new Map<string, ScriptCommand>();

  /** The script as an ioredis command, defined on first use (EVALSHA, falling back to EVAL once per connection). */
  function scriptCommand(script: CacheScript): ScriptCommand {
    let command = scriptCommands.get(script.name);
    if (!command) {
      const name = `cowrieScript_${script.name}`;
      client.defineCommand(name, { lua: script.lua });
      command = (client as unknown as Record<string, ScriptCommand>)[name]?.bind(client);
      if (!command) throw new Error(`could not define script ${script.name}`);
      scriptCommands.set(script.name, command);
    }
    return command;
  }

  async function run<T>(command: () => Promise<T>): Promise<T> {
    await untilFirstReady();
    return command();
  }

  const cache: Cache = {
    kind: "redis",
    get: (key) => run(() => client.get(key)),
    async set(key, value, { ttlMs, ifAbsent = false }) {
      assertTtlMs(ttlMs);
      const reply = await run(() =>
        ifAbsent ? client.set(key, value, "PX", ttlMs, "NX") : client.set(key, value, "PX", ttlMs),
      );
      return reply === "OK";
    },
    async del(key) {
      await run(() => client.del(key));
    },
    async incrementBy(key, by, ttlMs) {
      assertIncrement(by);
      assertTtlMs(ttlMs);
      return run(() => redisIncrementBy(client, key, by, ttlMs));
    },
    takeToken: (key, options) => takeTokenWith(cache, key, options),
    runScript(script, keys, args) {
      const command = scriptCommand(script);
      return run(() => command(keys.length, ...keys, ...args));
    },
    async ping() {
      await run(() => client.ping());
    },
    close: () => closeRedis(client),
  };
  return cache;
}

/**
 * With the offline queue disabled, commands issued before the first connection
 * completes would fail immediately. Waiting (at most one command timeout) for that
 * first connection avoids spurious errors at startup; after it, a dropped
 * connection fails commands immediately.
 */
function firstReadyWaiter(client: Redis, timeoutMs: number): () => Promise<void> {
  let wasReady = false;
  client.once("ready", () => {
    wasReady = true;
  });
  return () => {
    if (wasReady || client.status === "ready" || client.status === "end") return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        client.off("ready", done);
        client.off("end", done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      client.once("ready", done);
      client.once("end", done);
    });
  };
}

/** INCRBY and PEXPIRE NX in one MULTI: the TTL is set only when the key has none, i.e. when INCRBY created it. */
async function redisIncrementBy(client: Redis, key: string, by: number, ttlMs: number): Promise<number> {
  const replies = await client.multi().incrby(key, by).pexpire(key, ttlMs, "NX").exec();
  const incrementReply = replies?.[0];
  if (!incrementReply) throw new Error("Redis transaction was aborted");
  const [error, value] = incrementReply;
  if (error) throw error;
  return Number(value);
}

async function closeRedis(client: Redis): Promise<void> {
  if (client.status === "end") return;
  try {
    // QUIT lets in-flight replies arrive; it fails when not connected, so fall back to a hard disconnect.
    await client.quit();
  } catch {
    client.disconnect(false);
  }
}

interface MemoryEntry {
  /** A string for get/set/incrementBy keys; whatever a script's twin stores for its keys. */
  value: unknown;
  expiresAtMs: number;
}

/** Same wording as Redis for a key of another type. */
const WRONG_TYPE = "WRONGTYPE Operation against a key holding the wrong kind of value";

function stringValue(entry: MemoryEntry | undefined): string | undefined {
  if (entry === undefined) return undefined;
  if (typeof entry.value !== "string") throw new Error(WRONG_TYPE);
  return entry.value;
}

/** An in-process cache with Redis semantics, for tests and single-process runs. */
export function createMemoryCache(): Cache {
  const entries = new Map<string, MemoryEntry>();
  let closed = false;
  // performance.now() is monotonic, so wall-clock adjustments cannot resurrect or expire keys.
  const nowMs = () => performance.now();
  const sweepTimer = setInterval(() => sweepExpired(entries, nowMs()), MEMORY_SWEEP_INTERVAL_MS);
  sweepTimer.unref(); // the sweep alone must never keep the process alive

  function live(key: string): MemoryEntry | undefined {
    if (closed) throw new Error("cache is closed");
    const entry = entries.get(key);
    if (entry && entry.expiresAtMs <= nowMs()) {
      entries.delete(key);
      return undefined;
    }
    return entry;
  }

  const cache: Cache = {
    kind: "memory",
    async get(key) {
      return stringValue(live(key)) ?? null;
    },
    async set(key, value, { ttlMs, ifAbsent = false }) {
      assertTtlMs(ttlMs);
      if (ifAbsent && live(key)) return false;
      if (closed) throw new Error("cache is closed");
      entries.set(key, { value, expiresAtMs: nowMs() + ttlMs });
      return true;
    },
    async del(key) {
      if (closed) throw new Error("cache is closed");
      entries.delete(key);
    },
    async incrementBy(key, by, ttlMs) {
      assertIncrement(by);
      assertTtlMs(ttlMs);
      const entry = live(key) ?? { value: "0", expiresAtMs: nowMs() + ttlMs };
      const next = parseInteger(stringValue(entry) as string) + by;
      if (!Number.isSafeInteger(next)) throw new Error(NOT_AN_INTEGER);
      entries.set(key, { value: String(next), expiresAtMs: entry.expiresAtMs });
      return next;
    },
    takeToken: (key, options) => takeTokenWith(cache, key, options),
    async runScript(script, keys, args) {
      if (closed) throw new Error("cache is closed");
      // Synchronous, so nothing else touches the entries until it returns: atomic like Lua.
      const store: ScriptStore = {
        nowMs: Date.now(),
        get: (key) => live(key)?.value,
        set(key, value, ttlMs) {
          assertTtlMs(ttlMs);
          entries.set(key, { value, expiresAtMs: nowMs() + ttlMs });
        },
        expire(key, ttlMs) {
          assertTtlMs(ttlMs);
          const entry = live(key);
          if (entry) entry.expiresAtMs = nowMs() + ttlMs;
        },
        del: (key) => void entries.delete(key),
      };
      return script.memory(store, keys, args);
    },
    async ping() {
      if (closed) throw new Error("cache is closed");
    },
    async close() {
      closed = true;
      clearInterval(sweepTimer);
      entries.clear();
    },
  };
  return cache;
}

function parseInteger(value: string): number {
  // Redis only counts on canonical base-10 integers: " 1", "1.0" and "01" are errors.
  if (!/^(0|-?[1-9][0-9]*)$/.test(value)) throw new Error(NOT_AN_INTEGER);
  const parsed = Number(value);
  if (!Number.isSafeInteger(parsed)) throw new Error(NOT_AN_INTEGER);
  return parsed;
}

function sweepExpired(entries: Map<string, MemoryEntry>, nowMs: number): void {
  for (const [key, entry] of entries) {
    if (entry.expiresAtMs <= nowMs) entries.delete(key);
  }
}
