// The Router: owner of the payment lifecycle. Its contract is published and served (reflection,
// health, metrics) so clients can be built against it; the handlers land with the Router issue,
// and until then every RPC answers UNIMPLEMENTED.
import { RouterService } from "../../gen/cowrie/router/v1/router_pb.js";
import type { ServiceModule } from "../runtime/service.js";

export const routerModule: ServiceModule = {
  name: "router",
  services: [RouterService],
  uses: { database: true, broker: true },
  create() {
    return {
      routes(router) {
        router.service(RouterService, {});
      },
    };
  },
};
