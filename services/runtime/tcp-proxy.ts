// A TCP proxy for fault tests: put it between a service and a backend, then refuse new
// connections, cut the open ones, or blackhole traffic (accept and never answer), and restore.
import * as net from "node:net";

export type ProxyMode = "up" | "refuse" | "blackhole";

export interface TcpProxy {
  readonly port: number;
  setMode(mode: ProxyMode): void;
  /** Destroys every open connection (the peer sees a reset). */
  cutAll(): void;
  close(): Promise<void>;
}

/** `port`: where to listen (0, the default: any free port). */
export async function startTcpProxy(target: { host: string; port: number }, port = 0): Promise<TcpProxy> {
  let mode: ProxyMode = "up";
  const sockets = new Set<net.Socket>();
  const track = (socket: net.Socket): void => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  const server = net.createServer((client) => {
    track(client);
    if (mode === "refuse") {
      client.destroy();
      return;
    }
    if (mode === "blackhole") return;
    const upstream = net.connect(target.port, target.host);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  const cutAll = (): void => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    port: (server.address() as net.AddressInfo).port,
    setMode(next) {
      mode = next;
    },
    cutAll,
    async close() {
      cutAll();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
