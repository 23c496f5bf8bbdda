// `npm start` (every service) or `npm run service -- ledger wallet` (some of them): loads the
// configuration, starts the services, prints their endpoints, and stops cleanly on SIGINT/SIGTERM.
import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { ConfigError, SERVICE_NAMES, loadConfig, usesGatewaySimulator, type Config, type ServiceName } from "./runtime/config.js";
import { createLogger } from "./runtime/log.js";
import { startMesh } from "./mesh.js";

function fail(message: string): never {
  process.stderr.write(`cowrie: ${message}\n`);
  process.exit(2);
}

function serviceNames(args: string[]): ServiceName[] {
  if (args.length === 0) return [...SERVICE_NAMES];
  for (const arg of args) {
    if (!(SERVICE_NAMES as readonly string[]).includes(arg)) {
      fail(`unknown service '${arg}': expected one or more of ${SERVICE_NAMES.join(", ")}`);
    }
  }
  return args as ServiceName[];
}

function describeBackends(config: Config): string {
  const database = config.databaseUrl ? "PostgreSQL (DATABASE_URL)" : `embedded PGlite in ${config.dataDir}/pglite`;
  const cache = config.redisUrl ? "Redis (REDIS_URL)" : "in-process cache";
  const broker = config.amqpUrl ? "RabbitMQ (AMQP_URL)" : "in-process broker";
  return `${database}; ${cache}; ${broker}`;
}

/**
 * The payment gateway simulator, as its own process (it stands in for systems outside Cowrie),
 * started when the Router runs here and no gateway URL is configured.
 */
function startSimulator(config: Config): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./simulator/main.ts", import.meta.url))], {
    stdio: ["ignore", "inherit", "inherit"],
    env: process.env,
  });
  child.on("exit", (code, signal) => {
    if (!stopping) process.stderr.write(`cowrie: gateway simulator on port ${config.simulatorPort} exited (${signal ?? code}); gateway payments will wait for it\n`);
  });
  // The simulator must not outlive the mesh, whatever way this process ends.
  process.on("exit", () => child.kill("SIGTERM"));
  return child;
}

let stopping = false;

async function main(): Promise<void> {
  const names = serviceNames(process.argv.slice(2));
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) fail(`configuration error: ${error.message}`);
    throw error;
  }
  const log = createLogger(config.logLevel);
  const startedAtMs = Date.now();
  const simulator = names.includes("router") && usesGatewaySimulator(config) ? startSimulator(config) : undefined;
  const mesh = await startMesh(config, names, log);
  const lines = mesh.services.map((service) => `  ${service.name.padEnd(7)} http://${config.host}:${service.port}`);
  process.stderr.write(
    `cowrie: ${mesh.services.length} service(s) up in ${Date.now() - startedAtMs} ms on ${describeBackends(config)}\n` +
      `${lines.join("\n")}\n` +
      (simulator ? `  gateway simulator http://${config.host}:${config.simulatorPort} (Paystack, Flutterwave, Stripe; scripted through /_sim)\n` : "") +
      // The Edge when it runs here, else the first service started: a port that answers.
      `cowrie: try  npx buf curl --protocol grpc --http2-prior-knowledge --list-services http://${config.host}:${(mesh.services.find((service) => service.name === "edge") ?? mesh.services[0])?.port}\n`,
  );

  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`cowrie: ${signal} again, exiting now\n`);
      process.exit(130);
    }
    stopping = true;
    process.stderr.write(`cowrie: ${signal} received, stopping (again to force)\n`);
    simulator?.kill("SIGTERM");
    mesh.close().then(
      () => process.exit(0),
      (error: unknown) => {
        log.error({ err: error }, "shutdown failed");
        process.exit(1);
      },
    );
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

main().catch((error: unknown) => {
  process.stderr.write(`cowrie: failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
