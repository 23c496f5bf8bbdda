// The contracts are the product's public face: they must lint, the committed generated code
// must be exactly what the protos generate, the committed migrations exactly what the schemas
// say, and the configuration must read the same everywhere.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cp, mkdtemp, readFile, readdir, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { VARIABLES } from "../services/runtime/config.js";
import { DRIZZLE_KIT, servicesWithSchemas } from "./db-generate.js";

const root = path.resolve(import.meta.dirname, "..");
const buf = path.join(root, "node_modules/.bin/buf");
const run = promisify(execFile);
const pathWithBin = `${path.join(root, "node_modules/.bin")}${path.delimiter}${process.env.PATH}`;

async function filesUnder(folder: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const entry of await readdir(folder, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    out.set(path.relative(folder, full), await readFile(full, "utf8"));
  }
  return out;
}

describe("proto contracts", () => {
  it("pass buf lint (STANDARD)", async () => {
    await run(buf, ["lint"], { cwd: root, env: { ...process.env, PATH: pathWithBin } });
  });

  it("match the committed gen/ exactly", async () => {
    const scratch = await mkdtemp(path.join(tmpdir(), "cowrie-gen-"));
    try {
      await cp(path.join(root, "proto"), path.join(scratch, "proto"), { recursive: true });
      await cp(path.join(root, "buf.yaml"), path.join(scratch, "buf.yaml"));
      await cp(path.join(root, "buf.gen.yaml"), path.join(scratch, "buf.gen.yaml"));
      await symlink(path.join(root, "node_modules"), path.join(scratch, "node_modules"));
      await run(buf, ["generate"], { cwd: scratch, env: { ...process.env, PATH: pathWithBin } });
      const fresh = await filesUnder(path.join(scratch, "gen"));
      const committed = await filesUnder(path.join(root, "gen"));
      assert.deepEqual([...committed.keys()].sort(), [...fresh.keys()].sort(), "gen/ has different files: run npm run generate");
      for (const [file, content] of fresh) {
        assert.equal(committed.get(file), content, `gen/${file} is stale: run npm run generate`);
      }
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  });

  it("never carry money as a float", async () => {
    for (const [file, content] of await filesUnder(path.join(root, "proto/cowrie"))) {
      assert.doesNotMatch(content, /^\s*(double|float)\s/m, `proto/cowrie/${file} declares a float field`);
    }
  });
});

describe("configuration", () => {
  const names = new Set(Object.values(VARIABLES).map((variable) => variable.name));

  it("docker-compose.yml sets only variables the code reads", async () => {
    const compose = await readFile(path.join(root, "docker-compose.yml"), "utf8");
    const used = [...compose.matchAll(/^\s+((?:COWRIE|DATABASE|REDIS|AMQP)_[A-Z_]*):/gm)].map((match) => match[1]);
    assert.ok(used.length > 0, "compose sets no Cowrie variables");
    for (const name of used) assert.ok(names.has(name as string), `docker-compose.yml sets ${name}, which the code does not read`);
  });

  it("the README documents every variable", async () => {
    const readme = await readFile(path.join(root, "README.md"), "utf8");
    for (const name of names) assert.match(readme, new RegExp(`\\| \`${name}\` \\|`), `README.md lacks ${name}`);
  });
});

describe("database schemas", () => {
  for (const service of servicesWithSchemas()) {
    it(`${service}: the committed migrations are what schema.ts says (drizzle-kit has nothing to generate)`, async () => {
      const committed = path.join(root, "services", service, "migrations");
      const scratch = await mkdtemp(path.join(tmpdir(), `cowrie-${service}-migrations-`));
      try {
        await cp(committed, scratch, { recursive: true });
        // drizzle-kit takes --out as relative (it prefixes "./"), and exits 0 even when it fails.
        const { stdout } = await run(DRIZZLE_KIT, ["generate", "--dialect", "postgresql", "--schema", `services/${service}/schema.ts`, "--out", path.relative(root, scratch)], { cwd: root });
        const hint = `schema.ts and migrations/ differ: npm run db:generate -- ${service} --name <what_changed>`;
        assert.match(stdout, /No schema changes, nothing to migrate/, `${hint}\n${stdout}`);
        assert.deepEqual(await filesUnder(scratch), await filesUnder(committed), hint);
      } finally {
        await rm(scratch, { recursive: true, force: true });
      }
    });
  }
});
