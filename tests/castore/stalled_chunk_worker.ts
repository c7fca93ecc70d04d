/**
 * A chunk Worker that says it is ready and then never answers, as a Worker
 * far behind on its queue looks to the pool; used by `chunk_pool_test.ts`.
 *
 * @module
 */
import { parentPort } from "node:worker_threads";

parentPort!.on("message", () => {});
parentPort!.postMessage({ ready: true });
