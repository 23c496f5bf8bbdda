// `npm run db:generate [-- <service>...] [-- --name <what_changed>]`: after a change to a
// service's `schema.ts`, writes the drizzle-kit migration that brings its tables there into
// `services/<service>/migrations/` (each service applies its own at start-up). Without service
// names, every service with a `drizzle.config.ts`; a service whose tables already match says
// "No schema changes". Flags (--name, --custom) go to drizzle-kit as they are.
// scripts/contracts.test.ts checks that the committed migrations are what the schemas say.
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import * as path from "node:path";
import { pathToFileURL } from "node:url";

const ROOT = path.resolve(import.meta.dirname, "..");
export const DRIZZLE_KIT = path.join(ROOT, "node_modules/.bin/drizzle-kit");

/** Services that own tables: a folder under services/ with a drizzle.config.ts. */
export function servicesWithSchemas(): string[] {
  const services = path.join(ROOT, "services");
  return readdirSync(services, { withFileTypes: true })
    .filter((entry) => entry.isDirectory() && existsSync(path.join(services, entry.name, "drizzle.config.ts")))
    .map((entry) => entry.name)
    .sort();
}

function main(argv: string[]): void {
  const known = servicesWithSchemas();
  const firstFlag = argv.findIndex((arg) => arg.startsWith("-"));
  const named = firstFlag === -1 ? argv : argv.slice(0, firstFlag);
  const flags = firstFlag === -1 ? [] : argv.slice(firstFlag);
  const unknown = named.filter((name) => !known.includes(name));
  if (unknown.length > 0) {
    console.error(`db:generate: no service ${unknown.join(", ")} with a drizzle.config.ts; there are ${known.join(", ")}`);
    process.exit(2);
  }
  for (const service of named.length > 0 ? named : known) {
    console.log(`== ${service}`);
    execFileSync(DRIZZLE_KIT, ["generate", "--config", `services/${service}/drizzle.config.ts`, ...flags], { cwd: ROOT, stdio: "inherit" });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) main(process.argv.slice(2));
