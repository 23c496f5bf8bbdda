// Risk: real-time rules on every payment, on counters in Redis. Its contract is published and
// served (reflection, health, metrics); Evaluate lands with the Risk issue and answers
// UNIMPLEMENTED until then.
import { RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import type { ServiceModule } from "../runtime/service.js";

export const riskModule: ServiceModule = {
  name: "risk",
  services: [RiskService],
  uses: { cache: true },
  create() {
    return {
      routes(router) {
        router.service(RiskService, {});
      },
    };
  },
};
