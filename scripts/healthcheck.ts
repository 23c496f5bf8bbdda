// Exits 0 when the service on the given port answers grpc.health.v1 Check with SERVING, else 1.
// Used by docker-compose health checks; handy for operators too:
//   node --import tsx scripts/healthcheck.ts 50051
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  process.stderr.write("usage: healthcheck.ts PORT\n");
  process.exit(2);
}
const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
try {
  const { status } = await health.check({}, { timeoutMs: 2000 });
  process.stdout.write(`${ServingStatus[status]}\n`);
  process.exit(status === ServingStatus.SERVING ? 0 : 1);
} catch (error) {
  process.stdout.write(`unreachable: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
}
