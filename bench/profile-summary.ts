// `node --import tsx bench/profile-summary.ts <dir> [window] [top]`: where the CPU went in the
// services during one window of `npm run bench`, from the V8 profiles that BENCH_CPU_PROF=<dir>
// makes (<dir>/<service>/*.cpuprofile, one per thread: the main thread and tsx's loader) and <dir>/windows.json (window = "closed" by default, or "open",
// or "all" for the whole process lifetime).
//
// Per service: sampled CPU in the window split by where it was spent (self time): this project's
// code by file, each npm package, Node internals by module, garbage collection and "(program)"
// (native work V8 does not attribute to a JS function: syscalls, HTTP/2 framing in C++...); the
// `top` (default 15) functions by self time; and inclusive time of the project's own functions
// (what they cost with everything they call). Divided by the calls completed in the window
// (windows.json "calls"), each figure is CPU ms per call. Project functions are named by their
// source line, through tsx's source maps (see sourceMapsOfTsxCache).
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { SourceMapConsumer, type RawSourceMap } from "source-map";

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const [dirArg, windowArg = "closed", topArg = "15"] = process.argv.slice(2);
if (!dirArg) {
  console.error("usage: node --import tsx bench/profile-summary.ts <dir> [closed|open|all] [top]");
  process.exit(2);
}
const dir = path.resolve(dirArg);
const windows = JSON.parse(readFileSync(path.join(dir, "windows.json"), "utf8")) as Record<string, unknown> & { calls?: number };
const window = windowArg === "all" ? undefined : (windows[windowArg] as { startUs: number; endUs: number } | undefined);
if (windowArg !== "all" && !window) {
  console.error(`profile-summary: no window '${windowArg}' in ${dir}/windows.json`);
  process.exit(2);
}
const calls = windowArg === "closed" && typeof windows.calls === "number" ? windows.calls : undefined;
const TOP = Number(topArg);

