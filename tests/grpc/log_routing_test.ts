/**
 * grpc-js's own log lines go to our log once a channel or server is made
 * in the isolate (src/grpc/log_routing.ts), also in a Worker, and stay
 * grpc-js's when the user set GRPC_VERBOSITY. The daemon's case end to end
 * (a port that is taken) is in tests/cli/first_day_test.ts.
 */
import { assertEquals, assertMatch } from "../assert.ts";
import { runDenoScript } from "../deno_child.ts";

const CHILD = new URL("./log_routing_child.ts", import.meta.url).pathname;
const LINE = "No address added out of total 1 resolved";

async function child(mode: string, env: Record<string, string> = {}): Promise<string[]> {
  const { stderr } = await runDenoScript(CHILD, [mode], env);
  return stderr.split("\n").filter((l) => l.includes(LINE));
}

Deno.test("grpc-js log lines: ours once a channel is made, in the main isolate and in a Worker", async () => {
  for (const mode of ["channel", "worker"]) {
    const lines = await child(mode);
    assertEquals(lines.length, 1, `${mode}: ${lines.join("\n")}`);
    assertMatch(lines[0], new RegExp(`^\\d{4}-\\d\\d-\\d\\dT\\S+ +DEBUG grpc-js: ${LINE}$`));
  }
});

Deno.test("grpc-js log lines: its own without our factories, and when GRPC_VERBOSITY is set", async () => {
  assertEquals(await child("none"), [`E ${LINE}`]);
  assertEquals(await child("channel", { GRPC_VERBOSITY: "ERROR" }), [`E ${LINE}`]);
});
