// The user's windows, failed streak and learned profile, kept in Redis (or the in-process cache)
// and changed only by scripts: one script run, one round trip, per evaluation, per outcome and per
// summary, so concurrent evaluations of one user never lose or double an update. Each script is
// written twice, in Lua and as its JavaScript twin for the in-memory cache; counters.test.ts runs
// one set of tests against both.
//
// Keys (under the cache's own prefix), with the tenant as a Redis Cluster hash tag so that one
// evaluation's keys share a slot, and the tenant id ending at "}" (ids cannot contain braces):
//   risk:{T}:e:<payment>               evaluation marker: what the evaluation saw (paymentMemoryMs)
//   risk:{T}:v:<user>                  sorted set of payment ids by time: the velocity window
//   risk:{T}:a:<user>:<CUR>            sorted set of "<amount>:<payment>" by time: amount window
//   risk:{T}:s:<user>:<CUR>            the sum of that set's amounts (exact int64)
//   risk:{T}:d:<user>:<CUR>:<amount>   sorted set of payment ids by time: duplicate window
//   risk:{T}:b:<user>                  set of beneficiaries paid successfully (180 days)
//   risk:{T}:f:<user>                  consecutive failed payments (30 days)
//   risk:{T}:p:<user>:<CUR>            hash: learned profile (180 days)
//   risk:{T}:c:<user>                  sorted set of currencies by last use (30 days)
//   risk:{T}:o:<payment>               recorded outcome, "1" or "0" (paymentMemoryMs)
// Time is the backend's clock (Redis TIME) unless a caller passes one (tests).
import type { Cache, CacheScript, ScriptReply, ScriptStore } from "../runtime/cache.js";
import { EWMA_ALPHA, ewmaStep, INTERVAL_FLOOR_SECONDS, intervalSample, type Observation, type Profile } from "./rules.js";

const DAY_MS = 86_400_000;
const STREAK_TTL_MS = 30 * DAY_MS;
const PROFILE_TTL_MS = 180 * DAY_MS;
const CURRENCIES_TTL_MS = 30 * DAY_MS;
const INT64_MAX = "9223372036854775807";

function base(tenantId: string): string {
  return `risk:{${tenantId}}`;
}

export interface Windows {
  velocityMs: number;
  amountMs: number;
  duplicateMs: number;
}

export interface CountRequest {
  tenantId: string;
  paymentId: string;
  userId: string;
  currency: string;
  amountMinor: bigint;
  beneficiaryId: string;
  windows: Windows;
  /** Overrides the backend's clock (tests). */
  nowMs?: number;
}

export type Counted =
  /** The first evaluation of the payment: it is now counted. */
  | { kind: "counted"; observation: Observation }
  /** Counted before: that evaluation's snapshot, and the payment as it was then. */
  | { kind: "replayed"; observation: Observation; earlier: { userId: string; currency: string; amountMinor: bigint; beneficiaryId: string } };

export interface OutcomeResult {
  kind: "recorded" | "replayed" | "user_mismatch";
  /** The outcome recorded for the payment (the earlier one on a replay). */
  succeeded: boolean;
  failedStreak: number;
  /** True when the profile and known beneficiaries learned from this outcome. */
  learned: boolean;
}

export interface CurrencySummary {
  currency: string;
  amountInWindowMinor: bigint;
  profile: Profile | undefined;
}

export interface UserSummary {
  paymentsInWindow: number;
  failedStreak: number;
  currencies: CurrencySummary[];
}

// ---------------------------------------------------------------------------------------------
// Snapshots: what the evaluation saw, as one string both twins write and one parser reads.

/** now|velocity|sum|repeats|known|streak|n|am|av|ni|im|iv|last (profile fields empty when none). */
function parseSnapshot(snapshot: string): Observation {
  const f = snapshot.split("|");
  const at = (index: number) => f[index] ?? "";
  return {
    nowMs: Number(at(0)),
    paymentsInWindow: Number(at(1)),
    amountInWindowMinor: BigInt(at(2)),
    sameAmountInWindow: Number(at(3)),
    beneficiaryKnown: at(4) === "1",
    failedStreak: Number(at(5)),
    profile: parseProfile(f.slice(6)),
  };
}

