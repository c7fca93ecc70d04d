/**
 * The static import graph of a module, from `deno info --json`: what a
 * process or Worker loads at start-up when it loads that module. Tests use
 * it to keep heavy modules out of start-up paths and to check that every
 * module using grpc-js brings the HTTP/2 workarounds.
 *
 * @module
 */

/** The modules a module loads at start-up: its static imports, followed (not dynamic ones). */
export async function staticClosure(entry: string): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", entry],
    stdout: "piped",
  }).output();
  const info = JSON.parse(new TextDecoder().decode(out.stdout));
  const deps = new Map<string, string[]>();
  for (const m of info.modules) {
    deps.set(
      m.specifier,
      (m.dependencies ?? [])
        .filter((d: { code?: unknown; isDynamic?: boolean }) => d.code && !d.isDynamic)
        .map((d: { code: { specifier: string } }) => d.code.specifier),
    );
  }
  const root = info.roots[0];
  const seen = new Set([root]);
  const queue = [root];
  while (queue.length > 0) {
    for (const d of deps.get(queue.pop()!) ?? []) {
      const resolved = info.redirects?.[d] ?? d;
      if (!seen.has(resolved)) {
        seen.add(resolved);
        queue.push(resolved);
      }
    }
  }
  return [...seen];
}
