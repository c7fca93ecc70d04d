/**
 * The binary cache's metrics: requests by route and status (count and
 * latency), bytes received and sent, and how narinfo lookups ended. The
 * HTTP side is one wrapper around the bridge's handler
 * ({@linkcode instrumentHttp}); the server only reports lookup results.
 *
 * @module
 */
import { metrics } from "../metrics.ts";
import type { HttpHandler, HttpRequest, HttpResponse } from "./http.ts";

/** What a request asked for, as a metric label. */
export type Route = "narinfo" | "nar" | "ls" | "nix-cache-info" | "upload" | "other";

const requests = metrics.counter(
  "tvix_narbridge_http_requests_total",
  "binary cache HTTP requests answered, by route and status code",
  ["route", "code"],
);
const duration = metrics.histogram(
  "tvix_narbridge_http_request_duration_seconds",
  "binary cache HTTP request time, until the last byte of the response was handed to the socket",
  ["route", "code"],
);
const received = metrics.counter(
  "tvix_narbridge_http_received_bytes_total",
  "request body bytes read by the binary cache, by route",
  ["route"],
);
const sent = metrics.counter(
  "tvix_narbridge_http_sent_bytes_total",
  "response body bytes produced by the binary cache, by route",
  ["route"],
);
const lookups = metrics.counter(
  "tvix_narbridge_narinfo_lookups_total",
  "narinfo lookups by result: hit (in the store), miss (absent), pulled (copied from an upstream)",
  ["result"],
);
const pulledPaths = metrics.counter(
  "tvix_narbridge_pulled_paths_total",
  "store paths copied from upstream caches (requests that waited for one pull count once each " +
    "in tvix_narbridge_narinfo_lookups_total)",
);
const pulledBytes = metrics.counter(
  "tvix_narbridge_pulled_nar_bytes_total",
  "NAR bytes of the paths copied from upstream caches",
);

const NARINFO_HIT = lookups.labels("hit");
const NARINFO_MISS = lookups.labels("miss");
const NARINFO_PULLED = lookups.labels("pulled");
const PULLED_PATHS = pulledPaths.labels();
const PULLED_BYTES = pulledBytes.labels();

/** Counts one narinfo lookup by how it ended. */
export function recordNarInfoLookup(result: "hit" | "miss" | "pulled"): void {
  (result === "hit" ? NARINFO_HIT : result === "miss" ? NARINFO_MISS : NARINFO_PULLED).inc();
}

/** Counts one path copied from an upstream, and its NAR bytes. */
export function recordPulled(narSize: bigint): void {
  PULLED_PATHS.inc();
  PULLED_BYTES.inc(Number(narSize));
}

/** The route label of a request. */
export function routeOf(method: string, path: string): Route {
  if (method === "PUT") return "upload";
  if (path === "/nix-cache-info") return "nix-cache-info";
  if (path.startsWith("/nar/")) return "nar";
  if (path.endsWith(".narinfo")) return "narinfo";
  if (path.endsWith(".ls")) return "ls";
  return "other";
}

/** Per-route series, resolved once. */
const byRoute = new Map<
  Route,
  { received: { inc(n: number): void }; sent: { inc(n: number): void } }
>();

function routeSeries(route: Route) {
  let s = byRoute.get(route);
  if (!s) {
    s = { received: received.labels(route), sent: sent.labels(route) };
    byRoute.set(route, s);
  }
  return s;
}

/**
 * Wraps `handler` so that every request is counted by route and status,
 * its body bytes in and out added up, and its latency recorded (for
 * streamed bodies, when the stream ends or is cut).
 */
export function instrumentHttp(handler: HttpHandler): HttpHandler {
  return async (req: HttpRequest): Promise<HttpResponse> => {
    const start = performance.now();
    const route = routeOf(req.method, req.path);
    const series = routeSeries(route);
    const body = req.body;
    const counted: HttpRequest = {
      method: req.method,
      path: req.path,
      header: (name) => req.header(name),
      body: {
        async *[Symbol.asyncIterator]() {
          for await (const piece of body) {
            series.received.inc(piece.length);
            yield piece;
          }
        },
      },
    };
    const response = await handler(counted);
    const code = String(response.status);
    requests.labels(route, code).inc();
    const latency = duration.labels(route, code);
    const out = response.body;
    if (out === undefined || out instanceof Uint8Array || req.method === "HEAD") {
      if (out instanceof Uint8Array && req.method !== "HEAD") series.sent.inc(out.length);
      latency.observe((performance.now() - start) / 1000);
      return response;
    }
    const streamed = async function* () {
      try {
        for await (const piece of out) {
          series.sent.inc(piece.length);
          yield piece;
        }
      } finally {
        latency.observe((performance.now() - start) / 1000);
      }
    };
    return { ...response, body: streamed() };
  };
}