/** n, am, av, ni, im, iv, last as stored (strings), or undefined when the user has none. */
function parseProfile(fields: readonly (string | null | undefined)[]): Profile | undefined {
  const [n, am, av, ni, im, iv, last] = fields;
  if (!n) return undefined;
  return {
    samples: Number(n),
    amountMean: Number(am),
    amountVariance: Number(av),
    intervalSamples: Number(ni || 0),
    intervalMean: Number(im || 0),
    intervalVariance: Number(iv || 0),
    lastAtMs: Number(last),
  };
}

/** Lua: `now` in whole ms, from ARGV[1] when a caller gave one (tests), else Redis TIME. */
const LUA_NOW = `local now
if ARGV[1] ~= "" then now = tonumber(ARGV[1]) else
  local t = redis.call("TIME")
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`;

/** LUA_NOW's twin. */
function storedNow(store: ScriptStore, override: string | undefined): number {
  return override ? Number(override) : Math.floor(store.nowMs);
}

// ---------------------------------------------------------------------------------------------
// Evaluate: count the payment in every window and read what the rules need, once per payment.

const EVALUATE_LUA = `
local stored = redis.call("HMGET", KEYS[1], "snap", "u", "c", "a", "b")
if stored[1] then return {1, stored[1], stored[2], stored[3], stored[4], stored[5]} end
${LUA_NOW}local payment, amount = ARGV[2], ARGV[5]
local vwin, awin, dwin = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", now - vwin)
redis.call("ZADD", KEYS[2], now, payment)
redis.call("PEXPIRE", KEYS[2], vwin)
local velocity = redis.call("ZCARD", KEYS[2])
-- The sum key always holds the sum of the amount set's members.
if redis.call("EXISTS", KEYS[3]) == 0 then
  redis.call("DEL", KEYS[4])
elseif redis.call("EXISTS", KEYS[4]) == 0 then
  for _, member in ipairs(redis.call("ZRANGE", KEYS[3], 0, -1)) do
    redis.call("INCRBY", KEYS[4], string.match(member, "^(%d+):"))
  end
end
for _, member in ipairs(redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now - awin)) do
  redis.call("DECRBY", KEYS[4], string.match(member, "^(%d+):"))
end
redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", now - awin)
local sum
local added = redis.pcall("INCRBY", KEYS[4], amount)
if type(added) == "table" and added.err then
  sum = "${INT64_MAX}"
else
  redis.call("ZADD", KEYS[3], now, amount .. ":" .. payment)
  sum = redis.call("GET", KEYS[4])
end
redis.call("PEXPIRE", KEYS[3], awin)
redis.call("PEXPIRE", KEYS[4], awin)
redis.call("ZREMRANGEBYSCORE", KEYS[5], "-inf", now - dwin)
redis.call("ZADD", KEYS[5], now, payment)
redis.call("PEXPIRE", KEYS[5], dwin)
local repeats = redis.call("ZCARD", KEYS[5])
local known = 0
if ARGV[6] ~= "" then known = redis.call("SISMEMBER", KEYS[6], ARGV[6]) end
local streak = redis.call("GET", KEYS[7]) or "0"
local p = redis.call("HMGET", KEYS[8], "n", "am", "av", "ni", "im", "iv", "last")
redis.call("ZADD", KEYS[9], now, ARGV[4])
redis.call("ZREMRANGEBYSCORE", KEYS[9], "-inf", now - ${CURRENCIES_TTL_MS})
redis.call("PEXPIRE", KEYS[9], ${CURRENCIES_TTL_MS})
local snap = table.concat({string.format("%d", now), velocity, sum, repeats, known, streak,
  p[1] or "", p[2] or "", p[3] or "", p[4] or "", p[5] or "", p[6] or "", p[7] or ""}, "|")
redis.call("HSET", KEYS[1], "snap", snap, "u", ARGV[3], "c", ARGV[4], "a", amount, "b", ARGV[6], "at", string.format("%d", now))
redis.call("PEXPIRE", KEYS[1], ARGV[10])
return {0, snap}
`;

