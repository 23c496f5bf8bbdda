// Every gateway connector, built from the configuration. Adding a gateway is adding a folder with
// its connector.ts and codes.ts, and one line here.
import { gatewayConfig, type Config } from "../../runtime/config.js";
import { GATEWAY_NAMES, type Connector, type ConnectorConfig, type GatewayName } from "./connector.js";
import { createFlutterwaveConnector } from "./flutterwave/connector.js";
import { createPaystackConnector } from "./paystack/connector.js";
import { createStripeConnector } from "./stripe/connector.js";

export const CONNECTOR_FACTORIES: Readonly<Record<GatewayName, (config: ConnectorConfig) => Connector>> = {
  paystack: createPaystackConnector,
  flutterwave: createFlutterwaveConnector,
  stripe: createStripeConnector,
};

/** One connector per gateway, each pointed at its configured URL (the simulator by default). */
export function createConnectors(config: Config): Map<GatewayName, Connector> {
  return new Map(GATEWAY_NAMES.map((name) => [name, CONNECTOR_FACTORIES[name](gatewayConfig(config, name))]));
}
