/**
 * Listen addresses of the servers (gRPC daemon, nar-bridge): `host:port`,
 * `[v6]:port`, or a Unix socket path.
 *
 * @module
 */

/** Where a server listens: a TCP `host:port` / `[v6]:port`, or a Unix socket path. */
export type ListenAddress =
  | { kind: "tcp"; host: string; port: number }
  | { kind: "unix"; path: string };

/**
 * Parses a listen address: a value starting with `/` or `.` is a Unix
 * socket path, anything else `host:port` with IPv6 hosts in brackets.
 * Throws a clear error otherwise.
 */
export function parseListenAddress(text: string): ListenAddress {
  if (text.startsWith("/") || text.startsWith(".")) return { kind: "unix", path: text };
  const m = /^(\[[0-9A-Fa-f:.]+(?:%[\w.-]+)?\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) {
    throw new Error(
      `invalid listen address ${JSON.stringify(text)}: use host:port, [v6]:port or a socket path`,
    );
  }
  return { kind: "tcp", host: m[1], port };
}

/** Formats an address as accepted by {@linkcode parseListenAddress}. */
export function formatListenAddress(addr: ListenAddress): string {
  return addr.kind === "unix" ? addr.path : `${addr.host}:${addr.port}`;
}