/** The twins' model of a Redis hash, sorted set and set. */
type Hash = Record<string, string>;
type SortedSet = Map<string, number>;

function trim(set: SortedSet | undefined, maxScore: number): void {
  if (!set) return;
  for (const [member, score] of set) if (score <= maxScore) set.delete(member);
}

/** The amount window in memory: the members and their sum together (one key, one TTL). */
interface AmountWindow {
  members: SortedSet;
  sumMinor: bigint;
}

function evaluateInMemory(store: ScriptStore, keys: readonly string[], args: readonly string[]): ScriptReply {
  const [marker, velocityKey, amountKey, , duplicateKey, beneficiariesKey, streakKey, profileKey, currenciesKey] = keys as string[];
  const [nowArg, payment, user, currency, amount, beneficiary, vwinArg, awinArg, dwinArg, markerTtl] = args as string[];
  const stored = store.get(marker as string) as Hash | undefined;
  if (stored?.snap) return [1, stored.snap, stored.u ?? "", stored.c ?? "", stored.a ?? "", stored.b ?? ""];
  const now = storedNow(store, nowArg);
  const [vwin, awin, dwin] = [Number(vwinArg), Number(awinArg), Number(dwinArg)];

  const velocity = (store.get(velocityKey as string) as SortedSet | undefined) ?? new Map();
  trim(velocity, now - vwin);
  velocity.set(payment as string, now);
  store.set(velocityKey as string, velocity, vwin);

  const window = (store.get(amountKey as string) as AmountWindow | undefined) ?? { members: new Map(), sumMinor: 0n };
  for (const [member, score] of window.members) {
    if (score > now - awin) continue;
    window.members.delete(member);
    window.sumMinor -= BigInt(member.slice(0, member.indexOf(":")));
  }
  let sum: string;
  if (window.sumMinor + BigInt(amount as string) > BigInt(INT64_MAX)) {
    sum = INT64_MAX;
  } else {
    window.sumMinor += BigInt(amount as string);
    window.members.set(`${amount}:${payment}`, now);
    sum = String(window.sumMinor);
  }
  store.set(amountKey as string, window, awin);

  const duplicates = (store.get(duplicateKey as string) as SortedSet | undefined) ?? new Map();
  trim(duplicates, now - dwin);
  duplicates.set(payment as string, now);
  store.set(duplicateKey as string, duplicates, dwin);

  const known = beneficiary !== "" && ((store.get(beneficiariesKey as string) as Set<string> | undefined)?.has(beneficiary as string) ?? false);
  const streak = (store.get(streakKey as string) as string | undefined) ?? "0";
  const p = (store.get(profileKey as string) as Hash | undefined) ?? {};
  const currencies = (store.get(currenciesKey as string) as SortedSet | undefined) ?? new Map();
  currencies.set(currency as string, now);
  trim(currencies, now - CURRENCIES_TTL_MS);
  store.set(currenciesKey as string, currencies, CURRENCIES_TTL_MS);

  const snap = [now, velocity.size, sum, duplicates.size, known ? 1 : 0, streak,
    p.n ?? "", p.am ?? "", p.av ?? "", p.ni ?? "", p.im ?? "", p.iv ?? "", p.last ?? ""].join("|");
  store.set(marker as string, { snap, u: user as string, c: currency as string, a: amount as string, b: beneficiary as string, at: String(now) } satisfies Hash, Number(markerTtl));
  return [0, snap];
}

const EVALUATE: CacheScript = { name: "riskEvaluate", lua: EVALUATE_LUA, memory: evaluateInMemory };