/** Where a frame belongs: project file, npm package, Node internal module, or a V8 pseudo-frame. */
function bucketOf(frame: CallFrame): string {
  const { url, functionName } = frame;
  if (url === "") return functionName || "(anonymous native)";
  const match = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (match) return `npm ${match[1]}`;
  if (url.startsWith("node:")) return `node ${url.slice(5).replace(/^internal\//, "")}`;
  const project = /\/work\/[^/]+\/(.+)$/.exec(url.replace(/^file:\/\//, ""));
  return project ? `src ${project[1]}` : url;
}

/**
 * tsx runs the services from its transform cache (<tmpdir>/tsx-<uid>: one JSON file per module
 * with the transformed code and its source map), minified, so V8's line numbers are not the
 * source's and anonymous functions cannot be told apart. Each file's newest map, when it is newer
 * than the file, turns positions back into source lines; a file edited since its last transform,
 * or not in the cache, keeps V8's line, marked "~".
 */
function sourceMapsOfTsxCache(): Map<string, SourceMapConsumer> {
  const newest = new Map<string, { atMs: number; map: RawSourceMap }>();
  const cache = path.join(tmpdir(), `tsx-${process.getuid?.() ?? ""}`);
  if (!existsSync(cache)) return new Map();
  for (const file of readdirSync(cache)) {
    try {
      const full = path.join(cache, file);
      const { map } = JSON.parse(readFileSync(full, "utf8")) as { map?: RawSourceMap | string };
      const raw = typeof map === "string" ? (JSON.parse(map) as RawSourceMap) : map;
      const source = raw?.sources[0];
      const atMs = statSync(full).mtimeMs;
      if (!raw || !source || (newest.get(source)?.atMs ?? -1) > atMs) continue;
      newest.set(source, { atMs, map: raw });
    } catch {
      // Not a transform (tsx keeps other files there too), or unreadable: that module keeps V8's lines.
    }
  }
  const consumers = new Map<string, SourceMapConsumer>();
  for (const [source, { atMs, map }] of newest) {
    if (existsSync(source) && statSync(source).mtimeMs <= atMs) consumers.set(source, new SourceMapConsumer(map));
  }
  return consumers;
}

const sourceMaps = sourceMapsOfTsxCache();

function label(frame: CallFrame): string {
  const file = frame.url.replace(/^file:\/\//, "");
  const where = file.replace(/^.*node_modules\//, "").replace(/^\/work\/[^/]+\//, "");
  if (frame.lineNumber < 0) return `${frame.functionName || "(anonymous)"} ${where}`;
  // Only the project's files run through tsx; packages and Node's own keep V8's line.
  const project = file.startsWith("/") && !file.includes("node_modules/");
  const original = project ? sourceMaps.get(file)?.originalPositionFor({ line: frame.lineNumber + 1, column: frame.columnNumber }).line : undefined;
  const line = !project ? frame.lineNumber + 1 : (original ?? `~${frame.lineNumber + 1}`);
  return `${frame.functionName || "(anonymous)"} ${where}:${line}`;
}

/** Coarse groups of the buckets, to see at a glance what a call pays for. */
function groupOf(bucket: string): string {
  if (/^npm @(connectrpc|bufbuild)\//.test(bucket) || /^node (http2|deps\/undici|url|internal\/url|buffer|encoding)/.test(bucket)) return "RPC: Connect, Protobuf, HTTP/2, Headers";
  if (/^npm (drizzle-orm|postgres)$/.test(bucket)) return "database: drizzle-orm, postgres.js";
  if (/^npm (ioredis|redis-parser|cockatiel|pino|prom-client)/.test(bucket)) return "Redis, breaker, logs, metrics";
  if (/^node (async_hooks|abort_controller|per_context\/domexception|event_target|events|timers|process\/task_queues)/.test(bucket) || bucket === "runMicrotasks") {
    return "async context, promises, AbortSignals, timers";
  }
  if (/^(writeBuffer|writeUtf8String|writev|writeLatin1String|writeAsciiString)$/.test(bucket) || /^node (stream|net|streams|stream_base_commons)/.test(bucket)) return "sockets: writes and streams";
  if (bucket === "(garbage collector)") return "garbage collection";
  if (bucket === "(program)") return "(program): native, unattributed";
  if (bucket.startsWith("src ")) return "project code (services/)";
  return "other";
}

const table = (rows: [string, number][], totalUs: number, limit: number): string[] =>
  rows.slice(0, limit).map(([name, us]) =>
    `    ${(us / 1000).toFixed(0).padStart(7)} ms ${((us / totalUs) * 100).toFixed(1).padStart(5)}%` +
    `${calls ? `  ${(us / 1000 / calls).toFixed(3).padStart(7)} ms/call` : ""}  ${name}`);

const services = readdirSync(dir, { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => entry.name).sort();
for (const service of services) {
  const profiles = readdirSync(path.join(dir, service))
    .filter((file) => file.endsWith(".cpuprofile"))
    .map((file) => JSON.parse(readFileSync(path.join(dir, service, file), "utf8")) as Profile);
  const selfUs = new Map<string, number>();
  const buckets = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  let seconds = 0;
  for (const profile of profiles) {
    const byId = new Map(profile.nodes.map((node) => [node.id, node]));
    const parent = new Map<number, number>();
    for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
    seconds = Math.max(seconds, window ? (window.endUs - window.startUs) / 1e6 : (profile.endTime - profile.startTime) / 1e6);
    let at = profile.startTime;
    for (let index = 0; index < profile.samples.length; index++) {
      const delta = profile.timeDeltas[index] ?? 0;
      at += delta;
      if (window && (at < window.startUs || at > window.endUs)) continue;
      const id = profile.samples[index] as number;
      // A sample's weight is the interval until the next one.
      const weight = profile.timeDeltas[index + 1] ?? delta;
      const node = byId.get(id) as ProfileNode;
      if (node.callFrame.functionName === "(idle)") {
        idleUs += weight;
        continue;
      }
      totalUs += weight;
      const name = label(node.callFrame);
      selfUs.set(name, (selfUs.get(name) ?? 0) + weight);
      const bucket = bucketOf(node.callFrame);
      buckets.set(bucket, (buckets.get(bucket) ?? 0) + weight);
      // Inclusive time of project functions: each distinct frame on the stack once.
      const seen = new Set<string>();
      for (let cursor: number | undefined = id; cursor !== undefined; cursor = parent.get(cursor)) {
        const frame = (byId.get(cursor) as ProfileNode).callFrame;
        if (!bucketOf(frame).startsWith("src ")) continue;
        const frameName = label(frame);
        if (seen.has(frameName)) continue;
        seen.add(frameName);
        inclusive.set(frameName, (inclusive.get(frameName) ?? 0) + weight);
      }
    }
  }
  const sorted = (map: Map<string, number>) => [...map.entries()].sort((a, b) => b[1] - a[1]);
  console.log(`\n${service}: ${(totalUs / 1000).toFixed(0)} ms of JavaScript threads in ${seconds.toFixed(1)} s ` +
    `(${((totalUs / 1e6 / Math.max(seconds, 1e-9)) * 100).toFixed(0)}% of a core; idle ${(idleUs / 1000).toFixed(0)} ms; ${profiles.length} thread profile(s))` +
    `${calls ? `, ${(totalUs / 1000 / calls).toFixed(2)} ms per call over ${calls} calls` : ""}`);
  const groups = new Map<string, number>();
  for (const [bucket, us] of buckets) groups.set(groupOf(bucket), (groups.get(groupOf(bucket)) ?? 0) + us);
  console.log("  self time by group:");
  for (const line of table(sorted(groups), totalUs, TOP)) console.log(line);
  console.log("  self time by where:");
  for (const line of table(sorted(buckets), totalUs, TOP)) console.log(line);
  console.log("  top functions (self):");
  for (const line of table(sorted(selfUs), totalUs, TOP)) console.log(line);
  console.log("  project functions (inclusive):");
  for (const line of table(sorted(inclusive), totalUs, TOP)) console.log(line);
}
