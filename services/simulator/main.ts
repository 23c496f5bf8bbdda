// `npm run simulator`: the payment gateway simulator as its own process, on COWRIE_HOST and
// COWRIE_SIMULATOR_PORT, accepting the gateway secrets Cowrie is configured with. Stops on
// SIGTERM or SIGINT.
import { ConfigError, gatewayConfig, loadConfig, type Config } from "../runtime/config.js";
import { createLogger, errorText } from "../runtime/log.js";
import { startSimulator } from "./simulator.js";

function fail(message: string, code: number): never {
  process.stderr.write(`cowrie-simulator: ${message}\n`);
  process.exit(code);
}

async function main(): Promise<void> {
  let config: Config;
  try {
    config = loadConfig(process.env);
  } catch (error) {
    if (error instanceof ConfigError) fail(`configuration error: ${error.message}`, 2);
    throw error;
  }
  const simulator = await startSimulator({
    host: config.host,
    port: config.simulatorPort,
    secrets: {
      paystack: gatewayConfig(config, "paystack"),
      flutterwave: gatewayConfig(config, "flutterwave"),
      stripe: gatewayConfig(config, "stripe"),
    },
    log: createLogger(config.logLevel),
  });
  process.stderr.write(`cowrie-simulator: listening on ${simulator.url} (/paystack, /flutterwave, /stripe; control at /_sim)\n`);

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) process.exit(130);
    stopping = true;
    process.stderr.write(`cowrie-simulator: ${signal} received, stopping\n`);
    simulator.close().then(
      () => process.exit(0),
      (error: unknown) => fail(`shutdown failed: ${errorText(error)}`, 1),
    );
  };
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));
}

main().catch((error: unknown) => fail(`failed to start: ${errorText(error)}`, 1));