// ---------------------------------------------------------------------------------------------
// Outcomes: the streak, and on success the profile and the known beneficiaries.

const OUTCOME_LUA = `
local previous = redis.call("GET", KEYS[1])
if previous then return {"replayed", previous, redis.call("GET", KEYS[3]) or "0", 0} end
local m = redis.call("HMGET", KEYS[2], "u", "c", "a", "b", "at")
if m[1] and m[1] ~= ARGV[1] then return {"user_mismatch", m[1], "0", 0} end
redis.call("SET", KEYS[1], ARGV[2], "PX", ARGV[3])
if ARGV[2] == "0" then
  local streak = redis.call("INCR", KEYS[3])
  redis.call("PEXPIRE", KEYS[3], ${STREAK_TTL_MS})
  return {"recorded", "0", tostring(streak), 0}
end
redis.call("SET", KEYS[3], "0", "PX", ${STREAK_TTL_MS})
if not m[1] then return {"recorded", "1", "0", 0} end
local key = KEYS[4] .. m[2]
local p = redis.call("HMGET", key, "n", "am", "av", "ni", "im", "iv", "last")
local alpha = tonumber(ARGV[4])
-- rules.ewmaStep, the same arithmetic in the same order, so both backends learn identical figures.
local function ewma(count, mean, variance, sample)
  if count == 0 then return sample, 0 end
  local d = sample - mean
  local inc = alpha * d
  return mean + inc, (1 - alpha) * (variance + d * inc)
end
local at = tonumber(m[5])
local n = tonumber(p[1] or "0")
local am, av = ewma(n, tonumber(p[2] or "0"), tonumber(p[3] or "0"), tonumber(m[3]))
local ni, im, iv = tonumber(p[4] or "0"), tonumber(p[5] or "0"), tonumber(p[6] or "0")
local last = at
if p[7] then
  last = tonumber(p[7])
  if at > last then
    im, iv = ewma(ni, im, iv, math.log(math.max((at - last) / 1000, ${INTERVAL_FLOOR_SECONDS})))
    ni = ni + 1
    last = at
  end
end
local f = "%.17g"
redis.call("HSET", key, "n", n + 1, "am", string.format(f, am), "av", string.format(f, av), "ni", ni,
  "im", string.format(f, im), "iv", string.format(f, iv), "last", string.format("%d", last))
redis.call("PEXPIRE", key, ${PROFILE_TTL_MS})
if m[4] ~= "" then
  redis.call("SADD", KEYS[5], m[4])
  redis.call("PEXPIRE", KEYS[5], ${PROFILE_TTL_MS})
end
return {"recorded", "1", "0", 1}
`;

function outcomeInMemory(store: ScriptStore, keys: readonly string[], args: readonly string[]): ScriptReply {
  const [outcomeKey, markerKey, streakKey, profileBase, beneficiariesKey] = keys as string[];
  const [user, succeeded, outcomeTtl, alphaArg] = args as string[];
  const previous = store.get(outcomeKey as string) as string | undefined;
  if (previous !== undefined) return ["replayed", previous, (store.get(streakKey as string) as string | undefined) ?? "0", 0];
  const marker = store.get(markerKey as string) as Hash | undefined;
  if (marker && marker.u !== user) return ["user_mismatch", marker.u ?? "", "0", 0];
  store.set(outcomeKey as string, succeeded, Number(outcomeTtl));
  if (succeeded === "0") {
    const streak = Number((store.get(streakKey as string) as string | undefined) ?? "0") + 1;
    store.set(streakKey as string, String(streak), STREAK_TTL_MS);
    return ["recorded", "0", String(streak), 0];
  }
  store.set(streakKey as string, "0", STREAK_TTL_MS);
  if (!marker) return ["recorded", "1", "0", 0];
  const key = `${profileBase}${marker.c}`;
  const p = (store.get(key) as Hash | undefined) ?? {};
  const alpha = Number(alphaArg);
  const at = Number(marker.at);
  const n = Number(p.n ?? "0");
  const amount = ewmaStep(n === 0 ? undefined : { mean: Number(p.am), variance: Number(p.av) }, Number(marker.a), alpha);
  let ni = Number(p.ni ?? "0");
  let interval = { mean: Number(p.im ?? "0"), variance: Number(p.iv ?? "0") };
  let last = at;
  if (p.last !== undefined) {
    last = Number(p.last);
    if (at > last) {
      interval = ewmaStep(ni === 0 ? undefined : interval, intervalSample(last, at), alpha);
      ni += 1;
      last = at;
    }
  }
  store.set(key, {
    n: String(n + 1), am: String(amount.mean), av: String(amount.variance),
    ni: String(ni), im: String(interval.mean), iv: String(interval.variance), last: String(last),
  } satisfies Hash, PROFILE_TTL_MS);
  if (marker.b) {
    const known = (store.get(beneficiariesKey as string) as Set<string> | undefined) ?? new Set<string>();
    known.add(marker.b);
    store.set(beneficiariesKey as string, known, PROFILE_TTL_MS);
  }
  return ["recorded", "1", "0", 1];
}

