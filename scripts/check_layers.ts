/**
 * Architecture check run by `deno task check`: the top-level folders of
 * `src/` (and its top-level modules) must form layers, so no chain of
 * imports between them may lead back to where it started. Prints the
 * layers bottom-up when they do; otherwise names every import that takes
 * part in a cycle and exits 1.
 *
 * Usage: `deno run --allow-read scripts/check_layers.ts [SRC_DIR]`
 * (default: this repository's `src/`).
 *
 * @module
 */
import { dirname, join, relative, resolve, sep } from "node:path";

/** One import from a module of one unit into a module of another. */
export interface UnitImport {
  /** Importing unit (a top-level folder or module of the source tree). */
  from: string;
  /** Imported unit. */
  to: string;
  /** Importing file, relative to the source tree. */
  file: string;
  /** The specifier as written. */
  specifier: string;
}

/** What {@linkcode checkLayers} found. */
export interface LayerReport {
  /** Every import between different units. */
  imports: UnitImport[];
  /** Units in an order where each imports only units before it (when acyclic). */
  order: string[];
  /** Each group of units that import each other, directly or through others. */
  cycles: string[][];
}

// Static imports and re-exports (possibly spanning lines), side-effect
// imports, dynamic imports and Worker/asset URLs with literal specifiers.
// Statements must start a line, so imports quoted in doc comments
// (" * import …") do not count.
const IMPORT_PATTERNS = [
  /^\s*(?:import|export)\b[^;"'`]*?\bfrom\s*["']([^"']+)["']/gm,
  /^\s*import\s*["']([^"']+)["']/gm,
  /\bimport\(\s*["']([^"']+)["']\s*\)/g,
  /\bnew URL\(\s*["']([^"']+)["']\s*,\s*import\.meta\.url\s*\)/g,
];

/** The relative specifiers `source` imports, in order of appearance per pattern. */
export function relativeSpecifiers(source: string): string[] {
  const found: string[] = [];
  for (const pattern of IMPORT_PATTERNS) {
    for (const m of source.matchAll(pattern)) {
      if (m[1].startsWith("./") || m[1].startsWith("../")) found.push(m[1]);
    }
  }
  return found;
}

/** The unit a path inside `root` belongs to: its first path component. */
function unitOf(root: string, path: string): string | undefined {
  const rel = relative(root, path);
  if (rel === "" || rel.startsWith("..")) return undefined;
  return rel.split(sep)[0];
}

/** Paths of the source files (ts, tsx, js, mjs) under `dir`, in name order, recursively. */
export function* sourceFiles(dir: string): Generator<string> {
  for (const entry of [...Deno.readDirSync(dir)].sort((a, b) => a.name < b.name ? -1 : 1)) {
    const path = join(dir, entry.name);
    if (entry.isDirectory) yield* sourceFiles(path);
    else if (entry.isFile && /\.(ts|tsx|js|mjs)$/.test(entry.name)) yield path;
  }
}

/**
 * Collects the imports between the units of the tree at `srcDir` and the
 * cycles among them (Tarjan's strongly connected components).
 */
export function checkLayers(srcDir: string): LayerReport {
  const root = resolve(srcDir);
  const imports: UnitImport[] = [];
  const units = new Set<string>();
  for (const file of sourceFiles(root)) {
    const from = unitOf(root, file)!;
    units.add(from);
    for (const specifier of relativeSpecifiers(Deno.readTextFileSync(file))) {
      const to = unitOf(root, resolve(dirname(file), specifier));
      if (to === undefined || to === from) continue;
      imports.push({ from, to, file: relative(root, file), specifier });
    }
  }
  const edges = new Map<string, Set<string>>([...units].map((u) => [u, new Set()]));
  for (const i of imports) edges.get(i.from)!.add(i.to);

  // Tarjan: components come out in reverse topological order, so imported
  // units before their importers: exactly the bottom-up layer order.
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (u: string) => {
    index.set(u, index.size);
    low.set(u, index.get(u)!);
    stack.push(u);
    onStack.add(u);
    for (const v of [...edges.get(u)!].sort()) {
      if (!index.has(v)) {
        visit(v);
        low.set(u, Math.min(low.get(u)!, low.get(v)!));
      } else if (onStack.has(v)) {
        low.set(u, Math.min(low.get(u)!, index.get(v)!));
      }
    }
    if (low.get(u) === index.get(u)) {
      const component: string[] = [];
      let v: string;
      do {
        v = stack.pop()!;
        onStack.delete(v);
        component.push(v);
      } while (v !== u);
      components.push(component.sort());
    }
  };
  for (const u of [...units].sort()) if (!index.has(u)) visit(u);
  return {
    imports,
    order: components.flat(),
    cycles: components.filter((c) => c.length > 1),
  };
}

/** The report as lines for a person: the layers, or the imports that close cycles. */
export function formatReport(report: LayerReport): string[] {
  if (report.cycles.length === 0) {
    return [`layers ok, bottom-up: ${report.order.join(" ← ")}`];
  }
  const lines: string[] = [];
  for (const cycle of report.cycles) {
    const members = new Set(cycle);
    lines.push(`import cycle between ${cycle.join(", ")}:`);
    for (const i of report.imports) {
      if (members.has(i.from) && members.has(i.to)) {
        lines.push(`  ${i.from} → ${i.to}: ${i.file} imports "${i.specifier}"`);
      }
    }
  }
  lines.push("layers must not import each other in a circle: see docs/architecture.md");
  return lines;
}

if (import.meta.main) {
  const srcDir = Deno.args[0] ?? new URL("../src", import.meta.url).pathname;
  const report = checkLayers(srcDir);
  const lines = formatReport(report);
  if (report.cycles.length > 0) {
    console.error(lines.join("\n"));
    Deno.exit(1);
  }
  console.log(lines.join("\n"));
}
