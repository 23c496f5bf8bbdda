// `npm test`: type-check, then every *.test.ts file through Node's test runner (contracts, unit,
// integration against the real PostgreSQL, Redis and RabbitMQ, and the end-to-end mesh).
// Node 20's runner does not expand globs, so the files are listed here.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import * as path from "node:path";

const root = path.resolve(import.meta.dirname, "..");

function testFiles(folder: string): string[] {
  return readdirSync(folder).flatMap((entry) => {
    const full = path.join(folder, entry);
    if (entry === "node_modules" || entry.startsWith(".")) return [];
    if (statSync(full).isDirectory()) return testFiles(full);
    return entry.endsWith(".test.ts") ? [path.relative(root, full)] : [];
  });
}

function run(command: string, args: string[]): void {
  const result = spawnSync(command, args, { cwd: root, stdio: "inherit" });
  if (result.status !== 0) process.exit(result.status ?? 1);
}

const only = process.argv.slice(2);
const files = [...testFiles(path.join(root, "scripts")), ...testFiles(path.join(root, "services"))]
  .filter((file) => only.length === 0 || only.some((filter) => file.includes(filter)))
  .sort();

if (only.length === 0) {
  process.stdout.write("typecheck: tsc --noEmit\n");
  run(process.execPath, [path.join(root, "node_modules/typescript/bin/tsc"), "--noEmit", "-p", "tsconfig.json"]);
}
process.stdout.write(`running ${files.length} test files\n`);
run(process.execPath, ["--import", "tsx", "--test", "--test-reporter=spec", ...files]);