const OUTCOME: CacheScript = { name: "riskOutcome", lua: OUTCOME_LUA, memory: outcomeInMemory };

// ---------------------------------------------------------------------------------------------
// Summary: read-only; expired members are left out without being removed.

const SUMMARY_LUA = `
${LUA_NOW}local vwin, awin = tonumber(ARGV[2]), tonumber(ARGV[3])
local velocity = redis.call("ZCOUNT", KEYS[1], "(" .. string.format("%d", now - vwin), "+inf")
local streak = redis.call("GET", KEYS[2]) or "0"
local result = {velocity, streak}
for _, currency in ipairs(redis.call("ZRANGEBYSCORE", KEYS[3], "(" .. string.format("%d", now - ${CURRENCIES_TTL_MS}), "+inf")) do
  local sum = 0
  local stored = redis.call("GET", KEYS[5] .. currency)
  if stored and redis.call("EXISTS", KEYS[4] .. currency) == 1 then
    sum = tonumber(stored)
    for _, member in ipairs(redis.call("ZRANGEBYSCORE", KEYS[4] .. currency, "-inf", now - awin)) do
      sum = sum - tonumber(string.match(member, "^(%d+):"))
    end
  end
  local p = redis.call("HMGET", KEYS[6] .. currency, "n", "am", "av", "ni", "im", "iv", "last")
  table.insert(result, {currency, string.format("%d", sum), p[1] or "", p[2] or "", p[3] or "", p[4] or "", p[5] or "", p[6] or "", p[7] or ""})
end
return result
`;

function summaryInMemory(store: ScriptStore, keys: readonly string[], args: readonly string[]): ScriptReply {
  const [velocityKey, streakKey, currenciesKey, amountBase, , profileBase] = keys as string[];
  const now = storedNow(store, args[0]);
  const [vwin, awin] = [Number(args[1]), Number(args[2])];
  const count = (set: SortedSet | undefined, above: number) => [...(set?.values() ?? [])].filter((score) => score > above).length;
  const result: ScriptReply[] = [count(store.get(velocityKey as string) as SortedSet | undefined, now - vwin), (store.get(streakKey as string) as string | undefined) ?? "0"];
  const currencies = (store.get(currenciesKey as string) as SortedSet | undefined) ?? new Map<string, number>();
  for (const [currency, score] of [...currencies].sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1))) {
    if (score <= now - CURRENCIES_TTL_MS) continue;
    const window = store.get(`${amountBase}${currency}`) as AmountWindow | undefined;
    let sum = 0n;
    for (const [member, at] of window?.members ?? []) if (at > now - awin) sum += BigInt(member.slice(0, member.indexOf(":")));
    const p = (store.get(`${profileBase}${currency}`) as Hash | undefined) ?? {};
    result.push([currency, String(sum), p.n ?? "", p.am ?? "", p.av ?? "", p.ni ?? "", p.im ?? "", p.iv ?? "", p.last ?? ""]);
  }
  return result;
}

const SUMMARY: CacheScript = { name: "riskSummary", lua: SUMMARY_LUA, memory: summaryInMemory };

// ---------------------------------------------------------------------------------------------

/** Risk's counters over a cache (Redis or in-process). */
export class Counters {
  constructor(
    private readonly cache: Cache,
    /**
     * How long an evaluated payment is remembered: retries within it replay, and its outcome
     * teaches the profile. About 300 bytes of Redis per payment for that long.
     */
    private readonly paymentMemoryMs: number,
  ) {}

  /** Counts the payment in the user's windows and reads what the rules need, atomically; once per payment. */
  async count(request: CountRequest): Promise<Counted> {
    const { tenantId: t, userId: user, currency, paymentId } = request;
    const amount = String(request.amountMinor);
    const k = base(t);
    const reply = (await this.cache.runScript(
      EVALUATE,
      [
        `${k}:e:${paymentId}`, `${k}:v:${user}`, `${k}:a:${user}:${currency}`, `${k}:s:${user}:${currency}`,
        `${k}:d:${user}:${currency}:${amount}`, `${k}:b:${user}`, `${k}:f:${user}`, `${k}:p:${user}:${currency}`, `${k}:c:${user}`,
      ],
      [
        request.nowMs === undefined ? "" : String(request.nowMs), paymentId, user, currency, amount, request.beneficiaryId,
        String(request.windows.velocityMs), String(request.windows.amountMs), String(request.windows.duplicateMs), String(this.paymentMemoryMs),
      ],
    )) as [number, string, string?, string?, string?, string?];
    const [replayed, snapshot, userId = "", earlierCurrency = "", amountMinor = "0", beneficiaryId = ""] = reply;
    const observation = parseSnapshot(snapshot);
    if (replayed !== 1) return { kind: "counted", observation };
    return { kind: "replayed", observation, earlier: { userId, currency: earlierCurrency, amountMinor: BigInt(amountMinor), beneficiaryId } };
  }

  /** Records how a payment ended, once per payment. */
  async recordOutcome(tenantId: string, paymentId: string, userId: string, succeeded: boolean): Promise<OutcomeResult> {
    const k = base(tenantId);
    const [kind, outcome, streak, learned] = (await this.cache.runScript(
      OUTCOME,
      [`${k}:o:${paymentId}`, `${k}:e:${paymentId}`, `${k}:f:${userId}`, `${k}:p:${userId}:`, `${k}:b:${userId}`],
      [userId, succeeded ? "1" : "0", String(this.paymentMemoryMs), String(EWMA_ALPHA)],
    )) as [OutcomeResult["kind"], string, string, number];
    return { kind, succeeded: outcome === "1", failedStreak: Number(streak), learned: learned === 1 };
  }

  /** What the windows hold for a user now, without changing anything. */
  async summary(tenantId: string, userId: string, windows: Pick<Windows, "velocityMs" | "amountMs">, nowMs?: number): Promise<UserSummary> {
    const k = base(tenantId);
    const reply = (await this.cache.runScript(
      SUMMARY,
      [`${k}:v:${userId}`, `${k}:f:${userId}`, `${k}:c:${userId}`, `${k}:a:${userId}:`, `${k}:s:${userId}:`, `${k}:p:${userId}:`],
      [nowMs === undefined ? "" : String(nowMs), String(windows.velocityMs), String(windows.amountMs)],
    )) as [number, string, ...string[][]];
    const [velocity, streak, ...currencies] = reply;
    return {
      paymentsInWindow: Number(velocity),
      failedStreak: Number(streak),
      currencies: currencies.map(([currency, sum, ...profile]) => ({
        currency: currency as string,
        amountInWindowMinor: BigInt(sum as string),
        profile: parseProfile(profile),
      })),
    };
  }
}
